"""`lantern quantize` against llama.cpp's llama-quantize.

The oracle is tests/data/quantize_reference_<model>.json, written by
tests/data/make_quantize_fixtures.py from llama.cpp's own quantizer run on the tiny models of
tests/tiny_llama_gguf.py (regenerated here from the same seeds). For each model and type it
holds the sha256 of the whole output file, each tensor's type and a hash of its data.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import gguf
from gguf import GGMLQuantizationType as T

from lanternlm import cli
from lanternlm.formats.gguf import read_gguf
from lanternlm.quant.mix import FTYPES, ModelFacts, get_ftype, plan_mix, plan_tensors
from lanternlm.quant.quantize_model import quantize_model

from tiny_llama_gguf import TINY_MODELS, write_tiny_model  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
REFERENCES = {m: json.load(open(os.path.join(DATA, f"quantize_reference_{m}.json"))) for m in TINY_MODELS}

# Every type is byte-checked on "wide" (K-quants apply), "narrow" (every K-quant falls back)
# and "moe" (3-D expert tensors, BF16 source); "falcon" only where its own rules pick types.
BYTE_CHECKED = [(m, t) for m in ("wide", "narrow", "moe") for t in FTYPES] + \
               [("falcon", t) for t in ("Q3_K_M", "Q3_K_L", "Q4_K_M", "Q4_K_S")]


def sha256_file(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_models")
    return {m: write_tiny_model(folder / f"{m}.gguf", m) for m in TINY_MODELS}


def tensor_differences(path, record, tensor_order) -> list[str]:
    """Which tensors of our output differ from llama.cpp's (for a readable failure)."""
    with read_gguf(path) as g:
        ours = [(n, t.type.name, hashlib.sha256(t.data.tobytes()).hexdigest()[:16]) for n, t in g.tensors.items()]
    theirs = list(zip(tensor_order, record["types"], record["sha256"]))
    if [n for n, *_ in ours] != tensor_order:
        return ["tensor order differs"]
    return [f"{a[0]}: ours {a[1]} {a[2]}, llama.cpp {b[1]} {b[2]}" for a, b in zip(ours, theirs) if a != b]


def assert_same_as_llama_cpp(path, record, reference):
    if sha256_file(path) == record["file_sha256"]:
        return
    diffs = tensor_differences(path, record, reference["tensor_order"])
    with read_gguf(path) as g:
        kv = [[k, g.kv_types[k].name] for k in g.kv]
        file_type = g.kv.get("general.file_type")
    assert kv == reference["output_kv"], "metadata keys or value types differ"
    assert file_type == record["file_type"]
    assert not diffs, f"{len(diffs)} tensors differ from llama.cpp: {diffs[:5]}"
    pytest.fail("tensors match llama.cpp but the file bytes differ (layout or metadata values)")


def test_tiny_inputs_are_the_ones_llama_cpp_quantized(tiny_inputs):
    for model, path in tiny_inputs.items():
        assert sha256_file(path) == REFERENCES[model]["input_sha256"], \
            f"tests/tiny_llama_gguf.py now generates a different {model!r} model; rerun make_quantize_fixtures.py"


@pytest.mark.parametrize("model", list(TINY_MODELS))
def test_plan_matches_llama_cpp_for_every_type(tiny_inputs, model):
    reference = REFERENCES[model]
    assert set(reference["quantizations"]) == set(FTYPES)
    with read_gguf(tiny_inputs[model]) as g:
        for name, record in reference["quantizations"].items():
            plan = plan_mix(g, name)
            assert [p.name for p in plan] == reference["tensor_order"]
            assert [p.dst_type.name for p in plan] == record["types"], f"{model} {name}"


@pytest.mark.parametrize("model,qtype", BYTE_CHECKED, ids=[f"{m}-{t}" for m, t in BYTE_CHECKED])
def test_output_is_byte_identical_to_llama_cpp(tiny_inputs, tmp_path, model, qtype):
    out = tmp_path / "out.gguf"
    summary = quantize_model(tiny_inputs[model], out, qtype)
    assert_same_as_llama_cpp(out, REFERENCES[model]["quantizations"][qtype], REFERENCES[model])
    with read_gguf(out) as g:
        assert summary.dst_nbytes == sum(t.nbytes for t in g.tensors.values())


@pytest.mark.parametrize("model,conversion", [(m, c) for m in TINY_MODELS
                                              for c in REFERENCES[m].get("requantizations", {})])
def test_requantizing_matches_llama_cpp(tiny_inputs, tmp_path, model, conversion):
    source, target = conversion.split("->")
    first, second = tmp_path / "first.gguf", tmp_path / "second.gguf"
    quantize_model(tiny_inputs[model], first, source)
    with pytest.raises(ValueError, match="already quantized.*--allow-requantize"):
        quantize_model(first, second, target)
    assert not second.exists()
    quantize_model(first, second, target, allow_requantize=True)
    assert_same_as_llama_cpp(second, REFERENCES[model]["requantizations"][conversion], REFERENCES[model])


# ---- rules the tiny models cannot reach, computed by hand from llama.cpp's rules ----------

LLAMA_8 = ModelFacts(arch="llama", n_layer=8, n_gqa=1, n_expert=0, is_70b=False)


def planned(tensors, qtype, model=LLAMA_8):
    return {p.name: p.dst_type for p in plan_tensors(tensors, get_ftype(qtype), model)}


def test_row_lengths_off_the_32_grid_fall_back_to_f16():
    # 48 is a multiple of neither 256 (Q4_K) nor 32 (its fallback Q5_0)
    types = planned([("blk.0.attn_q.weight", (64, 48), T.F32), ("output.weight", (10, 256), T.F32)], "Q4_K_M")
    assert types == {"blk.0.attn_q.weight": T.F16, "output.weight": T.Q6_K}


def test_a_legacy_type_that_does_not_fit_has_no_fallback():
    with pytest.raises(ValueError, match="no fallback for Q4_0"):
        planned([("blk.0.attn_q.weight", (64, 48), T.F32)], "Q4_0")


def test_single_row_and_non_weight_tensors_keep_their_type():
    types = planned([("blk.0.attn_q.weight", (1, 256), T.F32),  # ggml sees a 1-D tensor
                     ("blk.0.attn_q.bias", (256, 256), T.F32),
                     ("blk.0.ffn_gate_inp.weight", (8, 256), T.F16),
                     ("position_embd.weight", (64, 256), T.F32)], "Q8_0")
    assert set(types.values()) <= {T.F32, T.F16} and types["blk.0.ffn_gate_inp.weight"] == T.F16


def test_llama_70b_attn_v_gets_q5_k():
    model = ModelFacts(arch="llama", n_layer=80, n_gqa=8, n_expert=0, is_70b=True)
    names = [(f"blk.{i}.attn_v.weight", (1024, 8192), T.F16) for i in range(80)]
    assert set(planned(names, "Q3_K_S", model).values()) == {T.Q5_K}
    assert set(planned(names, "Q6_K", model).values()) == {T.Q6_K}


# ---- errors -------------------------------------------------------------------------------

def write_gguf_with(path, arch, tensors):
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_head_count(1)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unknown_architecture_is_refused(tmp_path):
    src = write_gguf_with(tmp_path / "in.gguf", "nosucharch", {"blk.0.attn_q.weight": np.ones((32, 32), np.float32)})
    with pytest.raises(ValueError, match="unknown model architecture 'nosucharch'"):
        quantize_model(src, tmp_path / "out.gguf", "Q8_0")


def test_tensor_types_that_cannot_be_converted_are_refused(tmp_path):
    src = write_gguf_with(tmp_path / "in.gguf", "llama", {"blk.0.attn_q.weight": np.ones((32, 32), np.int32)})
    with pytest.raises(ValueError, match="'blk.0.attn_q.weight' is I32, which cannot be dequantized"):
        quantize_model(src, tmp_path / "out.gguf", "Q8_0")


def test_non_finite_weights_are_refused_and_no_output_is_left(tmp_path):
    weights = np.ones((4, 32), np.float32)
    weights[2, 5] = np.nan
    src = write_gguf_with(tmp_path / "in.gguf", "llama", {"blk.0.attn_q.weight": weights})
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantize_model(src, tmp_path / "out.gguf", "Q8_0")
    assert os.listdir(tmp_path) == ["in.gguf"]


def test_unknown_type_is_refused():
    with pytest.raises(ValueError, match="unknown quantization type 'Q4_K_X'"):
        get_ftype("Q4_K_X")


# ---- the command line ---------------------------------------------------------------------

@pytest.fixture
def quantize_command_only(monkeypatch):
    """The dispatcher with just this command (the others import their own, heavier modules)."""
    monkeypatch.setattr(cli, "COMMANDS", {"quantize": cli.COMMANDS["quantize"]})


def test_cli_quantizes_like_llama_cpp(quantize_command_only, tiny_inputs, tmp_path, capsys):
    out = tmp_path / "out.gguf"
    assert cli.main(["quantize", str(tiny_inputs["narrow"]), str(out), "q3_k_m"]) == 0
    assert f"wrote {out}: Q3_K_M" in capsys.readouterr().out
    assert sha256_file(out) == REFERENCES["narrow"]["quantizations"]["Q3_K_M"]["file_sha256"]


def test_cli_prints_progress_lines_when_stderr_is_not_a_terminal(quantize_command_only, tiny_inputs, tmp_path,
                                                                 capsys):
    n_tensors = len(REFERENCES["wide"]["tensor_order"])
    assert cli.main(["quantize", str(tiny_inputs["wide"]), str(tmp_path / "out.gguf"), "Q8_0"]) == 0
    err = capsys.readouterr().err                   # captured: not a terminal
    lines = err.splitlines()
    assert "\r" not in err and lines and all(line.startswith("quantizing: ") for line in lines)
    assert lines[0].startswith(f"quantizing: 0/{n_tensors} tensors (0%)")
    assert lines[-1].startswith(f"quantizing: {n_tensors}/{n_tensors} tensors (100%)")
    assert cli.main(["quantize", "-q", str(tiny_inputs["wide"]), str(tmp_path / "quiet.gguf"), "Q8_0"]) == 0
    assert capsys.readouterr().err == ""


def test_progress_lines_come_at_most_once_per_interval():
    import io
    from lanternlm.formats.progress import ProgressLines

    every, never = io.StringIO(), io.StringIO()
    for stream, interval in ((every, 0.0), (never, 1e9)):
        with ProgressLines(4, "quantizing", "tensor", stream, interval=interval) as bar:
            for name in ("a", "b", "c", "d"):
                bar.set_postfix_str(name)
                bar.update(1)
    counts = [line.split()[1] for line in every.getvalue().splitlines()]
    assert counts == ["0/4", "1/4", "2/4", "3/4", "4/4"] and every.getvalue().splitlines()[2].endswith(", b]")
    assert [line.split()[1] for line in never.getvalue().splitlines()] == ["0/4", "4/4"]   # start and end


def test_cli_dry_run_prints_the_plan_and_writes_nothing(quantize_command_only, tiny_inputs, tmp_path, capsys):
    assert cli.main(["quantize", "--dry-run", str(tiny_inputs["wide"]), "Q4_K_M"]) == 0
    lines = capsys.readouterr().out.splitlines()
    reference = REFERENCES["wide"]
    record = reference["quantizations"]["Q4_K_M"]
    rows = lines[:len(reference["tensor_order"])]
    for row, name, qtype in zip(rows, reference["tensor_order"], record["types"]):
        fields = row.split("]", 1)[1].split()  # name, shape, source type, ["->", target type], sizes
        planned_type = fields[4] if fields[3] == "->" else fields[2]
        assert fields[0] == name and planned_type == qtype, row
    assert lines[len(rows)].startswith("Q4_K_M (file type 15): ")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("argv,message", [
    (["missing.gguf", "out.gguf", "Q4_K_M"], "no such file, and not a catalog model: missing.gguf"),
    (["notgguf.txt", "out.gguf", "Q4_K_M"], "notgguf.txt: not a GGUF file"),
    (["notgguf.txt", "out.gguf", "Q9_K"], "unknown quantization type 'Q9_K'"),
    (["notgguf.txt", "out.gguf"], "missing TYPE"),
])
def test_cli_errors_are_one_line(quantize_command_only, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notgguf.txt").write_text("hello, world\n" * 4)
    assert cli.main(["quantize", *argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "out.gguf").exists()
