"""Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 against gguf-py's reference (dequantize and quantize)."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

import lanternlm.quant as Q
from lanternlm.formats.gguf import read_gguf
from lanternlm.quant.legacy import FLOAT_KERNELS

LEGACY = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
by_type = pytest.mark.parametrize("qtype", LEGACY, ids=lambda q: q.name)


def assert_same_floats(got, want):
    """Bit-identical float32 arrays, except that any NaN matches any NaN."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan])


def reference_quantize(x, qtype):
    """gguf-py's bytes as (rows, row_bytes); its degenerate blocks warn about NaN casts."""
    with np.errstate(all="ignore"):
        return gq.quantize(x, qtype).reshape(-1, x.shape[-1] // 32 * Q.get(qtype).type_size)


def edge_case_blocks():
    """One row per degenerate block shape that a quantizer can get wrong."""
    rng = np.random.default_rng(10)
    ramp = np.linspace(-1, 1, 32, dtype=np.float32)
    rows = [
        np.zeros(32),                                  # all zero: d = 0, inverse taken as 0
        np.full(32, -0.0),                             # all negative zero
        np.full(32, 3.25), np.full(32, -7.0),          # constant blocks
        np.r_[5.0, -5.0, rng.uniform(-4, 4, 30)],      # max == -min, positive first
        np.r_[-5.0, 5.0, rng.uniform(-4, 4, 30)],      # ... negative first
        np.r_[rng.uniform(-1, 1, 31), 1e4],            # one outlier
        ramp * 1e-30, ramp * 1e30,                     # tiny and huge, finite scales
        ramp * 3e-39, ramp * 1e-42,                    # subnormal: 1/d overflows to inf
        np.r_[3e38, -3e38, ramp[:30]],                 # max - min overflows to inf
        np.r_[1.0, np.zeros(31)], np.r_[np.zeros(31), -1.0],
        (np.arange(32) - 16) / 2.0,
        np.r_[127.0, -127.0, np.arange(30) - 14.5],    # Q8_0: d = 1, so x / d lands on .5 ties
        np.r_[70000.0, -0.5, ramp[:30]],               # d beyond float16's range
    ]
    return np.array(rows, dtype=np.float32)


def random_rows(seed, shape, decades=6):
    """Normal, uniform and heavy-tailed values; each row scaled by its own power of ten
    in 10**-decades .. 10**(decades-1) (beyond ~10**4 some float16 scales overflow to inf)."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 3, shape[:-1] + (1,))
    x = np.where(kind == 0, rng.standard_normal(shape),
                 np.where(kind == 1, rng.uniform(-1, 1, shape), rng.standard_t(1.5, shape)))
    return (x * 10.0 ** rng.integers(-decades, decades, shape[:-1] + (1,))).astype(np.float32)


@by_type
def test_dequantize_random_blocks_matches_gguf(qtype):
    # random bytes everywhere, scales included (a few are inf/NaN halves)
    raw = np.random.default_rng(1).integers(0, 256, (200, 8 * Q.get(qtype).type_size), dtype=np.uint8)
    with np.errstate(invalid="ignore"):  # inf scale * 0
        want = gq.dequantize(raw, qtype)
    assert_same_floats(Q.dequantize(raw, qtype, (200, 256)), want)
    assert_same_floats(Q.dequantize(raw[7], qtype, (256,)), want[7])  # 1-D tensor


@by_type
@pytest.mark.parametrize("seed,shape", [(2, (1, 32)), (3, (3, 256)), (4, (2, 3, 96)), (5, (300, 512))])
def test_quantize_matches_gguf_bytes(qtype, seed, shape):
    x = random_rows(seed, shape)
    got = Q.quantize(x, qtype)
    np.testing.assert_array_equal(got, reference_quantize(x, qtype))


@by_type
def test_quantize_edge_case_blocks_matches_gguf_bytes(qtype):
    x = edge_case_blocks()
    got = Q.quantize(x, qtype)
    want = reference_quantize(x, qtype)
    for i, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(g, w, err_msg=f"edge case row {i}")
    # and the same blocks side by side in one long row
    np.testing.assert_array_equal(Q.quantize(x.reshape(1, -1), qtype), reference_quantize(x.reshape(1, -1), qtype))


@by_type
def test_quantize_refuses_non_finite_and_ragged_rows(qtype):
    x = np.ones((2, 64), np.float32)
    x[1, 5] = np.nan
    with pytest.raises(ValueError, match="non-finite.*row 1"):
        Q.quantize(x, qtype)
    with pytest.raises(ValueError, match="multiple of 32"):
        Q.quantize(np.ones((2, 48), np.float32), qtype)


def float_twins(w, qtype, x):
    """(matvec of x[-1], matmul of x) by the float-activation kernels (the registered ones
    quantize x to Q8 first: tests/test_quant_legacy_int8.py)."""
    matvec, matmul = FLOAT_KERNELS[T(qtype)]
    mv, mm = np.empty(w.shape[0], np.float32), np.empty((len(x), w.shape[0]), np.float32)
    matvec(mv, w, x[-1])
    matmul(mm, w, x)
    return mv, mm


@by_type
@pytest.mark.parametrize("rows,n,t", [(1, 32, 1), (13, 96, 2), (67, 1024, 11)])
def test_float_matvec_and_matmul_match_dense_product(qtype, rows, n, t):
    rng = np.random.default_rng(6)
    w = Q.quantize(random_rows(7, (rows, n), decades=3), qtype)
    dense = gq.dequantize(w, qtype).astype(np.float64)
    x = rng.standard_normal((t, n)).astype(np.float32)
    tol = 1e-5 * (np.abs(dense).sum(axis=1).max() * np.abs(x).max())  # relative to |W||x|
    mv, mm = float_twins(w, qtype, x)
    np.testing.assert_allclose(mv, dense @ x[-1], rtol=0, atol=tol)
    np.testing.assert_allclose(mm, x @ dense.T, rtol=0, atol=tol)


def test_kernels_refuse_mismatched_shapes():
    qt = Q.get(T.Q4_0)
    matvec, matmul = FLOAT_KERNELS[T.Q4_0]
    w = np.zeros((4, 36), np.uint8)  # 4 rows of 2 blocks = 64 values
    with pytest.raises(ValueError, match="matvec"):
        matvec(np.empty(4, np.float32), w, np.zeros(96, np.float32))
    with pytest.raises(ValueError, match="matmul"):
        matmul(np.empty((2, 4), np.float32), w, np.zeros((2, 32), np.float32))
    with pytest.raises(ValueError, match="dequantize"):
        qt.dequantize(np.empty(63, np.float32), w.reshape(-1))
    with pytest.raises(ValueError, match="not a multiple of 32"):
        Q.dequantize(w, T.Q4_0, (4, 48))


def test_q8_1_is_not_registered():
    # gguf-py has no Q8_1 reference and lists a stale 40-byte block; ggml's is 36 bytes now
    with pytest.raises(ValueError, match="unsupported"):
        Q.get(T.Q8_1)


def test_real_model_tensors(smollm2_path):
    rng = np.random.default_rng(8)
    with read_gguf(smollm2_path) as f:
        embd = f.tensors["token_embd.weight"]
        assert embd.type == T.Q8_0
        rows = embd.data.reshape(embd.shape[0], -1)
        assert_same_floats(Q.dequantize(embd.data, embd.type, embd.shape), gq.dequantize(rows, T.Q8_0))
        ids = np.array([0, 5, 49151, 5, 1234])  # a row gather: dequantize the selected rows' bytes
        assert_same_floats(Q.dequantize(rows[ids], embd.type, (len(ids), embd.shape[1])),
                           gq.dequantize(rows[ids], T.Q8_0))

        for name in ["blk.0.ffn_down.weight", "blk.0.attn_q.weight", "blk.29.ffn_up.weight"]:
            t = f.tensors[name]
            assert t.type == T.Q4_1
            w = t.data.reshape(t.shape[0], -1)
            dense = gq.dequantize(w, T.Q4_1)
            assert_same_floats(Q.dequantize(t.data, t.type, t.shape), dense)
            x = rng.standard_normal((3, t.shape[1])).astype(np.float32)
            tol = 1e-5 * np.abs(dense).sum(axis=1).max() * np.abs(x).max()
            mv, mm = float_twins(w, t.type, x)
            np.testing.assert_allclose(mv, dense @ x[-1], rtol=0, atol=tol)
            np.testing.assert_allclose(mm, x @ dense.T, rtol=0, atol=tol)
            # requantizing what the file holds gives back the file's bytes
            np.testing.assert_array_equal(Q.quantize(dense, T.Q4_1)[:64], w[:64])
