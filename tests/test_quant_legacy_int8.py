"""Legacy types with int8 activations (quant/legacy_int8.py) against llama.cpp.

Oracles: llama.cpp's CPU backend, recorded by tests/data/make_legacy_int8_fixtures.py (the
Q8_0 / Q8_1 bytes its `from_float` writes, and `vec_dot` results as float32 bit patterns);
hand-computed rounding cases; and the float64 product of gguf-py's dequantized weights with
the dequantized Q8 activations.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as gq
from numba import njit

import lanternlm.quant as Q
from lanternlm.formats.gguf import read_gguf
from lanternlm.quant import kquants_int8, legacy, legacy_int8, legacy_tiles

_spec = importlib.util.spec_from_file_location(
    "quant_inputs", os.path.join(os.path.dirname(__file__), "data", "quant_inputs.py"))
quant_inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quant_inputs)

with open(os.path.join(os.path.dirname(__file__), "data", "legacy_int8_fixtures.json")) as _f:
    FIXTURES = json.load(_f)

LEGACY = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
WITH_SUMS = {T.Q4_0: False, T.Q4_1: True, T.Q5_0: False, T.Q5_1: True, T.Q8_0: False}
by_type = pytest.mark.parametrize("qtype", LEGACY, ids=lambda q: q.name)


def q8_parts(x, with_sums):
    """x f32 (t, n) -> (d, s, qs) with d, s f32 (t, n/32) and qs i8 (t, n): Q8_0 or Q8_1 parts."""
    t, n = x.shape
    d = np.empty((t, n // 32), np.float32)
    s = np.empty((t, n // 32 if with_sums else 0), np.float32)
    qs = np.empty((t, n), np.int8)
    for k in range(t):
        if with_sums:
            legacy_int8.quantize_q8_1_parts(d[k], s[k], qs[k], x[k])
        else:
            legacy_int8.quantize_q8_0_parts(d[k], qs[k], x[k])
    return d, s, qs


def q8_bytes(d, s, qs):
    """ggml's block_q8_0 (f16 d, 32 int8) or block_q8_1 (f16 d, f16 s, 32 int8) bytes of one row."""
    halves = [d.astype(np.float16)] + ([s.astype(np.float16)] if s.size else [])
    head = np.stack(halves, axis=1).view(np.uint8).reshape(d.size, -1)
    return np.concatenate([head, qs.view(np.uint8).reshape(d.size, 32)], axis=1).reshape(-1)


def same_bits(got, want):
    return np.array_equal(np.asarray(got, np.float32).view(np.uint32), np.asarray(want, np.float32).view(np.uint32))


# ---- activations ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", FIXTURES["activations"], ids=lambda c: f"{c['dist']}-{c['scale']:g}")
def test_activation_bytes_match_llama_cpp(case):
    x = quant_inputs.make_input(case["dist"], case["rows"], case["n"], case["seed"]) * np.float32(case["scale"])
    assert quant_inputs.sha256(x) == case["input_sha256"], "numpy's random stream changed"
    for name, with_sums in (("q8_0", False), ("q8_1", True)):
        d, s, qs = q8_parts(x, with_sums)
        got = np.concatenate([q8_bytes(d[k], s[k], qs[k]) for k in range(len(x))])
        assert got.tobytes().hex() == case[name], name


def test_activation_rounding_by_hand():
    # Block maxima 127 and 127/1024 make the inverse scale exactly 1 and 1024, so x.5 values
    # are exact ties, rounded to even (llama.cpp's x86 path; its portable reference rounds
    # them away from zero).
    x = np.zeros((1, 64), np.float32)
    x[0, :6] = [127.0, 2.5, 3.5, -2.5, -0.5, 126.5]
    x[0, 32:36] = np.array([-127.0, 63.5, 32.5, -0.5]) / 1024
    d, s, qs = q8_parts(x, True)
    assert qs[0, :6].tolist() == [127, 2, 4, -2, 0, 126]
    assert qs[0, 32:36].tolist() == [-127, 64, 32, 0]
    assert d[0].tolist() == [1.0, 1 / 1024]
    assert s[0].tolist() == [257.0, -31 / 1024]  # d * sum(q), as f16
    d0, qs0 = np.empty(2, np.float32), np.empty(64, np.int8)
    legacy_int8.quantize_q8_0_parts(d0, qs0, x[0])
    assert np.array_equal(d0, d[0]) and np.array_equal(qs0, qs[0])


def test_activation_block_maxima_vector_and_scalar_agree():
    """The block maximum of a contiguous row (vector IR) and of a strided one (the scalar loop
    it replaces) on NaN, infinities, signed zeros and subnormals: same parts, bit for bit."""
    rng = np.random.default_rng(11)
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1e-40, 3e38, 65504.0],
                       np.float32)
    x = (rng.standard_normal((6, 256)) * np.float32(3.0)).astype(np.float32)
    x.flat[rng.choice(x.size, 150, replace=False)] = rng.choice(special, 150)
    x[0, :32] = np.nan  # a block of NaNs only
    strided = np.asfortranarray(x)
    for k in range(len(x)):
        d1, s1, q1 = (np.empty(8, np.float32), np.empty(8, np.float32), np.empty(256, np.int8))
        d2, s2, q2 = (np.empty(8, np.float32), np.empty(8, np.float32), np.empty(256, np.int8))
        legacy_int8.quantize_q8_1_parts(d1, s1, q1, x[k])
        legacy_int8.quantize_q8_1_parts(d2, s2, q2, strided[k])
        assert same_bits(d1, d2) and same_bits(s1, s2) and np.array_equal(q1, q2), k


def test_activation_quantizers_reject_ragged_rows():
    with pytest.raises(ValueError, match="multiple of 32"):
        legacy_int8.quantize_q8_0_parts(np.empty(2, np.float32), np.empty(48, np.int8), np.zeros(48, np.float32))
    with pytest.raises(ValueError, match="multiple of 32"):
        legacy_int8.quantize_q8_1_parts(np.empty(1, np.float32), np.empty(2, np.float32),
                                        np.empty(32, np.int8), np.zeros(32, np.float32))


# ---- dot products --------------------------------------------------------------------------

def dot_case_inputs(case):
    """(qtype, weights u8 (rows, row_bytes), x f32 (t, n), expected f32 (t, rows)) of a fixture case."""
    qtype = T[case["type"]]
    w_float = quant_inputs.make_input(case["w_dist"], case["rows"], case["n"], case["w_seed"])
    x = quant_inputs.make_input(case["x_dist"], case["t"], case["n"], case["x_seed"])
    assert quant_inputs.sha256(w_float) == case["w_input_sha256"], "numpy's random stream changed"
    assert quant_inputs.sha256(x) == case["x_sha256"], "numpy's random stream changed"
    w = Q.quantize(w_float, qtype)
    assert quant_inputs.sha256(w) == case["weights_sha256"], "our quantizer differs from ggml's"
    expected = np.frombuffer(bytes.fromhex(case["out_f32le"]), "<f4").reshape(case["t"], case["rows"])
    return qtype, w, x, expected


def dot_id(case):
    return f"{case['type']}-{case['w_dist']}-{case['x_dist']}-{case['n']}"


@pytest.mark.parametrize("case", FIXTURES["dots"], ids=dot_id)
def test_matvec_and_matmul_are_llama_cpp_vec_dot_bit_for_bit(case):
    qtype, w, x, expected = dot_case_inputs(case)
    shape = (case["rows"], case["n"])
    for k in range(case["t"]):
        assert same_bits(Q.matvec(w, qtype, shape, x[k]), expected[k]), f"matvec, activation row {k}"
    # t = 5: one pass of four activation rows, then one alone
    assert same_bits(Q.matmul(w, qtype, shape, x), expected)


def tile_harness(qtype, shape):
    """A plain (not parallel) njit running the matmul intrinsics of legacy_tiles for one
    tile shape, built now (under whatever x86 flags a test has set): products(out f32[t, rows],
    w, x f32[t, n]) loops over the tiles as the registered matmul does."""
    n_w, n_act = shape
    stage = legacy_tiles._stage_kernel(qtype, n_w)
    dot_tile = legacy_tiles._dot_tile_kernel(qtype, n_w, n_act)
    dot_column = legacy_tiles._dot_column_kernel(qtype, n_w)

    @njit
    def run(out, w, ws, us, ps, xq, xd, xs, xc):
        t = xq.shape[0]
        t_full = t - t % n_act
        n_tiles = (w.shape[0] + n_w - 1) // n_w  # tile r: rows r, r + n_tiles, ...
        for r in range(n_tiles):
            stage(ws, us, r, n_tiles, w)
            for k in range(0, t_full, n_act):
                dot_tile(out, r, n_tiles, ws, us, xq, xd, xs, xc, ps, k)
            for k in range(t_full, t):
                dot_column(out, r, n_tiles, w, xq, xd, xs, xc, k)

    shift = legacy_int8.shift_of(qtype)  # the flags now, as the intrinsics see them

    def products(out, w, x):
        t, n = x.shape
        d, s, qs = q8_parts(x, WITH_SUMS[qtype])
        xc = np.empty((t, n // 4 if shift else 0), np.int32)
        for k in range(t):
            if shift:
                legacy_int8.offset_lanes(xc[k], qs[k], shift)
        ws = np.empty((n // 32, 2 * n_w), np.float32)
        us = np.empty((n // 32, 32 * n_w), np.int8)
        ps = np.empty(n // 32 * n_w * n_act, np.float32)
        run(out, w, ws, us, ps, qs, np.ascontiguousarray(d.T), np.ascontiguousarray(s.T), xc)

    return products


# one case per type for the checks that compile kernels of their own
ONE_CASE_PER_TYPE = [next(c for c in FIXTURES["dots"] if c["type"] == t.name and c["n"] > 32) for t in LEGACY]


@pytest.mark.parametrize("flags", [dict(vnni=False, avx2=True, f16c=True),
                                   dict(vnni=False, avx2=False, f16c=False)], ids=["avx2", "portable"])
@pytest.mark.parametrize("case", ONE_CASE_PER_TYPE, ids=dot_id)
def test_dot_without_x86_extensions_gives_the_same_bits(case, flags, monkeypatch):
    """The vector IR emitted without VNNI (pmaddubsw/pmaddwd, psign, no offset lanes) and
    without any x86 names (plain vectors, integer f16 decoding) computes the same values, in
    the tile those paths use and in a larger one."""
    monkeypatch.setattr(legacy_int8, "X86_VNNI", flags["vnni"])
    monkeypatch.setattr(legacy_int8, "X86_F16C", flags["f16c"])
    monkeypatch.setattr(kquants_int8, "X86_AVX2", flags["avx2"])
    qtype, w, x, expected = dot_case_inputs(case)
    assert legacy_tiles.tile_shape() == legacy_tiles.TILE_PORTABLE
    for shape in [legacy_tiles.TILE_PORTABLE, (4, 2)]:
        out = np.full(expected.shape, np.nan, np.float32)
        tile_harness(qtype, shape)(out, w, x)
        assert same_bits(out, expected), shape


@pytest.mark.parametrize("case", ONE_CASE_PER_TYPE, ids=dot_id)
def test_tiles_of_other_shapes_give_the_same_bits(case):
    """Tiles of 3 x 2 and 2 x 3 (6 weight rows; 5 activation rows: one left over) and 5 x 1
    and 4 x 4 (6 rows: tiles with rows past the last) against llama.cpp, on this machine's
    path (VNNI where there is)."""
    qtype, w, x, expected = dot_case_inputs(case)
    for shape in [(3, 2), (2, 3), (5, 1), (4, 4)]:
        out = np.full(expected.shape, np.nan, np.float32)
        tile_harness(qtype, shape)(out, w, x)
        assert same_bits(out, expected), shape


# rows: 1, 2, 3, 5 and 37 leave tiles of 4 with 1..3 rows past the last (and a multiple of 4);
# n = 32 is one block per row; t = 1..9 covers every remainder of the 4 activation rows a tile
# takes, and no full tile at all
REMAINDER_SHAPES = [(1, 32, 9), (2, 64, 1), (3, 96, 2), (4, 32, 3), (5, 160, 4), (37, 64, 5),
                    (8, 32, 6), (6, 96, 7), (9, 128, 8), (7, 32, 9)]


@by_type
def test_tiled_matmul_equals_the_matvec_bit_for_bit(qtype):
    """Every activation row of the matmul (tiles, tiles with rows past the last, left-over
    activation rows through the one-row kernel) is the matvec of that row, bit for bit: the
    same operations per pair. NaN-filled outputs show any element left unwritten."""
    rng = np.random.default_rng(70 + int(qtype))
    matvec, matmul = legacy_int8.INT8_KERNELS[qtype]
    for rows, n, t in REMAINDER_SHAPES:
        w = Q.quantize((rng.standard_normal((rows, n)) * 0.05 + 0.01).astype(np.float32), qtype)
        x = (rng.standard_normal((t, n)) * rng.choice([1e-3, 1.0, 40.0], (t, 1))).astype(np.float32)
        out = np.full((t, rows), np.nan, np.float32)
        matmul(out, w, x)
        for k in range(t):
            row = np.full(rows, np.nan, np.float32)
            matvec(row, w, x[k])
            assert same_bits(out[k], row), (rows, n, t, k)


def test_offset_lanes_are_minus_shift_times_sums_of_four():
    qs = np.random.default_rng(3).integers(-128, 128, 64).astype(np.int8)
    lanes = np.empty(16, np.int32)
    legacy_int8.offset_lanes(lanes, qs, 128)
    assert lanes.tolist() == (-128 * qs.astype(np.int64).reshape(16, 4).sum(axis=1)).tolist()


PORTABLE_SCRIPT = """
import importlib.util, sys
import numpy as np
from lanternlm.quant import legacy_int8, legacy_tiles
assert not legacy_int8.X86_VNNI and legacy_tiles.tile_shape() == legacy_tiles.TILE_PORTABLE
spec = importlib.util.spec_from_file_location("legacy_int8_tests", sys.argv[1])
tests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tests)
for case in tests.ONE_CASE_PER_TYPE:
    qtype, w, x, expected = tests.dot_case_inputs(case)
    out = np.full(expected.shape, np.nan, np.float32)
    tests.tile_harness(qtype, legacy_tiles.TILE_PORTABLE)(out, w, x)
    assert tests.same_bits(out, expected), case["type"]
print("same bits")
"""


def test_portable_build_gives_the_same_bits():
    """Compiled for a generic x86-64 (NUMBA_CPU_NAME=generic: no VNNI, AVX2 or F16C flags, and
    LLVM may use none of them either), in a process of its own."""
    env = dict(os.environ, NUMBA_CPU_NAME="generic")
    result = subprocess.run([sys.executable, "-c", PORTABLE_SCRIPT, __file__], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "same bits" in result.stdout, result.stderr[-3000:]


def q8_product(w, qtype, x):
    """float64 (t, rows): dequantize(W) @ dequantize(Q8(x)).T, where for Q4_1 / Q5_1 the
    weights' offsets m meet the activation block sums through the stored f16 s (Q8_1), as
    in ggml: sum_b d_w d_x sum(q_w q_x) + m_w s_x. Also returns |W| @ |Q8(x)| for tolerances."""
    t, n = x.shape
    dense = gq.dequantize(w, qtype).astype(np.float64)
    d, s, qs = q8_parts(x, WITH_SUMS[qtype])
    xq = (qs.reshape(t, -1, 32) * d[:, :, None].astype(np.float64)).reshape(t, n)
    product = xq @ dense.T
    if WITH_SUMS[qtype]:
        m = w.reshape(w.shape[0], -1, Q.get(qtype).type_size)[:, :, 2:4].copy().view(np.float16)[:, :, 0]
        block_sums = xq.reshape(t, -1, 32).sum(axis=2)  # d_x * sum(q_x), before s's f16 rounding
        product += (s.astype(np.float64) - block_sums) @ m.astype(np.float64).T
    return product, np.abs(xq) @ np.abs(dense).T


@by_type
@pytest.mark.parametrize("rows,n,t", [(1, 32, 1), (37, 1024, 7)])
def test_int8_kernels_equal_the_product_of_dequantized_operands(qtype, rows, n, t):
    """W @ x with x as its Q8 form: exact up to float32 summation (~1e-6 of |W| |x|)."""
    rng = np.random.default_rng(50 + int(qtype) + n)
    w = Q.quantize((rng.standard_normal((rows, n)) * 0.05 + 0.01).astype(np.float32), qtype)
    x = (rng.standard_normal((t, n)) * rng.choice([1e-3, 1.0, 40.0], (t, 1))).astype(np.float32)
    product, scale = q8_product(w, qtype, x)
    mm = Q.matmul(w, qtype, (rows, n), x)
    assert np.max(np.abs(mm - product) / scale) < 1e-6
    mv = Q.matvec(w, qtype, (rows, n), x[-1])
    assert np.max(np.abs(mv - product[-1]) / scale[-1]) < 1e-6
    # and the activation rounding keeps them close to the float product (the float twins' result)
    float_matvec, _ = legacy.FLOAT_KERNELS[qtype]
    twin = np.empty(rows, np.float32)
    float_matvec(twin, w, x[-1])
    dense = gq.dequantize(w, qtype)
    assert np.max(np.abs(mv - twin) / (np.abs(dense) @ np.abs(x[-1]))) < 5e-3


def test_registered_kernels_are_the_int8_ones():
    for qtype in LEGACY:
        qt = Q.get(qtype)
        assert (qt.matvec, qt.matmul) == legacy_int8.INT8_KERNELS[qtype]
        assert legacy.FLOAT_KERNELS[qtype][0] is not qt.matvec
    with pytest.raises(ValueError, match="unsupported"):
        Q.get(T.Q8_1)  # internal to legacy_int8: gguf-py's size table has a stale 40-byte block


def test_kernels_reject_mismatched_shapes():
    matvec, matmul = legacy_int8.INT8_KERNELS[T.Q4_1]
    w = np.zeros((4, 40), np.uint8)  # 4 rows of 2 Q4_1 blocks = 64 values
    with pytest.raises(ValueError, match="Q4_1 int8 matvec/matmul: shapes"):
        matvec(np.empty(4, np.float32), w, np.zeros(96, np.float32))
    with pytest.raises(ValueError, match="shapes"):
        matvec(np.empty(3, np.float32), w, np.zeros(64, np.float32))
    with pytest.raises(ValueError, match="shapes"):
        matmul(np.empty((2, 4), np.float32), w, np.zeros((3, 64), np.float32))
    with pytest.raises(ValueError, match="shapes"):
        matmul(np.empty((2, 4), np.float32), w, np.zeros((2, 48), np.float32))


def test_real_model_tensors(smollm2_path):
    """SmolLM2's Q4_1 layers and its Q8_0 token embedding (the tied output matrix)."""
    rng = np.random.default_rng(9)
    with read_gguf(smollm2_path) as f:
        for name in ["blk.0.ffn_down.weight", "blk.7.attn_k.weight", "token_embd.weight"]:
            t = f.tensors[name]
            w = t.data.reshape(t.shape[0], -1)
            x = rng.standard_normal((3, t.shape[1])).astype(np.float32)
            product, scale = q8_product(w, t.type, x)
            mm = Q.matmul(w, t.type, t.shape, x)
            assert np.max(np.abs(mm - product) / scale) < 1e-6, name
            assert same_bits(Q.matvec(w, t.type, t.shape, x[1]), mm[1]), name
