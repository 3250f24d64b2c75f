"""Fuzz the GGUF reader: every mutated header either parses or raises GGUFError, nothing else.

Two seeded corpora: (a) a small file written by gguf.GGUFWriter with every value type, nested
arrays and a few tensors; (b) the header of the real SmolLM2 file (its first `data_offset` bytes,
so its tensor data are missing and even the unmutated slice fails the past-EOF check).
Mutations are aimed at the structural integers gguf-py's GGUFReader locates for us (lengths,
counts, value types, n_dims, dims, tensor types, offsets) as well as at random bytes.
Set LANTERNLM_FUZZ_SEED to explore other seeds locally.
"""
import os
import random

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

from lanternlm.formats.gguf import GGUFError, parse_gguf

SEED = int(os.environ.get("LANTERNLM_FUZZ_SEED", "1234"))
SYNTHETIC_VARIANTS = 1850
SMOLLM2_VARIANTS = {"metadata fields": 40, "string lengths": 30, "tensor table": 50, "random bytes": 30}
INTERESTING = (0, 1, 2, 7, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF, 1 << 32,
               1 << 62, (1 << 63) - 1, 1 << 63, (1 << 64) - 1)


def integer_fields(reader: gguf.GGUFReader, field) -> list[tuple[int, int]]:
    """(offset, size) of each uint32/uint64 GGUFReader parsed for `field`, from its views of the file."""
    base = reader.data.ctypes.data
    return [(part.ctypes.data - base + i * part.itemsize, part.itemsize)
            for part in field.parts if part.dtype in (np.uint32, np.uint64) and part.size <= 4
            for i in range(part.size)]


def structural_fields(reader: gguf.GGUFReader, keep=lambda field: True) -> list[tuple[int, int]]:
    """Header counts plus the lengths, counts, types, dims and offsets of the kept fields."""
    fields = [(8, 8), (16, 8)]
    for field in [*reader.fields.values(), *(t.field for t in reader.tensors)]:
        if not field.name.startswith("GGUF.") and keep(field):
            fields += integer_fields(reader, field)
    return fields


def overwrite_field(data: bytearray, rng: random.Random, fields) -> str:
    offset, size = rng.choice(fields)
    if offset + size > len(data):
        return "noop"
    old = int.from_bytes(data[offset:offset + size], "little")
    value = rng.choice((*INTERESTING, len(data), old + 1, old - 1, old * 2, rng.getrandbits(8 * size)))
    data[offset:offset + size] = (value % (1 << 8 * size)).to_bytes(size, "little")
    return f"field@{offset}={value}"


def truncate_near_field(data: bytearray, rng: random.Random, fields) -> str:
    offset, size = rng.choice(fields)
    cut = max(0, min(len(data), offset + rng.randint(-1, size)))
    del data[cut:]
    return f"cut@{cut}"


def flip_bits(data: bytearray, rng: random.Random, fields) -> str:
    positions = [rng.randrange(len(data)) for _ in range(rng.randint(1, 8))] if data else []
    for pos in positions:
        data[pos] ^= 1 << rng.randrange(8)
    return f"flip@{positions}"


def random_span(data: bytearray, rng: random.Random, fields) -> str:
    if not data:
        return "noop"
    start = rng.randrange(len(data))
    span = rng.randint(1, 16)
    filler = rng.choice((b"\xff", b"\x00", bytes([rng.randrange(256)])))
    data[start:start + span] = filler * len(data[start:start + span])
    return f"span@{start}x{span}"


def splice(data: bytearray, rng: random.Random, fields) -> str:
    if not data:
        return "noop"
    start, span = rng.randrange(len(data)), rng.randint(1, 64)
    if rng.random() < 0.5:
        del data[start:start + span]
        return f"delete@{start}x{span}"
    data[start:start] = data[start:start + span]
    return f"duplicate@{start}x{span}"


def truncate_anywhere(data: bytearray, rng: random.Random, fields) -> str:
    cut = rng.randrange(len(data) + 1)
    del data[cut:]
    return f"cut@{cut}"


STRUCTURAL = (overwrite_field, overwrite_field, overwrite_field, truncate_near_field)
RANDOM = (flip_bits, random_span, splice, truncate_anywhere)


def run_variants(original: bytes, fields, operators, count: int, rng: random.Random, label: str):
    """Parse `count` mutants; return (parsed, refused, failures) where failures are anything but GGUFError."""
    parsed = refused = 0
    failures = []
    for index in range(count):
        data = bytearray(original)
        applied = [rng.choice(operators)(data, rng, fields) for _ in range(1 if rng.random() < 0.7 else 2)]
        try:
            result = parse_gguf(bytes(data))
        except GGUFError as err:
            refused += 1
            if "byte offset" not in str(err):
                failures.append((label, index, applied, f"message names no offset: {err}"))
        except Exception as err:  # noqa: BLE001 - anything else is the bug this test hunts
            failures.append((label, index, applied, repr(err)))
        else:
            parsed += 1
            for tensor in result.tensors.values():
                if tensor.data.size != tensor.nbytes or tensor.offset + tensor.nbytes > len(data):
                    failures.append((label, index, applied, f"tensor {tensor.name!r} outside the file"))
            if set(result.kv) != set(result.kv_types):
                failures.append((label, index, applied, "kv and kv_types disagree"))
    return parsed, refused, failures


def write_small_gguf(path):
    writer = gguf.GGUFWriter(path, "fuzzarch")
    writer.add_custom_alignment(64)
    for vtype, value in ((V.UINT8, 1), (V.INT8, -1), (V.UINT16, 2), (V.INT16, -2), (V.UINT32, 3),
                         (V.INT32, -3), (V.FLOAT32, 0.5), (V.BOOL, True), (V.UINT64, 4), (V.INT64, -4),
                         (V.FLOAT64, 0.25), (V.STRING, "text ✓")):
        writer.add_key_value(f"scalar.{vtype.name.lower()}", value, vtype)
        if vtype != V.STRING:
            writer.add_key_value(f"array.{vtype.name.lower()}", [value, value], V.ARRAY, sub_type=vtype)
    writer.add_key_value("array.string", ["a", "", "bc", "<0x0A>"], V.ARRAY, sub_type=V.STRING)
    writer.add_key_value("array.nested", [[1, 2], [3]], V.ARRAY, sub_type=V.ARRAY)
    writer.add_key_value("array.nested_strings", [["x"], ["y", "z"]], V.ARRAY, sub_type=V.ARRAY)
    writer.add_tensor("f32", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.add_tensor("f16", np.ones(8, dtype=np.float16))
    writer.add_tensor("q8_0", np.full((2, 34), 3, dtype=np.uint8), raw_dtype=Q.Q8_0)
    writer.add_tensor("i32", np.arange(24, dtype=np.int32).reshape(2, 3, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def report(failures):
    return "\n".join(f"{label} #{i} {ops}: {err}" for label, i, ops, err in failures[:20])


def test_fuzz_synthetic_file(tmp_path):
    path = write_small_gguf(tmp_path / "small.gguf")
    original = path.read_bytes()
    assert parse_gguf(original).tensors["q8_0"].shape == (2, 32)
    fields = structural_fields(gguf.GGUFReader(path))
    rng = random.Random(SEED)
    parsed, refused, failures = run_variants(original, fields, STRUCTURAL + RANDOM, SYNTHETIC_VARIANTS,
                                             rng, "synthetic")
    assert not failures, report(failures)
    # both outcomes occur, so the mutations neither all miss nor all break the header
    assert parsed > 50 and refused > 500, (parsed, refused)


@pytest.fixture(scope="module")
def smollm2_header(smollm2_path):
    reader = gguf.GGUFReader(smollm2_path)
    header = bytes(reader.data[:reader.data_offset])
    big_arrays = {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"}
    return header, {
        "metadata fields": structural_fields(reader, lambda f: f.name not in big_arrays),
        "string lengths": [f for key in big_arrays for f in integer_fields(reader, reader.fields[key])],
        "tensor table": [(8, 8)] + [f for t in reader.tensors for f in integer_fields(reader, t.field)],
    }


def test_fuzz_smollm2_header(smollm2_header):
    header, field_sets = smollm2_header
    with pytest.raises(GGUFError, match="past the end"):
        parse_gguf(header)  # the slice has no tensor data
    rng = random.Random(SEED + 1)
    failures, refused = [], 0
    for label, count in SMOLLM2_VARIANTS.items():
        fields = field_sets.get(label, [])
        operators = RANDOM if label == "random bytes" else STRUCTURAL
        _, label_refused, label_failures = run_variants(header, fields, operators, count, rng, label)
        failures += label_failures
        refused += label_refused
    assert not failures, report(failures)
    assert refused > 100
