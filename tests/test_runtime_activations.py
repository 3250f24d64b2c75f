"""The FFN gates and the vectorizable exp against float64 formulas written independently."""
import math

import numpy as np
import pytest
from numba import njit

from lanternlm.runtime.backends import activations as A

rng = np.random.default_rng(99)


@njit(cache=True)
def _exp_all(out, x):
    for i in range(x.shape[0]):
        out[i] = A.exp_f32(x[i])


def exp_of(x):
    x = np.asarray(x, dtype=np.float32)
    out = np.empty_like(x)
    _exp_all(out, x)
    return out


def test_exp_is_correctly_rounded_over_its_range():
    x = np.concatenate([np.linspace(-87, 88, 400_001, dtype=np.float32),
                        rng.standard_normal(100_000).astype(np.float32) * 3])
    got = exp_of(x).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    ulp = np.spacing(want.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got - want) / ulp) <= 0.5 + 1e-6


def test_exp_edges():
    got = exp_of([0.0, -0.0, 1.0, np.nan, np.inf, -np.inf, 1000.0, -1000.0])
    assert got[0] == 1.0 and got[1] == 1.0
    assert abs(got[2] - math.e) <= 2 * np.spacing(np.float32(math.e))
    assert np.isnan(got[3])
    # clamped to [-87, 88]: finite, no overflow to inf, no flush of silu's denominator
    np.testing.assert_allclose(got[[4, 6]], math.exp(88.0), rtol=1e-6)
    np.testing.assert_allclose(got[[5, 7]], math.exp(-87.0), rtol=1e-6)


@pytest.mark.parametrize("swiglu", [A.swiglu, A.swiglu_rows])
def test_swiglu(swiglu):
    g = (rng.standard_normal((5, 300)) * 6).astype(np.float32)
    u = rng.standard_normal((5, 300)).astype(np.float32)
    g[0, :4] = [0.0, -100.0, 100.0, -1e-30]
    out = np.empty_like(g)
    swiglu(out, g, u)
    g64, u64 = g.astype(np.float64), u.astype(np.float64)
    np.testing.assert_allclose(out, g64 / (1 + np.exp(-g64)) * u64, rtol=2e-6, atol=1e-30)
    inplace = g.copy()
    swiglu(inplace, inplace, u)  # the planner may alias out and gate
    np.testing.assert_array_equal(inplace, out)


def gelu64(x):
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # infinities: NaN, never compared
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_table_tolerance(x):
    """|ggml's table entry - gelu64(x) rounded to half| allowed at half value x: one half ulp, plus
    float32 cancellation in 1 + tanh(..) for negative x (about |x| * 2**-23)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # infinite inputs (outside the table) give NaN here
        return np.spacing(np.abs(gelu64(x)).astype(np.float16)).astype(np.float64) + np.abs(x) * 2.0 ** -23


def test_gelu_table_is_gelu_rounded_to_half():
    # ggml's table: gelu of every half value computed in float32, rounded to half
    table = A.gelu_half_table()
    x = np.arange(65536, dtype=np.uint16).view(np.float16)
    finite = np.isfinite(x) & (np.abs(x.astype(np.float64)) < 10)
    x64 = x[finite].astype(np.float64)
    want = gelu64(x64).astype(np.float16).astype(np.float64)
    got = table[finite].astype(np.float64)
    assert np.mean(got != want) < 0.02
    assert np.all(np.abs(got - want) <= gelu_table_tolerance(x64))


@pytest.mark.parametrize("geglu", [A.geglu, A.geglu_rows])
def test_geglu_follows_ggml(geglu):
    g = (rng.standard_normal((4, 257)) * 4).astype(np.float32)
    u = rng.standard_normal((4, 257)).astype(np.float32)
    g[0, :6] = [-10.0, 10.0, -np.inf, 12.5, -11.0, 0.0]
    out = np.empty_like(g)
    geglu(out, g, u, A.GELU_TABLE)
    # outside (-10, 10): 0 below, the identity above
    assert out[0, 0] == 0.0 and out[0, 2] == 0.0 and out[0, 4] == 0.0
    assert out[0, 1] == np.float32(10.0) * u[0, 1] and out[0, 3] == np.float32(12.5) * u[0, 3]
    assert out[0, 5] == 0.0
    # inside: gelu of the input rounded to half, the result rounded to half
    inside = np.abs(g) < 10
    x16 = g.astype(np.float16).astype(np.float64)
    want = gelu64(x16).astype(np.float16).astype(np.float64) * u
    tol = gelu_table_tolerance(x16) * np.abs(u) + 1e-7 * np.abs(want)
    assert np.all(np.abs(out - want)[inside] <= tol[inside])
    # and close to exact GELU, to half precision
    np.testing.assert_allclose(out[inside], (gelu64(g) * u)[inside], rtol=2e-3, atol=2e-3)
    inplace = g.copy()
    geglu(inplace, inplace, u, A.GELU_TABLE)
    np.testing.assert_array_equal(inplace, out)


def test_exp_keeps_its_accuracy_inside_fastmath_code():
    # Numba compiles (and inlines) a helper with its caller's fast-math flags; the attention
    # kernel calling exp_f32 is compiled with reassociation on
    @njit(fastmath=True)
    def exp_fast(out, x):
        for i in range(x.shape[0]):
            out[i] = A.exp_f32(x[i])

    x = np.linspace(-87, 88, 100_001, dtype=np.float32)
    got = np.empty_like(x)
    exp_fast(got, x)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / np.spacing(want.astype(np.float32))) <= 0.5 + 1e-6
