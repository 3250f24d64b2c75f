"""read_gguf against gguf-py's GGUFReader (the oracle) and against hand-built hostile files."""
import struct
import tracemalloc

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

from lanternlm.formats.gguf import GGUFError, GGUFFile, parse_gguf, read_gguf

# ---------------------------------------------------------------- synthetic files (GGUFWriter)

SCALARS = {
    "test.u8": (200, V.UINT8), "test.i8": (-100, V.INT8),
    "test.u16": (60000, V.UINT16), "test.i16": (-30000, V.INT16),
    "test.u32": (4_000_000_000, V.UINT32), "test.i32": (-2_000_000_000, V.INT32),
    "test.u64": (2**64 - 1, V.UINT64), "test.i64": (-2**63, V.INT64),
    "test.f32": (float(np.float32(0.1)), V.FLOAT32), "test.f64": (0.1, V.FLOAT64),
    "test.yes": (True, V.BOOL), "test.no": (False, V.BOOL),
    "test.str": ("héllo ✓ 世界", V.STRING), "test.empty_str": ("", V.STRING),
}
NUMERIC_ARRAYS = {  # element type -> values including the type's extremes
    V.UINT8: [0, 7, 255], V.INT8: [-128, 0, 127], V.UINT16: [0, 65535], V.INT16: [-32768, 32767],
    V.UINT32: [0, 2**32 - 1, 12], V.INT32: [-2**31, 2**31 - 1], V.UINT64: [2**64 - 1, 0],
    V.INT64: [-2**63, 2**63 - 1], V.FLOAT32: [0.5, -1.25, 2.0**127], V.FLOAT64: [1e-300, -2.5],
    V.BOOL: [True, False, True],
}
STRING_ARRAY = ["a", "", "ü", "two words", "<0x0A>"]
NESTED_ARRAYS = {  # key -> (value, element type of the inner arrays as GGUFWriter infers it)
    "test.nested_i32": [[1, 2, 3], [-4]],
    "test.nested_f32": [[0.5], [1.5, 2.5]],
    "test.nested_str": [["a", "b"], ["c"]],
    "test.nested_deep": [[[1], [2, 3]], [[4]]],
}


def synthetic_tensors():
    """(name, array handed to GGUFWriter, raw_dtype or None, expected type, expected shape)."""
    rng = np.random.default_rng(7)
    return [
        ("t.f32_2d", np.arange(48, dtype=np.float32).reshape(6, 8), None, Q.F32, (6, 8)),
        ("t.f16_1d", rng.standard_normal(40).astype(np.float16), None, Q.F16, (40,)),
        ("t.i32_3d", np.arange(24, dtype=np.int32).reshape(2, 3, 4), None, Q.I32, (2, 3, 4)),
        ("t.f32_4d", rng.standard_normal((2, 1, 3, 4)).astype(np.float32), None, Q.F32, (2, 1, 3, 4)),
        ("t.i8", np.arange(-2, 3, dtype=np.int8), None, Q.I8, (5,)),
        # quantized tensors go in as uint8 rows of bytes: Q8_0 is 34 bytes per 32 values
        ("t.q8_0", rng.integers(0, 256, (3, 68), dtype=np.uint8), Q.Q8_0, Q.Q8_0, (3, 64)),
        ("t.q4_k", rng.integers(0, 256, (2, 144), dtype=np.uint8), Q.Q4_K, Q.Q4_K, (2, 256)),
    ]


def write_synthetic(path, *, version=3, alignment=None):
    writer = gguf.GGUFWriter(path, "testarch")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for key, (value, vtype) in SCALARS.items():
        writer.add_key_value(key, value, vtype)
    for vtype, values in NUMERIC_ARRAYS.items():
        writer.add_key_value(f"test.arr_{vtype.name.lower()}", values, V.ARRAY, sub_type=vtype)
    writer.add_key_value("test.arr_str", STRING_ARRAY, V.ARRAY, sub_type=V.STRING)
    for key, value in NESTED_ARRAYS.items():
        writer.add_key_value(key, value, V.ARRAY, sub_type=V.ARRAY)
    for name, array, raw_dtype, _, _ in synthetic_tensors():
        writer.add_tensor(name, array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if version != 3:  # GGUFWriter always writes v3; v2 has the same layout
        with open(path, "r+b") as f:
            f.seek(4)
            f.write(struct.pack("<I", version))
    return path


def assert_matches_gguf_reader(ours: GGUFFile, oracle: gguf.GGUFReader):
    """Every key (type, element type, value) and every tensor (type, shape, bytes) agree."""
    fields = {k: f for k, f in oracle.fields.items() if not k.startswith("GGUF.")}
    assert list(ours.kv) == list(fields)
    for key, field in fields.items():
        assert ours.kv_types[key] == field.types[0], key
        value = ours.kv[key]
        if field.types[0] != V.ARRAY:
            assert type(value) is type(field.contents()) and value == field.contents(), key
            continue
        assert ours.kv_array_types[key] == field.types[1], key
        if field.types[1] == V.ARRAY:
            continue  # GGUFReader flattens nested arrays; they are checked against the source values
        if field.types[1] == V.STRING:
            assert value == field.contents(), key
        else:
            assert value.dtype == oracle.gguf_scalar_to_np[field.types[1]], key
            assert value.tolist() == field.contents(), key
    assert ours.alignment == oracle.alignment
    assert ours.data_offset == oracle.data_offset
    assert list(ours.tensors) == [t.name for t in oracle.tensors]
    for expected in oracle.tensors:
        tensor = ours.tensors[expected.name]
        assert tensor.type == expected.tensor_type
        assert tensor.shape == tuple(reversed(expected.shape.tolist()))  # GGUF dims are innermost first
        assert tensor.offset == expected.data_offset
        assert tensor.nbytes == expected.n_bytes == tensor.data.size
        assert np.array_equal(tensor.data, expected.data.reshape(-1).view(np.uint8)), expected.name


@pytest.mark.parametrize("version,alignment", [(3, None), (2, None), (3, 64), (2, 256)])
def test_synthetic_file_matches_oracle_and_source(tmp_path, version, alignment):
    path = write_synthetic(tmp_path / "s.gguf", version=version, alignment=alignment)
    with read_gguf(path) as ours:
        assert ours.version == version
        assert ours.alignment == (alignment or 32)
        assert ours.arch == "testarch"
        assert_matches_gguf_reader(ours, gguf.GGUFReader(path))
        for key, (value, vtype) in SCALARS.items():
            assert ours.kv[key] == value and ours.kv_types[key] == vtype, key
        for vtype, values in NUMERIC_ARRAYS.items():
            array = ours.kv[f"test.arr_{vtype.name.lower()}"]
            assert isinstance(array, np.ndarray) and array.tolist() == values
        assert ours.kv["test.arr_str"] == STRING_ARRAY
        for key, value in NESTED_ARRAYS.items():
            assert ours.kv_array_types[key] == V.ARRAY
            assert _plain(ours.kv[key]) == value, key
        assert isinstance(ours.kv["test.nested_i32"][0], np.ndarray)
        assert ours.kv["test.nested_i32"][0].dtype == np.int32
        for name, array, _, qtype, shape in synthetic_tensors():
            tensor = ours.tensors[name]
            assert (tensor.type, tensor.shape) == (qtype, shape)
            assert tensor.data.tobytes() == array.tobytes()
            assert tensor.offset % ours.alignment == 0


def _plain(value):
    """Nested reader values (lists of numpy arrays) as plain lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def test_tensor_data_are_read_only_views_of_one_mapping(tmp_path):
    path = write_synthetic(tmp_path / "s.gguf")
    f = read_gguf(path)
    first = next(iter(f.tensors.values()))
    for tensor in f.tensors.values():
        assert tensor.data.dtype == np.uint8 and not tensor.data.flags.writeable
        # zero-copy: addresses differ exactly as the file offsets do
        assert tensor.data.ctypes.data - first.data.ctypes.data == tensor.offset - first.offset
    with pytest.raises(ValueError):
        first.data[0] = 1
    kept = f.tensors["t.f32_2d"]
    f.close()
    assert f.tensors == {}
    # a view still held keeps the mapping valid after close
    assert kept.data.view(np.float32).tolist() == list(range(48))


# ---------------------------------------------------------------- the real model

@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    with read_gguf(smollm2_path) as f:
        yield f


def test_smollm2_matches_gguf_reader(smollm2, smollm2_path):
    assert_matches_gguf_reader(smollm2, gguf.GGUFReader(smollm2_path))


def test_smollm2_facts(smollm2):
    assert smollm2.arch == "llama" and smollm2.version == 3
    assert smollm2.tensors["blk.0.ffn_up.weight"].shape == (1536, 576)
    assert smollm2.tensors["blk.0.ffn_up.weight"].type == Q.Q4_1
    assert smollm2.tensors["token_embd.weight"].shape == (49152, 576)
    assert smollm2.kv_types["llama.block_count"] == V.UINT32
    tokens = smollm2.kv["tokenizer.ggml.tokens"]
    assert len(tokens) == 49152 and all(type(t) is str for t in tokens[:100])
    assert smollm2.kv["tokenizer.ggml.token_type"].dtype == np.int32


def test_gemma3_vocabulary_is_consistent(gemma3_path):
    with read_gguf(gemma3_path) as f:
        tokens = f.kv["tokenizer.ggml.tokens"]
        assert f.arch == "gemma3"
        assert len(tokens) == 262144 == f.tensors["token_embd.weight"].shape[0]
        assert f.kv["tokenizer.ggml.scores"].dtype == np.float32
        assert f.kv["tokenizer.ggml.scores"].shape == (262144,)


# ---------------------------------------------------------------- hostile input, byte by byte

def raw_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def raw_kv(key: bytes, vtype: int, payload: bytes) -> bytes:
    return raw_string(key) + struct.pack("<I", vtype) + payload


def raw_tensor(name: bytes, dims, ttype: int, offset: int) -> bytes:
    """A tensor-table entry; dims innermost first, as GGUF stores them."""
    return (raw_string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
            + struct.pack("<IQ", ttype, offset))


def raw_file(kvs=(), tensors=(), data=b"", *, magic=b"GGUF", version=3, n_kv=None, n_tensors=None,
             alignment=32) -> bytes:
    head = magic + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(tensors)
    return head + bytes(-len(head) % alignment) + data


ARCH_KV = raw_kv(b"general.architecture", V.STRING, raw_string(b"llama"))
F32_2X32 = raw_tensor(b"w", [32, 2], Q.F32, 0)  # 256 bytes


def test_hand_built_baseline_parses():
    f = parse_gguf(raw_file([ARCH_KV], [F32_2X32], bytes(range(256))))
    assert f.kv == {"general.architecture": "llama"}
    tensor = f.tensors["w"]
    assert (tensor.shape, tensor.nbytes, tensor.offset) == ((2, 32), 256, 128)
    assert tensor.data.tobytes() == bytes(range(256))


def test_arrays_nested_to_the_limit_parse():
    f = parse_gguf(raw_file([raw_kv(b"k", V.ARRAY, nested(8))]))
    value = f.kv["k"]
    for _ in range(7):
        value = value[0]
    assert value.tolist() == [1]


def test_undecodable_strings_keep_their_bytes():
    f = parse_gguf(raw_file([raw_kv(b"s", V.STRING, raw_string(b"\xff\xfeok"))]))
    assert f.kv["s"].encode("utf-8", "surrogateescape") == b"\xff\xfeok"


def nested(depth: int) -> bytes:
    payload = struct.pack("<IQ", V.UINT8, 1) + b"\x01"
    for _ in range(depth - 1):
        payload = struct.pack("<IQ", V.ARRAY, 1) + payload
    return payload


HOSTILE = {  # name -> (file bytes, pattern the message must contain)
    "too short": (b"GGUF\x03\x00", r"truncated.*byte offset 0"),
    "wrong magic": (raw_file(magic=b"GGML"), r"magic.*byte offset 0"),
    "version 0": (raw_file(version=0), r"unsupported GGUF version 0.*byte offset 4"),
    "version 1": (raw_file(version=1), r"v1 is not supported.*byte offset 4"),
    "version 4": (raw_file(version=4), r"unsupported GGUF version 4"),
    "big endian": (raw_file(version=3 << 24), r"big-endian"),
    "huge n_kv": (raw_file(n_kv=2**63), r"impossible count.*byte offset 16"),
    "huge n_tensors": (raw_file(n_tensors=2**64 - 1), r"impossible count.*byte offset 8"),
    "truncated kv": (raw_file([ARCH_KV])[:40], r"truncated"),
    "huge key length": (raw_file([struct.pack("<Q", 2**64 - 1) + b"k" * 16]), r"truncated.*byte offset 32"),
    "huge string length": (raw_file([raw_kv(b"k", V.STRING, struct.pack("<Q", 2**62))]), r"truncated"),
    "unknown value type": (raw_file([raw_kv(b"key", 13, b"\0" * 8)]), r"unknown value type 13.*byte offset 35"),
    "unknown element type": (raw_file([raw_kv(b"k", V.ARRAY, struct.pack("<IQ", 99, 1))]),
                             r"unknown value type 99"),
    "huge array count": (raw_file([raw_kv(b"k", V.ARRAY, struct.pack("<IQ", V.UINT32, 2**62))]),
                         r"impossible count"),
    "huge string array count": (raw_file([raw_kv(b"k", V.ARRAY, struct.pack("<IQ", V.STRING, 2**40))]),
                                r"impossible count"),
    "string array element too long": (raw_file([raw_kv(b"k", V.ARRAY, struct.pack("<IQ", V.STRING, 2)
                                                       + raw_string(b"ab") + struct.pack("<Q", 2**50))]),
                                      r"truncated.*k'\[1\]"),
    "string array length cut": (raw_file([raw_kv(b"k", V.ARRAY, struct.pack("<IQ", V.STRING, 2)
                                                  + raw_string(b"abcdefgh") + b"\x01\0\0\0")], alignment=1),
                                r"length of key 'k'\[1\] needs 8 bytes but only 4 remain"),
    "arrays nested too deep": (raw_file([raw_kv(b"k", V.ARRAY, nested(9))]), r"nested deeper than 8"),
    "duplicate key": (raw_file([ARCH_KV, ARCH_KV]), r"duplicate metadata key.*first at byte offset 24.*byte offset 69"),
    "alignment zero": (raw_file([raw_kv(b"general.alignment", V.UINT32, struct.pack("<I", 0))]),
                       r"not a nonzero power of two"),
    "alignment 48": (raw_file([raw_kv(b"general.alignment", V.UINT32, struct.pack("<I", 48))]),
                     r"48 is not a nonzero power of two"),
    "alignment string": (raw_file([raw_kv(b"general.alignment", V.STRING, raw_string(b"32"))]),
                         r"expected an integer"),
    "five dims": (raw_file([], [raw_tensor(b"w", [1] * 5, Q.F32, 0)], bytes(64)), r"5 dimensions.*byte offset 33"),
    "zero dims": (raw_file([], [raw_tensor(b"w", [], Q.F32, 0)], bytes(64)), r"0 dimensions"),
    "negative dim": (raw_file([], [raw_tensor(b"w", [32, 2**64 - 5], Q.F32, 0)], bytes(64)), r"-5 \(negative"),
    "element count overflow": (raw_file([], [raw_tensor(b"w", [2**40, 2**40], Q.F32, 0)]), r"more than int64"),
    "removed tensor type": (raw_file([], [raw_tensor(b"w", [32], 4, 0)], bytes(64)), r"unknown tensor type 4"),
    "unknown tensor type": (raw_file([], [raw_tensor(b"w", [32], 1000, 0)], bytes(64)), r"unknown tensor type 1000"),
    "row not whole blocks": (raw_file([], [raw_tensor(b"w", [33], Q.Q8_0, 0)], bytes(64)), r"block size 32"),
    "tensor past eof": (raw_file([], [F32_2X32], bytes(255)), r"past the end"),
    "offset past eof": (raw_file([], [raw_tensor(b"w", [32], Q.F32, 2**63)], bytes(128)), r"past the end"),
    "misaligned offset": (raw_file([], [raw_tensor(b"w", [8], Q.F32, 16)], bytes(64)),
                          r"offset 16 is not a multiple of the alignment 32"),
    "overlapping tensors": (raw_file([], [F32_2X32, raw_tensor(b"v", [32], Q.F32, 128)], bytes(256)),
                            r"'v' data overlaps tensor 'w'"),
    "duplicate tensor name": (raw_file([], [F32_2X32, raw_tensor(b"w", [32], Q.F32, 256)], bytes(512)),
                              r"duplicate tensor name 'w'.*first at byte offset 24.*byte offset 65"),
    "truncated tensor table": (raw_file([], [F32_2X32])[:60], r"truncated"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_input_raises_gguf_error(name):
    data, pattern = HOSTILE[name]
    with pytest.raises(GGUFError, match=pattern):
        parse_gguf(data)


def test_hostile_files_through_read_gguf(tmp_path):
    for name in ("wrong magic", "tensor past eof", "huge n_kv"):
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(HOSTILE[name][0])
        with pytest.raises(GGUFError, match=HOSTILE[name][1]):
            read_gguf(path)
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(GGUFError, match="truncated"):
        read_gguf(tmp_path / "empty.gguf")
    assert issubclass(GGUFError, ValueError)
    with pytest.raises(TypeError, match="bytes, bytearray or mmap"):
        parse_gguf(memoryview(HOSTILE["wrong magic"][0]))


def test_impossible_counts_allocate_nothing_large():
    tracemalloc.start()
    try:
        for name in ("huge array count", "huge string array count", "huge n_kv", "huge string length"):
            with pytest.raises(GGUFError):
                parse_gguf(HOSTILE[name][0])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
