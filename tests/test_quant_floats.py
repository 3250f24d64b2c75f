"""F32 / F16 / BF16: conversions and kernels against numpy and gguf-py (the oracles)."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as gq
from numba import njit

import lanternlm.quant as Q
from lanternlm.formats.gguf import read_gguf
from lanternlm.quant.floats import float_to_half, half_to_float

FLOAT_TYPES = [T.F32, T.F16, T.BF16]
by_type = pytest.mark.parametrize("qtype", FLOAT_TYPES, ids=lambda q: q.name)


def assert_same_floats(got, want):
    """Bit-identical float32 arrays, except that any NaN matches any NaN."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan])


@njit(cache=True)
def _halves_to_floats(out, h):
    for i in range(h.shape[0]):
        out[i] = half_to_float(h[i])


@njit(cache=True)
def _floats_to_halves(out, f):
    for i in range(f.shape[0]):
        out[i] = float_to_half(f[i])


def _tricky_float32_bits(rng):
    """Random float32 bit patterns plus sweeps over every exponent around half precision."""
    sweeps = [np.arange(e << 23, (e + 1) << 23, 257, dtype=np.uint32) for e in range(98, 146)]
    specials = np.array([0, 0x7F800000, 0x7FC00000, 0x7F800001, 0x7FA00000, 0x477FE000, 0x477FEFFF,
                         0x477FF000, 0x33000000, 0x33000001, 0x337FFFFF, 0x38800000, 0x387FFFFF,
                         0x387FF000, 0x387FE000, 0x00000001, 0x007FFFFF], dtype=np.uint32)
    bits = np.concatenate([rng.integers(0, 2**32, 2_000_000, dtype=np.uint64).astype(np.uint32),
                           *sweeps, specials])
    return np.concatenate([bits, bits ^ np.uint32(0x80000000)])


def test_half_to_float_matches_numpy_on_all_65536_halves():
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    got = np.empty(h.shape, np.float32)
    _halves_to_floats(got, h)
    # exact bits, NaN payloads included
    np.testing.assert_array_equal(got.view(np.uint32), h.view(np.float16).astype(np.float32).view(np.uint32))


def test_float_to_half_matches_numpy_rounding():
    f = _tricky_float32_bits(np.random.default_rng(1)).view(np.float32)
    got = np.empty(f.shape, np.uint16)
    _floats_to_halves(got, f)
    with np.errstate(over="ignore"):
        want = f.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(got, want)


def test_bf16_quantize_matches_gguf_on_every_kind_of_float():
    f = _tricky_float32_bits(np.random.default_rng(2)).view(np.float32).reshape(-1, 2)
    np.testing.assert_array_equal(Q.quantize(f, T.BF16), gq.quantize(f, T.BF16).view(np.uint8))


@by_type
def test_dequantize_random_bytes_matches_gguf(qtype):
    raw = np.random.default_rng(3).integers(0, 256, (37, 64 * 4), dtype=np.uint8)
    n = raw.shape[1] // Q.get(qtype).type_size
    want = gq.dequantize(raw, qtype)
    assert_same_floats(Q.dequantize(raw, qtype, (37, n)), want)
    assert_same_floats(Q.dequantize(raw.reshape(-1), qtype, (37 * n,)), want.reshape(-1))


@by_type
@pytest.mark.parametrize("shape", [(1, 7), (5, 64), (3, 4, 33)])
def test_quantize_matches_gguf(qtype, shape):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(shape) * np.exp(rng.uniform(-20, 20, shape))).astype(np.float32)
    x.reshape(-1)[:3] = [0.0, -0.0, 70000.0]  # signed zero, beyond float16's range
    with np.errstate(over="ignore"):  # 70000 becomes inf in float16
        want = gq.quantize(x, qtype).view(np.uint8).reshape(-1, shape[-1] * Q.get(qtype).type_size)
        got = Q.quantize(x, qtype)
    np.testing.assert_array_equal(got, want)
    assert_same_floats(Q.dequantize(got, qtype, shape), gq.dequantize(want, qtype).reshape(shape))


@by_type
@pytest.mark.parametrize("rows,n,t", [(1, 1, 1), (7, 33, 3), (45, 320, 9)])
def test_matvec_and_matmul_match_dense_product(qtype, rows, n, t):
    rng = np.random.default_rng(5)
    w = Q.quantize(rng.standard_normal((rows, n)).astype(np.float32), qtype)
    dense = Q.dequantize(w, qtype, (rows, n)).astype(np.float64)
    x = rng.standard_normal((t, n)).astype(np.float32)
    scale = np.abs(dense).sum(axis=1) * np.abs(x).max()  # bound on each |w . x| term sum
    got_mv = Q.matvec(w, qtype, (rows, n), x[0])
    np.testing.assert_allclose(got_mv, dense @ x[0], rtol=0, atol=1e-5 * scale.max())
    got_mm = Q.matmul(w, qtype, (rows, n), x)
    np.testing.assert_allclose(got_mm, x @ dense.T, rtol=0, atol=1e-5 * scale.max())


def test_kernels_refuse_mismatched_shapes():
    qt = Q.get(T.F16)
    w = np.zeros((4, 16), np.uint8)  # 4 rows of 8 halves
    with pytest.raises(ValueError, match="matvec"):
        qt.matvec(np.empty(4, np.float32), w, np.zeros(9, np.float32))
    with pytest.raises(ValueError, match="matmul"):
        qt.matmul(np.empty((2, 3), np.float32), w, np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match="dequantize"):
        qt.dequantize(np.empty(7, np.float32), w.reshape(-1))
    with pytest.raises(ValueError, match="needs 256 bytes, got 64"):
        Q.dequantize(w, T.F32, (4, 16))


def test_real_f32_norm_weights(smollm2_path):
    with read_gguf(smollm2_path) as f:
        norms = [t for t in f.tensors.values() if t.type == T.F32]
        assert norms and all(len(t.shape) == 1 for t in norms)
        for t in norms[:8]:
            assert_same_floats(Q.dequantize(t.data, t.type, t.shape), gq.dequantize(t.data, T.F32))
