"""The FFN activations for the CPU backend: silu and GELU gates, vectorizable.

`np.exp` and `np.tanh` compile to one libm call per element, which keeps LLVM from vectorizing
the loop: on Gemma3-270M prefill the GELU gate alone took a quarter of the time. So:

* `exp_f32` is plain arithmetic and bit moves (range reduction by ln 2 and a polynomial in
  float64, the power of two built in the exponent bits), so a loop calling it vectorizes. It
  is correctly rounded over [-87, 88] (tested against float64 exp), as libm's expf.
* GELU uses ggml's method: a table of gelu(h) rounded to half precision for every half value
  h, indexed by the input rounded to half, with gelu(x) = 0 below -10 and x above 10. That is
  what llama.cpp computes for GEGLU (GGML_GELU_FP16), so the outputs agree with it exactly.

Each gate has a serial driver (decode: one row, no parallel launch) and a parallel one over
rows (prefill). All are alias-safe: `out` may be `gate`.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .half import f32_to_half_bits

# ---- exp ------------------------------------------------------------------------------------

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 split so that k * _LN2_HI is exact for |k| < 2**11
_LN2_LO = 1.90821492927058770002e-10
_EXP_MAX = np.float32(88.0)           # e**88 < FLT_MAX
_EXP_MIN = np.float32(-87.0)          # e**-87 is still a normal float32
# 1/i! for the Taylor series of e**r on |r| <= ln2/2: after 12 terms the error is ~1e-14,
# so the float32 result is the correctly rounded e**x but for the rarest ties
_TAYLOR = tuple(1.0 / math.factorial(i) for i in range(12))


def _float_intrinsic(name, n_args):
    """An intrinsic calling LLVM's `name`.f64 on n_args float64 values."""
    def generic(typingctx, *args):
        if len(args) != n_args or any(a != types.float64 for a in args):
            return None

        def codegen(context, builder, signature, llargs):
            f64 = ir.DoubleType()
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f64, [f64] * n_args),
                                                f"{name}.f64")
            return builder.call(fn, llargs)

        return types.float64(*args), codegen

    return generic


@intrinsic
def _rint(typingctx, x):
    """float64 rounded to the nearest integer, ties to even (llvm.rint: one vector instruction)."""
    return _float_intrinsic("llvm.rint", 1)(typingctx, x)


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c in float64 with one rounding (llvm.fma)."""
    return _float_intrinsic("llvm.fma", 3)(typingctx, a, b, c)


@intrinsic
def _i64_as_f64(typingctx, bits):
    """Reinterpret an int64's bits as float64."""
    if bits != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@njit(cache=True, inline="always")
def exp_f32(x):
    """e**x for float32 x, correctly rounded in practice (as libm's expf), clamped to [-87, 88];
    NaN stays NaN. No libm call, so loops calling it vectorize.

    Computed in float64: k = round(x / ln 2), r = x - k ln 2 (two fmas), a Taylor polynomial for
    e**r, times 2**k built in the exponent bits, rounded once to float32. A cruder float32
    polynomial (1-2 ulp) measurably moved SmolLM2's logits away from llama.cpp's. Numba compiles
    a helper with the fast-math flags of whichever caller compiles it first, and reassociation
    would undo the split of ln 2; the rounding and the reduction are intrinsics (rint, fma),
    which no flag rewrites."""
    x = np.float32(x)
    c = min(max(x, _EXP_MIN), _EXP_MAX)
    c = x if x != x else c  # NaN passes through the clamp unchanged
    d = np.float64(c)
    k = _rint(d * _LOG2E)
    r = _fma(-k, _LN2_LO, _fma(-k, _LN2_HI, d))
    p = _TAYLOR[11]
    for i in range(10, -1, -1):
        p = _fma(p, r, _TAYLOR[i])
    scale = _i64_as_f64((np.int64(k) + np.int64(1023)) << np.int64(52))
    return np.float32(p * scale)


# ---- silu gate ------------------------------------------------------------------------------

@njit(cache=True, error_model="numpy")
def _swiglu_row(out, gate, up):
    one = np.float32(1.0)
    for i in range(gate.shape[0]):
        g = gate[i]
        out[i] = g / (one + exp_f32(-g)) * up[i]


@njit(cache=True, error_model="numpy")
def swiglu(out, gate, up):
    """out = silu(gate) * up, silu(x) = x / (1 + e**-x). f32 (rows, width). Serial."""
    for r in range(gate.shape[0]):
        _swiglu_row(out[r], gate[r], up[r])


@njit(cache=True, parallel=True, error_model="numpy")
def swiglu_rows(out, gate, up):
    """As `swiglu`, rows in parallel."""
    for r in prange(gate.shape[0]):
        _swiglu_row(out[r], gate[r], up[r])


# ---- GELU gate (tanh approximation, through ggml's half-precision table) --------------------

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715
_GELU_LIMIT = np.float32(10.0)


def gelu_half_table() -> np.ndarray:
    """f32 (65536,): for each half bit pattern h, gelu_tanh(h) computed in float32 and rounded to
    half, as ggml fills its table (NaN and infinite halves give NaN; the kernel never indexes
    those outside (-10, 10))."""
    x = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        inner = np.float32(_GELU_C) * x * (np.float32(1.0) + np.float32(_GELU_A) * x * x)
        g = np.float32(0.5) * x * (np.float32(1.0) + np.tanh(inner))
    return g.astype(np.float16).astype(np.float32)


GELU_TABLE = gelu_half_table()


@njit(cache=True, error_model="numpy")
def _geglu_row(out, gate, up, table):
    for i in range(gate.shape[0]):
        g = gate[i]
        if g <= -_GELU_LIMIT:
            out[i] = np.float32(0.0)
        elif g >= _GELU_LIMIT:
            out[i] = g * up[i]
        else:
            out[i] = table[f32_to_half_bits(g)] * up[i]


@njit(cache=True, error_model="numpy")
def geglu(out, gate, up, table):
    """out = gelu_tanh(gate) * up via `table` (GELU_TABLE). f32 (rows, width). Serial."""
    for r in range(gate.shape[0]):
        _geglu_row(out[r], gate[r], up[r], table)


@njit(cache=True, parallel=True, error_model="numpy")
def geglu_rows(out, gate, up, table):
    """As `geglu`, rows in parallel."""
    for r in prange(gate.shape[0]):
        _geglu_row(out[r], gate[r], up[r], table)


def gelu_reference(x: np.ndarray) -> np.ndarray:
    """Float64 gelu_tanh, for tests and comparisons."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + np.tanh(_GELU_C * x * (1.0 + _GELU_A * x * x)))


__all__ = ["exp_f32", "swiglu", "swiglu_rows", "geglu", "geglu_rows", "GELU_TABLE", "gelu_half_table",
           "gelu_reference"]
