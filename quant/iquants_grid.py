"""The grid I-quants IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M: layouts, dequantize,
matvec, matmul.

Each index selects a row of a fixed grid of 8 (IQ2, IQ1) or 4 (IQ3) non-negative values; a
sign per weight (IQ2, IQ3) or a shift delta = ±1/8 per 8 weights (IQ1) and a scale per group
complete it.  All blocks hold 256 weights; d is the block's f16 scale, all other fields are
little-endian.

    IQ2_XXS  66 B: d f16 | 8 x (grid u8[4] | aux u32)
        aux: 4 sign indices (bits 7l..7l+6, l = 0..3) and the scale ls (bits 28..31) of
        32 weights; weight 8l + j = d * (0.5 + ls) / 4 * grid[l][j] * sign j of KSIGNS[index l]
    IQ2_XS   74 B: d f16 | qs u16[32] | scales[8]
        qs[k]: grid index (bits 0..8, 512-row grid) and sign index (bits 9..15) of weights
        8k..8k+7; nibble k // 2 of scales (low nibble first) scales 16 weights as in IQ2_XXS
    IQ2_S    82 B: d f16 | qs[32] | signs[32] | qh[8] | scales[8]
        grid index of weights 8k..8k+7: qs[k] | bits 2(k%4)..+1 of qh[k // 4] << 8 (1024 rows);
        sign of weight e: bit e % 8 of signs[e // 8]; scales as in IQ2_XS
    IQ3_XXS  98 B: d f16 | qs[64] | aux u32[8]
        qs[m]: grid row (4 values) of weights 4m..4m+3; aux as in IQ2_XXS for 32 weights,
        with the scale d * (0.5 + ls) / 2
    IQ3_S   110 B: d f16 | qs[64] | qh[8] | signs[32] | scales[4]
        grid index of weights 4m..4m+3: qs[m] | bit m % 8 of qh[m // 8] << 8 (512 rows);
        signs as in IQ2_S; nibble g of scales scales 32 weights by d * (1 + 2 * nibble)
    IQ1_S    50 B: d f16 | qs[32] | qh u16[8]
        qh[g] for 32 weights: grid index high bits (3 bits per 8 weights, bits 3l..3l+2),
        scale s (bits 12..14) and the sign of delta (bit 15); weight = d * (2s + 1) * (grid + delta)
    IQ1_M    56 B: qs[32] | qh[16] | scales u16[4]
        nibble k of qh (low first): grid index high bits (0..2) and delta's sign (3) of weights
        8k..8k+7; 3-bit scale s of 16 weights at bits 3(i%4) of scales[i // 4], the scale
        d * (2s + 1); d's 16 bits are the top nibbles of scales[0..3] (lowest first)

The grids and KSIGNS (a 7-bit sign pattern with its parity bit added as bit 7) are gguf-py's,
read at import.  The decoders reproduce gguf-py's float32 order ((scale * grid) * ±1, and
scale * (grid + delta)) so `dequantize` is bit-identical to gguf.quants.dequantize.  matvec /
matmul are tquants.py's block kernels (strict float32, lane sums in a fixed order): matmul is
batch-invariant, both are tested against dequantize(W) @ x.
"""
from __future__ import annotations

import gguf
import numpy as np
from gguf import GGMLQuantizationType
from numba import njit

from .float_bits import f16_at, f16_bits_to_f32
from .registry import QuantType, register
from .block_kernels import make_block_kernels

f32 = np.float32
T = GGMLQuantizationType


def _grid(cls) -> np.ndarray:
    """gguf-py's grid for a type class as f32[rows, values per row] (it unpacks it on demand)."""
    cls.init_grid()
    return np.ascontiguousarray(cls.grid.reshape(cls.grid_shape), dtype=np.float32)


GRID_IQ2_XXS = _grid(gguf.quants.IQ2_XXS)  # 256 x 8
GRID_IQ2_XS = _grid(gguf.quants.IQ2_XS)    # 512 x 8
GRID_IQ2_S = _grid(gguf.quants.IQ2_S)      # 1024 x 8
GRID_IQ3_XXS = _grid(gguf.quants.IQ3_XXS)  # 256 x 4
GRID_IQ3_S = _grid(gguf.quants.IQ3_S)      # 512 x 4
GRID_IQ1 = _grid(gguf.quants.IQ1_S)        # 2048 x 8, IQ1_M's too
KSIGNS = np.frombuffer(gguf.quants.IQ2_XXS.ksigns, dtype=np.uint8).copy()
_SIGN = np.array([1.0, -1.0], dtype=np.float32)  # sign bit -> factor, as gguf-py multiplies
IQ1_DELTA = np.float32(gguf.quants.IQ1_S.delta)  # 0.125


@njit(cache=True, inline="always")
def u16_at(b, i):
    return np.intp(b[i]) | (np.intp(b[i + 1]) << 8)


@njit(cache=True, inline="always")
def u32_at(b, i):
    return u16_at(b, i) | (u16_at(b, i + 2) << 16)


@njit(cache=True, inline="always")
def put_signed_row(out, o, scale, grid, idx, signs):
    """out[o + j] = (scale * grid[idx, j]) * ±1, minus where bit j of `signs` is set."""
    for j in range(grid.shape[1]):
        out[o + j] = scale * grid[idx, j] * _SIGN[(signs >> j) & 1]


@njit(cache=True, inline="always")
def put_shifted_row(out, o, scale, idx, delta):
    """out[o:o+8] = scale * (IQ1 grid row idx + delta)."""
    for j in range(8):
        out[o + j] = scale * (GRID_IQ1[idx, j] + delta)


@njit(cache=True, inline="always")
def nibble(b, i, k):
    """Nibble k of the bytes at b[i:] (low nibble of each byte first)."""
    return (np.intp(b[i + k // 2]) >> (4 * (k % 2))) & 0xF


@njit(cache=True, inline="always")
def iq2_scale(d, ls):
    """The IQ2 group scale d * (0.5 + ls) / 4 in gguf-py's float32 order."""
    return d * (f32(0.5) + f32(ls)) * f32(0.25)


@njit(cache=True, inline="always")
def decode_iq2_xxs_block(out, o, b, i):
    """out[o:o+256] <- the IQ2_XXS block at b[i:i+66]."""
    d = f16_at(b, i)
    for g in range(8):
        q = i + 2 + 8 * g
        aux = u32_at(b, q + 4)
        scale = iq2_scale(d, aux >> 28)
        for l in range(4):
            put_signed_row(out, o + 32 * g + 8 * l, scale, GRID_IQ2_XXS, np.intp(b[q + l]),
                           np.intp(KSIGNS[(aux >> (7 * l)) & 127]))


@njit(cache=True, inline="always")
def decode_iq2_xs_block(out, o, b, i):
    """out[o:o+256] <- the IQ2_XS block at b[i:i+74]."""
    d = f16_at(b, i)
    for k in range(32):
        v = u16_at(b, i + 2 + 2 * k)
        scale = iq2_scale(d, nibble(b, i + 66, k // 2))
        put_signed_row(out, o + 8 * k, scale, GRID_IQ2_XS, v & 511, np.intp(KSIGNS[v >> 9]))


@njit(cache=True, inline="always")
def decode_iq2_s_block(out, o, b, i):
    """out[o:o+256] <- the IQ2_S block at b[i:i+82]."""
    d = f16_at(b, i)
    for k in range(32):
        idx = np.intp(b[i + 2 + k]) | (((np.intp(b[i + 66 + k // 4]) >> (2 * (k % 4))) & 3) << 8)
        scale = iq2_scale(d, nibble(b, i + 74, k // 2))
        put_signed_row(out, o + 8 * k, scale, GRID_IQ2_S, idx, np.intp(b[i + 34 + k]))


@njit(cache=True, inline="always")
def decode_iq3_xxs_block(out, o, b, i):
    """out[o:o+256] <- the IQ3_XXS block at b[i:i+98]."""
    d = f16_at(b, i)
    for g in range(8):
        aux = u32_at(b, i + 66 + 4 * g)
        scale = d * (f32(0.5) + f32(aux >> 28)) * f32(0.5)
        for l in range(4):
            signs = np.intp(KSIGNS[(aux >> (7 * l)) & 127])
            q = i + 2 + 8 * g + 2 * l  # two 4-value grid rows per 8 signs
            put_signed_row(out, o + 32 * g + 8 * l, scale, GRID_IQ3_XXS, np.intp(b[q]), signs)
            put_signed_row(out, o + 32 * g + 8 * l + 4, scale, GRID_IQ3_XXS, np.intp(b[q + 1]),
                           signs >> 4)


@njit(cache=True, inline="always")
def decode_iq3_s_block(out, o, b, i):
    """out[o:o+256] <- the IQ3_S block at b[i:i+110]."""
    d = f16_at(b, i)
    for g in range(8):
        scale = d * f32(1 + 2 * nibble(b, i + 106, g))
        for m in range(8 * g, 8 * g + 8):
            idx = np.intp(b[i + 2 + m]) | (((np.intp(b[i + 66 + m // 8]) >> (m % 8)) & 1) << 8)
            signs = np.intp(b[i + 74 + m // 2]) >> (4 * (m % 2))
            put_signed_row(out, o + 4 * m, scale, GRID_IQ3_S, idx, signs)


@njit(cache=True, inline="always")
def decode_iq1_s_block(out, o, b, i):
    """out[o:o+256] <- the IQ1_S block at b[i:i+50]."""
    d = f16_at(b, i)
    for g in range(8):
        h = u16_at(b, i + 34 + 2 * g)
        scale = d * f32(2 * ((h >> 12) & 7) + 1)
        delta = -IQ1_DELTA if h & 0x8000 else IQ1_DELTA
        for l in range(4):
            idx = np.intp(b[i + 2 + 4 * g + l]) | (((h >> (3 * l)) & 7) << 8)
            put_shifted_row(out, o + 32 * g + 8 * l, scale, idx, delta)


@njit(cache=True, inline="always")
def decode_iq1_m_block(out, o, b, i):
    """out[o:o+256] <- the IQ1_M block at b[i:i+56]."""
    s = i + 48  # scales u16[4]
    d = f16_bits_to_f32(((u16_at(b, s) >> 12) & 0xF) | ((u16_at(b, s + 2) >> 8) & 0xF0)
                        | ((u16_at(b, s + 4) >> 4) & 0xF00) | (u16_at(b, s + 6) & 0xF000))
    for k in range(32):
        sk = k // 2  # 16 weights per scale
        scale = d * f32(2 * ((u16_at(b, s + 2 * (sk // 4)) >> (3 * (sk % 4))) & 7) + 1)
        h = nibble(b, i + 32, k)
        delta = -IQ1_DELTA if h & 8 else IQ1_DELTA
        put_shifted_row(out, o + 8 * k, scale, np.intp(b[i + k]) | ((h & 7) << 8), delta)


# ---------------------------------------------------------------- registration

DECODERS = {T.IQ2_XXS: decode_iq2_xxs_block, T.IQ2_XS: decode_iq2_xs_block, T.IQ2_S: decode_iq2_s_block,
            T.IQ3_XXS: decode_iq3_xxs_block, T.IQ3_S: decode_iq3_s_block, T.IQ1_S: decode_iq1_s_block,
            T.IQ1_M: decode_iq1_m_block}

for _qtype, _decode in DECODERS.items():
    _dequantize, _matvec, _matmul = make_block_kernels(_qtype, _decode)
    register(QuantType(_qtype, dequantize=_dequantize, matvec=_matvec, matmul=_matmul, quantize=None,
                       batch_invariant=True))
