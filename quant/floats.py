"""Float types F32, F16 and BF16: bit-exact conversions and their kernels.

Numba has no float16 or bfloat16 scalars, so the conversions here work on bit patterns
(uint16 <-> float32 bits through an LLVM bitcast). They reproduce numpy exactly:
`half_to_float` is the exact widening (NaN payloads kept; float_bits.f16_bits_to_f32, the one
every family uses), `float_to_half` rounds to nearest
even the way `ndarray.astype(np.float16)` does, and `float_to_bf16` is ggml's rounding
(round to nearest even, NaN forced quiet) that `gguf.quants.quantize` uses. The legacy and
other block families read their f16 scales with `float_bits.f16_at`.

Kernels follow quant/registry.py: dequantize(out, blocks), matvec(out, w, x),
matmul(out, w, x); the element readers are specialised from one template each.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from .float_bits import f16_bits_to_f32 as half_to_float
from .kernel_kit import DOT_FASTMATH, make_matmul, specialize
from .registry import QuantType, register


@intrinsic
def f32_from_bits(typingctx, bits):
    """The float32 whose IEEE bit pattern is the low 32 bits of an integer."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        word = args[0]
        if bits.bitwidth > 32:
            word = builder.trunc(word, ir.IntType(32))
        elif bits.bitwidth < 32:
            word = builder.zext(word, ir.IntType(32))
        return builder.bitcast(word, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def bits_of_f32(typingctx, value):
    """The IEEE bit pattern of a float32, as uint32."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@njit(cache=True)
def _round_shift_even(m, shift):
    """m >> shift rounded to nearest, ties to even (m, shift: non-negative ints, shift >= 1)."""
    kept = m >> shift
    dropped = m & ((1 << shift) - 1)
    halfway = 1 << (shift - 1)
    if dropped > halfway or (dropped == halfway and (kept & 1) == 1):
        kept += 1
    return kept


@njit(cache=True)
def float_to_half(value):
    """float32 -> IEEE half bits (uint16), round to nearest even, bit-identical to numpy."""
    bits = np.int64(bits_of_f32(np.float32(value)))
    sign = (bits >> 16) & 0x8000
    exponent = (bits >> 23) & 0xFF
    mantissa = bits & 0x7FFFFF
    if exponent == 0xFF:
        if mantissa == 0:
            return np.uint16(sign | 0x7C00)
        payload = mantissa >> 13
        return np.uint16(sign | 0x7C00 | (payload if payload else 1))  # stay a NaN
    if exponent >= 143:  # |value| >= 2**16: beyond half's range
        return np.uint16(sign | 0x7C00)
    if exponent >= 113:  # a normal half; a carry out of the mantissa correctly bumps the exponent
        return np.uint16(sign | _round_shift_even(((exponent - 112) << 23) | mantissa, 13))
    if exponent < 102:  # below half the smallest subnormal half (2**-25): rounds to zero
        return np.uint16(sign)
    # half subnormal: units of 2**-24 are (1.mantissa) * 2**(exponent - 126); 1024 units is
    # the smallest normal half, so rounding up into it needs no special case
    return np.uint16(sign | _round_shift_even(mantissa | 0x800000, 126 - exponent))


@njit(cache=True)
def bf16_to_float(h):
    """bfloat16 bits (integer 0..65535) -> float32: they are the float32's top 16 bits."""
    return f32_from_bits(np.uint32(h) << np.uint32(16))


@njit(cache=True)
def float_to_bf16(value):
    """float32 -> bfloat16 bits (uint16): NaN made quiet, otherwise round to nearest even."""
    bits = np.int64(bits_of_f32(np.float32(value)))
    if (bits & 0x7FFFFFFF) > 0x7F800000:
        bits = (bits & 0xFFFF0000) | 0x400000
    return np.uint16((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16)


@njit(cache=True)
def _f32_identity(value):
    return value


# ---- kernel templates over one element type (ELEM: the stored dtype, to_float: reader) ----

def _dequantize_elems(out, blocks):
    """out f32[n] <- blocks u8[n * itemsize] read as ELEM values."""
    vals = blocks.view(ELEM)
    if out.shape[0] != vals.shape[0]:
        raise ValueError("dequantize: out does not hold one float per stored value")
    for i in prange(vals.shape[0]):
        out[i] = to_float(vals[i])


def _decode_row_elems(out, w_row):
    """out f32[n] <- one weight row w_row u8[n * itemsize]."""
    vals = w_row.view(ELEM)
    for j in range(vals.shape[0]):
        out[j] = to_float(vals[j])


def _matvec_elems(out, w, x):
    """out f32[rows] = W @ x; w u8[rows, n * itemsize], x f32[n]."""
    if out.shape[0] != w.shape[0] or not row_fits(w.shape[1], x.shape[0]):
        raise ValueError("matvec: shapes of out, w and x do not agree")
    for r in prange(w.shape[0]):
        row = w[r].view(ELEM)
        acc = np.float32(0.0)
        for j in range(row.shape[0]):
            acc += to_float(row[j]) * x[j]
        out[r] = acc


def _row_fits_elems(row_bytes, n):
    return row_bytes == n * ITEMSIZE


def _element_kernels(name, elem, to_float):
    """(dequantize, matvec, matmul) for values stored as `elem` and read by `to_float`."""
    bind = dict(ELEM=elem, to_float=to_float)
    row_fits = specialize(_row_fits_elems, f"row_fits_{name}", parallel=False,
                          ITEMSIZE=np.dtype(elem).itemsize)
    decode_row = specialize(_decode_row_elems, f"decode_row_{name}", parallel=False, **bind)
    return (specialize(_dequantize_elems, f"dequantize_{name}", **bind),
            specialize(_matvec_elems, f"matvec_{name}", fastmath=DOT_FASTMATH, row_fits=row_fits, **bind),
            make_matmul(f"matmul_{name}", decode_row, row_fits))


# ---- quantizers: float32 rows (rows, n) -> u8 (rows, n * itemsize) ----

@njit(cache=True, parallel=True)
def _bf16_rows(out, x):
    """out u16[rows, n] <- x f32[rows, n] rounded to bfloat16."""
    for r in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[r, j] = float_to_bf16(x[r, j])


def quantize_f32(x: np.ndarray) -> np.ndarray:
    """x f32[rows, n] -> u8[rows, 4n]: a copy of the raw float32 bytes (never a view of x)."""
    return np.array(x, dtype=np.float32, order="C", copy=True).view(np.uint8)


def quantize_f16(x: np.ndarray) -> np.ndarray:
    """x f32[rows, n] -> u8[rows, 2n]; numpy's float16 cast is the round-to-nearest-even one."""
    return np.ascontiguousarray(x, dtype=np.float32).astype(np.float16).view(np.uint8)


def quantize_bf16(x: np.ndarray) -> np.ndarray:
    """x f32[rows, n] -> u8[rows, 2n] in bfloat16."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape, dtype=np.uint16)
    _bf16_rows(out, x)
    return out.view(np.uint8)


_F32 = _element_kernels("f32", np.float32, _f32_identity)
_F16 = _element_kernels("f16", np.uint16, half_to_float)
_BF16 = _element_kernels("bf16", np.uint16, bf16_to_float)

register(QuantType(T.F32, *_F32, quantize=quantize_f32, batch_invariant=True))
register(QuantType(T.F16, *_F16, quantize=quantize_f16, batch_invariant=True))
register(QuantType(T.BF16, *_BF16, quantize=quantize_bf16, batch_invariant=True))
