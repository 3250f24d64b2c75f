"""write_gguf: value types as asked (GGUFReader is the oracle), read -> write -> read round trips,
and atomicity (nothing half-written is ever left behind)."""
import os

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

from lanternlm.formats.gguf import read_gguf
from lanternlm.formats.writer import write_gguf

# key -> (value, value type, element type or None)
TYPED_KV = {
    "general.architecture": ("testarch", V.STRING, None),
    "general.alignment": (128, V.UINT32, None),
    "s.u8": (255, V.UINT8, None), "s.i8": (-128, V.INT8, None),
    "s.u16": (65535, V.UINT16, None), "s.i16": (-32768, V.INT16, None),
    "s.u32": (7, V.UINT32, None), "s.i32": (7, V.INT32, None),
    "s.u64": (2**64 - 1, V.UINT64, None), "s.i64": (-2**63, V.INT64, None),
    "s.f32": (0.25, V.FLOAT32, None), "s.f64": (0.1, V.FLOAT64, None),
    "s.bool": (True, V.BOOL, None), "s.str": ("naïve ✓", V.STRING, None), "s.empty": ("", V.STRING, None),
    "a.u8": ([1, 255], V.ARRAY, V.UINT8), "a.i16": ([-5, 5], V.ARRAY, V.INT16),
    "a.u32": ([3, 4], V.ARRAY, V.UINT32), "a.i32": ([3, 4], V.ARRAY, V.INT32),
    "a.u64": ([2**64 - 1], V.ARRAY, V.UINT64), "a.f64": ([0.1, 0.2], V.ARRAY, V.FLOAT64),
    "a.f32_np": (np.array([0.5, -2.0], np.float32), V.ARRAY, V.FLOAT32),
    "a.bool": ([True, False], V.ARRAY, V.BOOL), "a.str": (["x", "", "ÿ"], V.ARRAY, V.STRING),
    "a.nested": ([[1, 2], [3]], V.ARRAY, V.ARRAY),
}


def typed_tensors():
    rng = np.random.default_rng(3)
    return [  # (name, raw data, type, numpy-order shape)
        ("w.f32", rng.standard_normal((4, 8)).astype(np.float32), Q.F32, (4, 8)),
        ("w.q4_1", rng.integers(0, 256, 2 * 3 * 20, dtype=np.uint8), Q.Q4_1, (2, 96)),
        ("w.q6_k", rng.integers(0, 256, 210, dtype=np.uint8).reshape(1, 210), Q.Q6_K, (256,)),
        ("w.f16_3d", rng.standard_normal((2, 3, 4)).astype(np.float16), Q.F16, (2, 3, 4)),
    ]


def write_typed(path, **options):
    kv = {key: value for key, (value, _, _) in TYPED_KV.items()}
    kv_types = {key: vtype for key, (_, vtype, _) in TYPED_KV.items()}
    kv_array_types = {key: sub for key, (_, _, sub) in TYPED_KV.items() if sub is not None}
    return write_gguf(path, kv, typed_tensors(), kv_types=kv_types, kv_array_types=kv_array_types, **options)


def test_typed_values_and_tensors_as_asked(tmp_path):
    oracle = gguf.GGUFReader(write_typed(tmp_path / "typed.gguf"))
    for key, (value, vtype, sub) in TYPED_KV.items():
        field = oracle.fields[key]
        assert field.types[0] == vtype, key
        if sub is not None:
            assert field.types[1] == sub, key
        if sub != V.ARRAY:
            expected = value.tolist() if isinstance(value, np.ndarray) else value
            assert field.contents() == expected, key
    assert oracle.alignment == 128
    for (name, raw, qtype, shape), tensor in zip(typed_tensors(), oracle.tensors):
        assert tensor.name == name and tensor.tensor_type == qtype
        assert tuple(reversed(tensor.shape.tolist())) == shape
        assert tensor.data.tobytes() == raw.tobytes()
        assert (tensor.data_offset - oracle.data_offset) % 128 == 0


def test_inferred_types(tmp_path):
    kv = {"general.architecture": "x", "a": 5, "b": -5, "c": 2**40, "d": -2**40, "e": 2**64 - 1,
          "f": 1.5, "g": True, "h": "s", "i": [1, 2], "j": [-1, 2], "k": [0.5, 1], "l": ["x"],
          "m": np.array([1, 2], np.int16), "n": np.float64(2.5), "o": [True, False], "p": [[1, 2], [3]],
          "q": np.uint16(9)}
    expected = {"a": [V.UINT32], "b": [V.INT32], "c": [V.INT64], "d": [V.INT64], "e": [V.UINT64],
                "f": [V.FLOAT32], "g": [V.BOOL], "h": [V.STRING], "i": [V.ARRAY, V.UINT32],
                "j": [V.ARRAY, V.INT32], "k": [V.ARRAY, V.FLOAT32], "l": [V.ARRAY, V.STRING],
                "m": [V.ARRAY, V.INT16], "n": [V.FLOAT64], "o": [V.ARRAY, V.BOOL],
                "p": [V.ARRAY, V.ARRAY, V.INT32], "q": [V.UINT16]}
    oracle = gguf.GGUFReader(write_gguf(tmp_path / "inferred.gguf", kv))
    for key, types in expected.items():
        assert oracle.fields[key].types == types, key
    assert oracle.fields["e"].contents() == 2**64 - 1


def assert_same_value(a, b, where):
    assert type(a) is type(b), where
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_value(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_file_contents(a, b):
    assert list(a.kv) == list(b.kv)
    assert a.kv_types == b.kv_types and a.kv_array_types == b.kv_array_types
    for key in a.kv:
        assert_same_value(a.kv[key], b.kv[key], key)
    assert a.alignment == b.alignment
    assert list(a.tensors) == list(b.tensors)
    for name, tensor in a.tensors.items():
        copy = b.tensors[name]
        assert (copy.type, copy.shape, copy.nbytes) == (tensor.type, tensor.shape, tensor.nbytes), name
        assert np.array_equal(copy.data, tensor.data), name


def copy_gguf(source, path, **options):
    return write_gguf(path, source.kv, source.tensors.values(), kv_types=source.kv_types,
                      kv_array_types=source.kv_array_types, **options)


@pytest.mark.parametrize("spool_to_disk", [False, True])
def test_round_trip_synthetic(tmp_path, spool_to_disk):
    with read_gguf(write_typed(tmp_path / "a.gguf")) as source:
        with read_gguf(copy_gguf(source, tmp_path / "b.gguf", spool_to_disk=spool_to_disk)) as copy:
            assert_same_file_contents(source, copy)
            assert copy.kv["a.nested"][0].tolist() == [1, 2]


def test_round_trip_smollm2(tmp_path, smollm2_path):
    with read_gguf(smollm2_path) as source:
        with read_gguf(copy_gguf(source, tmp_path / "copy.gguf")) as copy:
            assert_same_file_contents(source, copy)
            assert copy.data_offset == source.data_offset


def test_undecodable_strings_round_trip(tmp_path):
    writer = gguf.GGUFWriter(tmp_path / "raw.gguf", "x")
    writer.add_key_value("tokens", [b"ok", b"\xff\xfe", b"\xe2\x82"], V.ARRAY, sub_type=V.STRING)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with read_gguf(tmp_path / "raw.gguf") as source:
        copy_gguf(source, tmp_path / "copy.gguf")
    field = gguf.GGUFReader(tmp_path / "copy.gguf").fields["tokens"]
    assert [field.parts[i].tobytes() for i in field.data] == [b"ok", b"\xff\xfe", b"\xe2\x82"]


def directory_listing(path):
    return sorted(os.listdir(path))


@pytest.mark.parametrize("kv,tensors,kv_types,message", [
    ({"k": 300}, [], {"k": V.UINT8}, r"'k' cannot be written as UINT8"),
    ({"k": 1.5}, [], {"k": V.INT32}, r"'k' cannot be written as INT32"),
    ({"k": []}, [], {}, r"'k'.*empty array"),
    ({"k": [[1], np.array([2], np.uint16)]}, [], {}, r"'k'.*nested arrays only"),
    ({"k": 2**70}, [], {}, r"'k'.*fit no GGUF integer type"),
    ({"k": object()}, [], {}, r"'k'.*cannot store"),
    ({"general.alignment": 48}, [], {}, r"power of two"),
    ({"general.architecture": "llama"}, [], {}, r"contradicts"),
    ({}, [("t", np.zeros(10, np.float32), Q.F32, (11,))], {}, r"'t': 40 bytes of data.*takes 44"),
    ({}, [("t", np.zeros(34, np.uint8), Q.Q8_0, (33,))], {}, r"'t'.*block size 32"),
    ({}, [("t", np.zeros(4, np.float32), Q.F32, (1, 1, 1, 1, 4))], {}, r"'t'.*1 to 4"),
])
def test_bad_input_raises_and_writes_nothing(tmp_path, kv, tensors, kv_types, message):
    with pytest.raises(ValueError, match=message):
        write_gguf(tmp_path / "out.gguf", kv, tensors, kv_types=kv_types, arch="qwen2")
    assert directory_listing(tmp_path) == []


def test_exception_in_tensor_iterator_leaves_old_file_and_no_temp(tmp_path):
    destination = tmp_path / "model.gguf"
    destination.write_bytes(b"previous contents")

    def tensors():
        yield "a", np.zeros(4, np.float32), Q.F32, (4,)
        raise RuntimeError("quantizer failed")

    with pytest.raises(RuntimeError, match="quantizer failed"):
        write_gguf(destination, {"general.architecture": "x"}, tensors())
    assert directory_listing(tmp_path) == ["model.gguf"]
    assert destination.read_bytes() == b"previous contents"


def test_failure_while_writing_data_removes_partial_temp_file(tmp_path, monkeypatch):
    seen_during_write = []
    original_padding = gguf.GGUFWriter.write_padding
    calls = []

    def failing_padding(self, fp, n, align=None):
        calls.append(n)
        if len(calls) == 3:  # header padding, first tensor's padding, then the disk "fills up"
            fp.flush()
            seen_during_write.extend((name, os.path.getsize(tmp_path / name)) for name in os.listdir(tmp_path))
            raise OSError("No space left on device")
        return original_padding(self, fp, n, align)

    monkeypatch.setattr(gguf.GGUFWriter, "write_padding", failing_padding)
    with pytest.raises(OSError, match="No space left"):
        write_gguf(tmp_path / "model.gguf", {"general.architecture": "x"},
                   [(f"t{i}", np.ones(100, np.float32), Q.F32, (100,)) for i in range(3)])
    [(name, size)] = seen_during_write  # a partly written temporary file existed...
    assert name.startswith(".model.gguf.") and name.endswith(".tmp") and size > 400
    assert directory_listing(tmp_path) == []  # ...and is gone, with no model.gguf


def test_overwrite_the_file_being_copied(tmp_path):
    path = write_typed(tmp_path / "m.gguf")
    source = read_gguf(path)
    old_bytes = source.tensors["w.f32"].data.tobytes()
    kv = {**source.kv, "extra.key": np.uint8(1)}
    write_gguf(path, kv, source.tensors.values(), kv_types=source.kv_types,
               kv_array_types=source.kv_array_types)
    assert source.tensors["w.f32"].data.tobytes() == old_bytes  # the old mapping is intact
    with read_gguf(path) as rewritten:
        assert rewritten.kv["extra.key"] == 1 and rewritten.kv_types["extra.key"] == V.UINT8
        assert rewritten.tensors["w.f32"].data.tobytes() == old_bytes
    source.close()
    assert directory_listing(tmp_path) == ["m.gguf"]
