"""Half <-> float32 conversions for the CPU kernels, as single instructions where the CPU has them.

The bit-level helpers in quant/float_bits.py are exact everywhere but branchy, so a loop that
calls them does not vectorize. On x86 with F16C and on 64-bit ARM, LLVM turns `fpext half` and
`fptrunc float -> half` into one (vectorizable) instruction each, with the same results: exact
widening, and narrowing rounded to nearest even (what ggml's FP32_TO_FP16 does on such
machines). Elsewhere LLVM would call a runtime helper that the JIT does not provide
(`__truncsfhf2`: the process aborts), so the bit-level helpers are used.
"""
from __future__ import annotations

import platform

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ...quant import cpu_features
from ...quant.float_bits import f16_bits_to_f32, f32_to_f16_bits


def converts_half_natively() -> bool:
    """64-bit ARM always has the conversions; x86 when the CPU Numba compiles for has F16C
    (quant/cpu_features.py: not the host's, when NUMBA_CPU_NAME names another CPU)."""
    return platform.machine().lower() in ("aarch64", "arm64") or cpu_features.has("f16c")


@intrinsic
def _half_bits_to_f32_native(typingctx, h):
    """uint16 half bits -> float32 (fpext: vcvtph2ps with F16C)."""
    if h != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


@intrinsic
def _f32_to_half_bits_native(typingctx, x):
    """float32 -> half bits as intp, round to nearest even (fptrunc: vcvtps2ph with F16C)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        half = builder.fptrunc(args[0], ir.HalfType())
        return builder.zext(builder.bitcast(half, ir.IntType(16)), ir.IntType(64))

    return types.intp(types.float32), codegen


NATIVE = converts_half_natively()
half_bits_to_f32 = _half_bits_to_f32_native if NATIVE else f16_bits_to_f32
"""uint16 half bits -> float32, exact (Numba only)."""
f32_to_half_bits = _f32_to_half_bits_native if NATIVE else f32_to_f16_bits
"""float32 -> half bits (intp), round to nearest even (Numba only)."""
