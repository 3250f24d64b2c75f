"""Half <-> float32 conversions for the CPU kernels, as single instructions where the CPU has them.

The bit-level helpers in quant/float_bits.py are exact everywhere but branchy, so a loop that
calls them does not vectorize. On x86 with F16C and on 64-bit ARM, LLVM turns `fpext half` and
`fptrunc float -> half` into one (vectorizable) instruction each, with the same results: exact
widening, and narrowing rounded to nearest even (what ggml's FP32_TO_FP16 does on such
machines). Elsewhere LLVM would call a runtime helper that the JIT may not provide, so the
bit-level helpers are used.
"""
from __future__ import annotations

import platform

from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ...quant.float_bits import f16_bits_to_f32, f32_to_f16_bits


def host_converts_half_natively() -> bool:
    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    try:
        return bool(llvm.get_host_cpu_features().get("f16c", False))
    except RuntimeError:
        return False


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


NATIVE = host_converts_half_natively()
half_bits_to_f32 = _half_bits_to_f32_native if NATIVE else f16_bits_to_f32
"""uint16 half bits -> float32, exact (Numba only)."""
f32_to_half_bits = _f32_to_half_bits_native if NATIVE else f32_to_f16_bits
"""float32 -> half bits (intp), round to nearest even (Numba only)."""
