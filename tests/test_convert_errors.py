"""Bad checkpoints give one clear error naming the problem, and leave no output file behind."""
import json
import shutil

import numpy as np
import pytest

from tiny_hf_checkpoints import build_checkpoint  # noqa: E402

from lanternlm.cli import main as lantern  # noqa: E402
from lanternlm.formats.convert import ConvertError, convert_hf_to_gguf  # noqa: E402


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    return {
        "llama": build_checkpoint("llama", root / "llama").path,
        "sharded": build_checkpoint("qwen2", root / "sharded", max_shard_size="40KB").path,
    }


@pytest.fixture
def broken(pristine, tmp_path):
    """A fresh copy of a good checkpoint, to be damaged by the test."""
    def copy(name="llama"):
        return shutil.copytree(pristine[name], tmp_path / name)
    return copy


def _rewrite_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _rewrite_safetensors(path, edit):
    """Re-save a safetensors file after `edit(dict of numpy arrays)`."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def convert_error(src, out):
    with pytest.raises(ConvertError) as info:
        convert_hf_to_gguf(src, out)
    assert not out.exists()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_good_checkpoint_converts(pristine, tmp_path):
    # the control: the damage below is what makes the other cases fail
    report = convert_hf_to_gguf(pristine["llama"], tmp_path / "ok.gguf", outtype="q8_0")
    assert report.path.is_file() and report.arch == "llama"


def test_not_a_directory(tmp_path):
    assert "not a directory" in convert_error(tmp_path / "nowhere", tmp_path / "o.gguf")


def test_missing_config(broken, tmp_path):
    src = broken()
    (src / "config.json").unlink()
    assert "no config.json" in convert_error(src, tmp_path / "o.gguf")


def test_config_not_json(broken, tmp_path):
    src = broken()
    (src / "config.json").write_text("{not json")
    assert "not valid JSON" in convert_error(src, tmp_path / "o.gguf")


def test_unsupported_architecture_is_named(broken, tmp_path):
    src = broken()
    _rewrite_json(src / "config.json", lambda c: c.update(architectures=["MambaForCausalLM"]))
    message = convert_error(src, tmp_path / "o.gguf")
    assert "unsupported architecture 'MambaForCausalLM'" in message
    assert "LlamaForCausalLM" in message  # lists what is supported


def test_missing_architecture(broken, tmp_path):
    src = broken()
    _rewrite_json(src / "config.json", lambda c: c.pop("architectures"))
    assert "no model architecture" in convert_error(src, tmp_path / "o.gguf")


def test_no_weights(broken, tmp_path):
    src = broken()
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    message = convert_error(src, tmp_path / "o.gguf")
    assert "no model weights" in message and "pytorch_model.bin" in message


def test_missing_tensor_is_named(broken, tmp_path):
    src = broken()
    _rewrite_safetensors(src / "model.safetensors",
                         lambda t: t.pop("model.layers.1.self_attn.q_proj.weight"))
    message = convert_error(src, tmp_path / "o.gguf")
    assert "lacks weights" in message and "blk.1.attn_q.weight" in message


def test_missing_lm_head_of_untied_model(broken, tmp_path):
    src = broken()
    _rewrite_safetensors(src / "model.safetensors", lambda t: t.pop("lm_head.weight"))
    assert "output.weight" in convert_error(src, tmp_path / "o.gguf")


def test_unknown_tensor_is_named(broken, tmp_path):
    src = broken()
    _rewrite_safetensors(src / "model.safetensors",
                         lambda t: t.update({"model.layers.0.mystery.weight": np.zeros(4, np.float32)}))
    assert "'model.layers.0.mystery.weight'" in convert_error(src, tmp_path / "o.gguf")


def test_unsupported_dtype_is_named(broken, tmp_path):
    src = broken()
    _rewrite_safetensors(src / "model.safetensors",
                         lambda t: t.update({"model.norm.weight": np.zeros(64, np.int8)}))
    assert "dtype I8" in convert_error(src, tmp_path / "o.gguf")


def test_truncated_safetensors(broken, tmp_path):
    src = broken()
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "inconsistent size" in convert_error(src, tmp_path / "o.gguf")


def test_missing_shard_is_named(broken, tmp_path):
    src = broken("sharded")
    shard = sorted(src.glob("model-*.safetensors"))[1]
    shard.unlink()
    message = convert_error(src, tmp_path / "o.gguf")
    assert "missing" in message and shard.name in message


def test_index_listing_absent_tensor_is_named(broken, tmp_path):
    src = broken("sharded")
    _rewrite_json(src / "model.safetensors.index.json", lambda i: i["weight_map"].update(
        {"model.layers.0.extra.weight": sorted(i["weight_map"].values())[0]}))
    assert "model.layers.0.extra.weight" in convert_error(src, tmp_path / "o.gguf")


def test_no_tokenizer(broken, tmp_path):
    src = broken()
    (src / "tokenizer.json").unlink()
    assert "no tokenizer" in convert_error(src, tmp_path / "o.gguf")


def test_unrecognised_pre_tokenizer(broken, tmp_path):
    src = broken()
    _rewrite_json(src / "tokenizer.json", lambda t: t.update(
        pre_tokenizer={"type": "Sequence", "pretokenizers": [
            {"type": "WhitespaceSplit"}, {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}))
    assert "unrecognised BPE pre-tokenizer" in convert_error(src, tmp_path / "o.gguf")


def test_tokenizer_larger_than_vocab_size(broken, tmp_path):
    src = broken()
    _rewrite_json(src / "config.json", lambda c: c.update(vocab_size=100))
    assert "vocab_size 100" in convert_error(src, tmp_path / "o.gguf")


def test_output_directory_missing(pristine, tmp_path):
    assert "does not exist" in convert_error(pristine["llama"], tmp_path / "no" / "o.gguf")


def test_cli_reports_one_line_and_exit_code(pristine, tmp_path, capsys):
    assert lantern(["convert", str(tmp_path / "nowhere"), str(tmp_path / "o.gguf")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("lantern: error: ") and "not a directory" in err and "\n" not in err


def test_cli_converts(pristine, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert lantern(["convert", str(pristine["llama"]), str(out), "--outtype", "bf16", "--no-progress"]) == 0
    assert out.is_file()
    assert "LlamaForCausalLM -> llama, bf16" in capsys.readouterr().out
