"""IQ4_NL / IQ4_XS: dequantize bit-exact vs gguf-py, quantize byte-exact vs llama.cpp,
matvec / matmul against dequantize(W) @ x."""
import importlib.util
import os

import gguf
import numpy as np
import pytest
from numba import njit

from lanternlm import quant
from lanternlm.quant import iquant_quantize, iquants

_spec = importlib.util.spec_from_file_location(
    "quant_inputs", os.path.join(os.path.dirname(__file__), "data", "quant_inputs.py"))
qi = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qi)

TYPES = ["IQ4_NL", "IQ4_XS"]
CASES = [(t, c) for t in TYPES for c in qi.fixture_cases(t)]


def gguf_dequantize(q, type_name, shape):
    return gguf.quants.dequantize(q, gguf.GGMLQuantizationType[type_name]).reshape(shape)


def random_blocks(type_name, n_blocks, seed):
    """Arbitrary block bytes (every index and scale pattern) with finite half scales."""
    rng = np.random.default_rng(seed)
    qt = quant.get(type_name)
    b = rng.integers(0, 256, (n_blocks, qt.type_size), dtype=np.uint8)
    d = (rng.standard_normal(n_blocks) * 10.0 ** rng.uniform(-6, 2, n_blocks)).astype(np.float16)
    b[:, 0:2] = d.view(np.uint8).reshape(n_blocks, 2)
    return b


# ---- quantize: byte-exact with llama.cpp


def bisect_index(v):
    """llama.cpp's best_index_int8 in float32: bisect to the bracketing pair, nearer wins."""
    kv = iquants.KVALUES.astype(np.float32)
    v = np.float32(v)
    if v <= kv[0]:
        return 0
    if v >= kv[15]:
        return 15
    lo, hi = 0, 15
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if v < kv[mid]:
            hi = mid
        else:
            lo = mid
    return hi - 1 if np.float32(v - kv[hi - 1]) < np.float32(kv[hi] - v) else hi


@njit
def _nearest(v, idx, val):
    for i in range(v.size):
        idx[i] = iquant_quantize.nearest_index(v[i])
        val[i] = iquant_quantize.nearest_value(v[i])


def test_nearest_index_matches_bisection():
    kv = iquants.KVALUES.astype(np.float64)
    mids = (kv[:-1] + kv[1:]) / 2
    special = np.concatenate([kv, mids]).astype(np.float32)
    v = np.concatenate([special, np.nextafter(special, -np.inf), np.nextafter(special, np.inf),
                        np.random.default_rng(0).uniform(-160, 160, 5000).astype(np.float32),
                        np.float32([0.0, -0.0, 1e-30, -1e30, 1e30])])
    idx = np.empty(v.size, np.int64)
    val = np.empty(v.size, np.float32)
    _nearest(v, idx, val)
    want = np.array([bisect_index(t) for t in v])
    assert np.array_equal(idx, want)
    assert np.array_equal(val, iquants.KVALUES[want].astype(np.float32))

@pytest.mark.parametrize("type_name, case", CASES, ids=[f"{t}-{qi.case_id(c)}" for t, c in CASES])
def test_quantize_matches_llama_cpp(type_name, case):
    x = qi.make_input(case["dist"], case["rows"], case["n"], case["seed"])
    assert qi.sha256(x) == case["input_sha256"], (
        "numpy's random stream changed: regenerate tests/data/quant_fixtures.json")
    q = quant.quantize(x, type_name)
    assert q.shape == (case["rows"], quant.get(type_name).row_bytes(case["n"]))
    assert qi.sha256(q) == case["outputs"][type_name]


def test_iq4_nl_fixtures_include_short_rows():
    assert {32, 96} <= {c["n"] for t, c in CASES if t == "IQ4_NL"}


@pytest.mark.parametrize("type_name", TYPES)
def test_values_on_the_grid_get_their_own_indices(type_name):
    # x = 0.01 * KVALUES[j % 16] fits the grid exactly with scale 0.01, so every index must come
    # back as j % 16; the only error left is the half-precision rounding of the stored scale.
    idx = np.arange(256) % 16
    x = (0.01 * iquants.KVALUES[idx].astype(np.float32)).reshape(1, 256).astype(np.float32)
    q = quant.quantize(x, type_name)
    y = quant.dequantize(q, type_name, x.shape)
    assert np.allclose(y, x, rtol=1e-3, atol=0)
    assert np.array_equal(np.abs(np.rint(y / 0.01)), np.abs(iquants.KVALUES[idx].reshape(1, -1)))


@pytest.mark.parametrize("type_name, bound", [("IQ4_NL", 0.085), ("IQ4_XS", 0.085)])
def test_round_trip_error(type_name, bound):
    x = np.random.default_rng(5).standard_normal((8, 2304)).astype(np.float32)
    y = gguf_dequantize(quant.quantize(x, type_name), type_name, x.shape)
    assert np.sqrt(np.mean((y - x) ** 2)) < bound


@pytest.mark.parametrize("type_name", TYPES)
def test_quantize_rejects_bad_input(type_name):
    block = quant.get(type_name).block_size
    with pytest.raises(ValueError, match="multiple of"):
        quant.quantize(np.zeros((2, block + 16), np.float32), type_name)
    with pytest.raises(ValueError, match="non-finite"):
        quant.quantize(np.full((1, block), np.nan, np.float32), type_name)


# ---- dequantize: bit-exact with gguf-py

@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_random_blocks_bit_exact(type_name):
    b = random_blocks(type_name, 300, seed=3)
    n = 300 * quant.get(type_name).block_size
    got = quant.dequantize(b, type_name, (n,))
    want = gguf_dequantize(b, type_name, (n,)).astype(np.float32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_of_quantized_weights_bit_exact(type_name):
    x = qi.make_input("weights", 16, 2048, 11)
    q = quant.quantize(x, type_name)
    got = quant.dequantize(q, type_name, x.shape)
    want = gguf_dequantize(q, type_name, x.shape).astype(np.float32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_rejects_wrong_byte_count(type_name):
    qt = quant.get(type_name)
    with pytest.raises(ValueError):
        quant.dequantize(np.zeros(qt.type_size * 2 + 1, np.uint8), type_name, (2 * qt.block_size,))


# ---- matvec / matmul against dequantize(W) @ x

def close_to_reference(got, w_deq, x):
    """|got - W x| within float32 accumulation error, relative to |W| |x|."""
    ref = x.astype(np.float64) @ w_deq.astype(np.float64).T
    scale = np.abs(x).astype(np.float64) @ np.abs(w_deq).astype(np.float64).T
    return np.all(np.abs(got - ref) <= 2e-6 * scale + 1e-30)


@pytest.mark.parametrize("type_name, n", [("IQ4_NL", 96), ("IQ4_NL", 2048), ("IQ4_XS", 256), ("IQ4_XS", 2304)])
def test_matvec(type_name, n):
    rows = 37
    b = random_blocks(type_name, rows * n // quant.get(type_name).block_size, seed=n).reshape(rows, -1)
    x = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    w = gguf_dequantize(b, type_name, (rows, n))
    got = quant.matvec(b, type_name, (rows, n), x)
    assert got.shape == (rows,)
    assert close_to_reference(got[None, :], w, x[None, :])


@pytest.mark.parametrize("type_name, t", [("IQ4_NL", 1), ("IQ4_NL", 5), ("IQ4_XS", 1), ("IQ4_XS", 7)])
def test_matmul(type_name, t):
    rows, n = 19, 512
    b = random_blocks(type_name, rows * n // quant.get(type_name).block_size, seed=t).reshape(rows, -1)
    x = np.random.default_rng(2).standard_normal((t, n)).astype(np.float32)
    w = gguf_dequantize(b, type_name, (rows, n))
    got = quant.matmul(b, type_name, (rows, n), x)
    assert got.shape == (t, rows)
    assert close_to_reference(got, w, x)
