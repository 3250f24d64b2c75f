"""The ternary types TQ1_0 and TQ2_0: layouts, dequantize, matvec, matmul (block_kernels.py).

Both hold 256 weights d * q with q in {-1, 0, 1} and one f16 scale d at the end of the block.

    TQ1_0  54 B per 256 weights: qs[48] | qh[4] | d f16
    TQ2_0  66 B per 256 weights: qs[64] | d f16

TQ1_0 packs five trits per byte (four in qh) as a base-3 fraction: trit p of byte v is
((v * 3**p mod 256) * 3) >> 8, minus 1.  qs[0:32] give elements 32p + j (p = 0..4), qs[32:48]
elements 160 + 16p + j, qh[0:4] elements 240 + 4p + j (p = 0..3).
TQ2_0 packs four 2-bit fields per byte: bits 2s..2s+1 of qs[32h + j] are element
128h + 32s + j, stored as q + 1.

The decoders reproduce gguf-py's float32 order (d * q) so `dequantize` is bit-identical to
gguf.quants.dequantize; matvec / matmul are block_kernels.py's, batch-invariant, tested against
dequantize(W) @ x with a tolerance.
"""
from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from numba import njit

from .block_kernels import make_block_kernels
from .float_bits import f16_at
from .registry import QuantType, register

f32 = np.float32


# ---------------------------------------------------------------- TQ1_0 / TQ2_0

TQ1_BLOCK, TQ1_BYTES = GGML_QUANT_SIZES[GGMLQuantizationType.TQ1_0]  # 256, 54
TQ2_BLOCK, TQ2_BYTES = GGML_QUANT_SIZES[GGMLQuantizationType.TQ2_0]  # 256, 66
_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.intp)


@njit(cache=True, inline="always")
def decode_trits(out, o, d, b, q, m, n_trits):
    """out[o + m*p + j] = d * (trit p of b[q + j]) for j < m, p < n_trits."""
    for p in range(n_trits):
        for j in range(m):
            v = (np.intp(b[q + j]) * _POW3[p]) & 0xFF  # the byte's fraction shifted by p trits
            out[o + m * p + j] = d * f32(((v * 3) >> 8) - 1)


@njit(cache=True, inline="always")
def decode_tq1_block(out, o, b, i):
    """out[o:o+256] <- the TQ1_0 block at b[i:i+54]."""
    d = f16_at(b, i + TQ1_BYTES - 2)
    decode_trits(out, o, d, b, i, 32, 5)              # qs[0:32]  -> elements 0..159
    decode_trits(out, o + 160, d, b, i + 32, 16, 5)   # qs[32:48] -> elements 160..239
    decode_trits(out, o + 240, d, b, i + 48, 4, 4)    # qh[0:4]   -> elements 240..255


@njit(cache=True, inline="always")
def decode_tq2_block(out, o, b, i):
    """out[o:o+256] <- the TQ2_0 block at b[i:i+66]."""
    d = f16_at(b, i + TQ2_BYTES - 2)
    for h in range(2):
        for s in range(4):
            for j in range(32):
                q = (np.intp(b[i + 32 * h + j]) >> (2 * s)) & 3
                out[o + 128 * h + 32 * s + j] = d * f32(q - 1)


dequantize_tq1_0, matvec_tq1_0, matmul_tq1_0 = make_block_kernels(GGMLQuantizationType.TQ1_0,
                                                                  decode_tq1_block)
dequantize_tq2_0, matvec_tq2_0, matmul_tq2_0 = make_block_kernels(GGMLQuantizationType.TQ2_0,
                                                                  decode_tq2_block)


# ---------------------------------------------------------------- registration

register(QuantType(GGMLQuantizationType.TQ1_0, dequantize=dequantize_tq1_0,
                   matvec=matvec_tq1_0, matmul=matmul_tq1_0, quantize=None, batch_invariant=True))
register(QuantType(GGMLQuantizationType.TQ2_0, dequantize=dequantize_tq2_0,
                   matvec=matvec_tq2_0, matmul=matmul_tq2_0, quantize=None, batch_invariant=True))
