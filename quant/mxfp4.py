"""MXFP4 (OCP microscaling FP4): layout, dequantize, matvec, matmul.

    MXFP4  17 B per 32 weights: e u8 | qs[16]

e is a shared E8M0 exponent and each 4-bit index selects an E2M1 value; qs byte j holds element
j (low nibble) and element j + 16 (high nibble).  Weights are d * KVALUES[q], where KVALUES are
the E2M1 values doubled (0, ±1, ±2, ±3, ±4, ±6, ±8, ±12; gguf-py's table) and d = 2**(e - 128)
makes up for the doubling (ggml's e8m0-to-half: e < 2 gives the float32 subnormals 2**-128 and
2**-127, built from their bits).

The decoder reproduces gguf-py's float32 order (d * q) so `dequantize` is bit-identical to
gguf.quants.dequantize.  matvec / matmul are tquants.py's block kernels (strict float32, lane
sums in a fixed order): matmul is batch-invariant, both are tested against dequantize(W) @ x.
"""
from __future__ import annotations

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from numba import njit

from .float_bits import i32_as_f32
from .registry import QuantType, register
from .block_kernels import make_block_kernels

f32 = np.float32
KVALUES_F32 = np.array(gguf.quants.MXFP4.kvalues, dtype=np.float32)  # exact small integers
_KV = KVALUES_F32

BLOCK, BYTES = GGML_QUANT_SIZES[GGMLQuantizationType.MXFP4]  # 32, 17


@njit(cache=True, inline="always")
def e8m0_half(e):
    """Half the power of two that the E8M0 exponent e (0..255) encodes, as float32."""
    bits = (0x00200000 << e) if e < 2 else ((e - 1) << 23)  # below 2: a float32 subnormal
    return i32_as_f32(np.int32(bits))


@njit(cache=True, inline="always")
def decode_mxfp4_block(out, o, b, i):
    """out[o:o+32] <- the MXFP4 block at b[i:i+17]."""
    d = e8m0_half(np.intp(b[i]))
    for j in range(BLOCK // 2):
        v = np.intp(b[i + 1 + j])
        out[o + j] = d * _KV[v & 0xF]
        out[o + BLOCK // 2 + j] = d * _KV[v >> 4]


dequantize_mxfp4, matvec_mxfp4, matmul_mxfp4 = make_block_kernels(GGMLQuantizationType.MXFP4,
                                                                  decode_mxfp4_block)


# ---------------------------------------------------------------- registration

register(QuantType(GGMLQuantizationType.MXFP4, dequantize=dequantize_mxfp4,
                   matvec=matvec_mxfp4, matmul=matmul_mxfp4, quantize=None, batch_invariant=True))
