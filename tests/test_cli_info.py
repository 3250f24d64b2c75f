"""`lantern info`, `lantern list` and the dispatcher's one-line errors."""
import json

from lanternlm import cli

# SmolLM2-135M by hand: 30 layers of q, o (576x576), k, v (192x576), gate/up/down
# (576x1536 each) and two norms, plus the 49152x576 embedding and the output norm.
SMOLLM2_PARAMETERS = 30 * (2 * 576 * 576 + 2 * 192 * 576 + 3 * 576 * 1536 + 2 * 576) + 49152 * 576 + 576


def test_info_json_describes_smollm2(smollm2_path, capsys):
    assert cli.main(["info", str(smollm2_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "llama"
    assert info["parameters"] == SMOLLM2_PARAMETERS
    assert info["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert (info["block_count"], info["embedding_length"], info["context_length"]) == (30, 576, 8192)
    assert (info["vocab_size"], info["tokenizer"], info["pre_tokenizer"]) == (49152, "gpt2", "smollm")
    assert info["chat_template"] is True
    assert info["bos"] == {"id": 1, "text": "<|im_start|>"} and info["eos"] == {"id": 2, "text": "<|im_end|>"}
    assert info["file_size"] == smollm2_path.stat().st_size


def test_info_text_and_list(smollm2_path, capsys):
    assert cli.main(["info", str(smollm2_path)]) == 0
    out = capsys.readouterr().out
    assert "134.5 M" in out and "Q4_1 x210" in out
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "98.4 MB" in out and "gemma3-270m" in out


def test_bad_input_is_one_line(tmp_path, capsys):
    not_gguf = tmp_path / "notes.txt"
    not_gguf.write_text("hello, this is a text file and not a model at all")
    for argv, message in [(["info", str(tmp_path / "missing.gguf")], "not a catalog model"),
                          (["info", str(not_gguf)], "magic"),
                          (["info", str(tmp_path)], f"{tmp_path}: is a directory, not a GGUF model file")]:
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("lantern: error:") and message in err and err.count("\n") == 1
