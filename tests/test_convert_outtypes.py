"""--outtype: which tensors take the requested type, and their bytes against gguf-py's quantizers.

The f32 conversion is the reference for every tensor's values; each other outtype must store
exactly `gguf.quants.quantize(reference, type)` of them, with llama.cpp's converter's type
choice: 1-D tensors (norms, biases) stay F32, matrices take the requested type, and a Q8_0
matrix whose rows are not a multiple of 32 falls back to F16.
"""

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from tiny_hf_checkpoints import build_checkpoint  # noqa: E402

from lanternlm.formats.convert import convert_hf_to_gguf  # noqa: E402
from lanternlm.formats.gguf import read_gguf  # noqa: E402

OUTTYPES = {"f32": (Q.F32, 0), "f16": (Q.F16, 1), "bf16": (Q.BF16, 32), "q8_0": (Q.Q8_0, 7)}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """outtype -> GGUFFile of one llama checkpoint with q/k/v/o biases and ffn rows of 80."""
    root = tmp_path_factory.mktemp("outtypes")
    ckpt = build_checkpoint("llama", root / "hf", intermediate_size=80, attention_bias=True)
    return {name: read_gguf(convert_hf_to_gguf(ckpt.path, root / f"{name}.gguf", outtype=name).path)
            for name in OUTTYPES}


def expected_type(name, shape, wanted):
    if len(shape) == 1:
        return Q.F32
    if wanted == Q.Q8_0 and shape[-1] % 32:
        return Q.F16
    return wanted


@pytest.mark.parametrize("outtype", list(OUTTYPES))
def test_tensor_types_and_bytes(files, outtype):
    wanted, file_type = OUTTYPES[outtype]
    reference, f = files["f32"], files[outtype]
    assert f.kv["general.file_type"] == file_type
    assert list(f.tensors) == list(reference.tensors)
    seen = set()
    for name, ref in reference.tensors.items():
        tensor = f.tensors[name]
        assert tuple(tensor.shape) == tuple(ref.shape), name
        qtype = expected_type(name, ref.shape, wanted)
        assert tensor.type == qtype, name
        seen.add(qtype)
        values = ref.data.view(np.float32).reshape(ref.shape)
        expected = gguf.quants.quantize(values, qtype)
        assert tensor.data.tobytes() == expected.tobytes(), name
    # the case covers what it claims: biases and norms in F32, the fallback where it applies
    assert Q.F32 in seen and "blk.0.attn_q.bias" in f.tensors and "blk.0.attn_output.bias" in f.tensors
    if outtype == "q8_0":
        assert f.tensors["blk.0.ffn_down.weight"].type == Q.F16
        assert f.tensors["blk.0.ffn_up.weight"].type == Q.Q8_0
        assert f.tensors["token_embd.weight"].type == Q.Q8_0


def test_metadata_is_the_same_for_every_outtype(files):
    reference = {k: v for k, v in files["f32"].kv.items() if k != "general.file_type"}
    for f in files.values():
        kv = {k: v for k, v in f.kv.items() if k != "general.file_type"}
        assert kv.keys() == reference.keys()
        for key, value in kv.items():
            np.testing.assert_array_equal(np.asarray(value, dtype=object), np.asarray(reference[key], dtype=object))
