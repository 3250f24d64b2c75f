"""Quantizers for IQ4_NL and IQ4_XS, byte-identical to llama.cpp's ggml_quantize_chunk.

Without an importance matrix llama.cpp weights each value by x**2 and, per
32-group, searches 16 scales (the one mapping the extreme value to the
table's -127 end, then 15 more around it: index offsets -7..7) for the best
weighted least-squares fit of x to scale * KVALUES[q].

IQ4_NL stores that group scale as the block's half `d`.  IQ4_XS quantizes
the 8 group scales of a super-block to 6 bits against d = -max_scale / 32,
then re-picks every index against its group's quantized scale.  Note: the
chunk path (what llama-quantize writes) runs the 15-point search for IQ4_NL;
ggml's `quantize_row_iq4_nl_ref` does not, so the two differ.  We match the
chunk path.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from numba import njit, prange

from .float_bits import nearest_int, put_f16
from .iquants import KVALUES, KVALUES_F32  # iquants imports this module only after defining them
from .kquant_search import GROUP_MAX_EPS, signed_extremes, to_groups
from .quantizer_kit import row_quantizer

f32 = np.float32
_KV = KVALUES_F32
_STEPS = np.diff(_KV)  # exact small integers: partial sums of them are exact in float32
_NTRY = 7  # the scale sweep covers index offsets -_NTRY.._NTRY
_jit = dict(cache=True, error_model="numpy")


@njit(**_jit, inline="always")
def nearest_index(v):
    """Index of the KVALUES entry nearest to v (float32); a tie goes to the upper entry.

    llama.cpp bisects to the bracketing pair (a, b) and takes a iff v - a < b - v.
    Counting the pairs for which that test fails gives the same index without
    branches (for pairs below v it always fails, above v it never does: float
    subtraction keeps signs), so the loop over groups vectorizes.
    """
    k = 0
    for j in range(15):
        k += not (v - _KV[j] < _KV[j + 1] - v)
    return k


@njit(**_jit, inline="always")
def nearest_value(v):
    """KVALUES[nearest_index(v)] as float32, summed from the table's steps (no gather)."""
    q = _KV[0]
    for j in range(15):
        q += _STEPS[j] if not (v - _KV[j] < _KV[j + 1] - v) else f32(0.0)
    return q


@njit(**_jit)
def group_scales(d, xt):
    """Best scale d[g] for xt[:, g] ~ d[g] * KVALUES[q], all groups at once; 0 for all-zero groups.

    d: f32[G] out; xt: f32[32, G] (group-major row, see kquant_search.py).
    Error weights x**2; candidates: the scale mapping the extreme value to -127,
    then -127 + k for k in -7..7 mapped to it, each refined by least squares.
    """
    gs, G = xt.shape
    work = np.empty((6, G), np.float32)
    vmax, amax, iscale, sumqx, sumq2, best = work[0], work[1], work[2], work[3], work[4], work[5]
    signed_extremes(vmax, amax, xt)
    for k in range(2 * _NTRY + 2):  # the starting point, then offsets -_NTRY.._NTRY
        for g in range(G):
            iscale[g] = f32(1.0) / (-vmax[g] / _KV[0]) if k == 0 else f32(k - 1 - _NTRY + KVALUES[0]) / vmax[g]
            sumqx[g] = 0.0
            sumq2[g] = 0.0
        for i in range(gs):
            for g in range(G):
                v = xt[i, g]
                q = nearest_value(iscale[g] * v)
                w = v * v
                sumqx[g] += w * q * v
                sumq2[g] += w * q * q
        for g in range(G):
            if k == 0:
                d[g] = sumqx[g] / sumq2[g] if sumq2[g] > f32(0.0) else f32(0.0)
                best[g] = d[g] * sumqx[g]
            elif sumq2[g] > f32(0.0) and sumqx[g] * sumqx[g] > best[g] * sumq2[g]:
                d[g] = sumqx[g] / sumq2[g]
                best[g] = d[g] * sumqx[g]
    for g in range(G):
        if amax[g] < GROUP_MAX_EPS:
            d[g] = 0.0


@njit(**_jit, inline="always")
def _pack_group(qs, xt, g, iscale):
    """qs: u8[16] <- indices nearest to iscale * xt[:, g]; element j low nibble, j + 16 high."""
    for j in range(16):
        qs[j] = nearest_index(iscale * xt[j, g]) | (nearest_index(iscale * xt[j + 16, g]) << 4)


@njit(**_jit, parallel=True)
def quantize_rows_iq4_nl(out, x):
    """out: u8[rows, n // 32 * 18]; x: f32[rows, n], n a multiple of 32."""
    G = x.shape[1] // 32
    for r in prange(x.shape[0]):
        xt = np.empty((32, G), np.float32)
        to_groups(xt, x[r])
        d = np.empty(G, np.float32)
        group_scales(d, xt)
        for k in range(G):
            blk = out[r, 18 * k:18 * k + 18]
            put_f16(blk, 0, d[k])
            _pack_group(blk[2:18], xt, k, f32(1.0) / d[k] if d[k] != f32(0.0) else f32(0.0))


@njit(**_jit)
def _finish_block_iq4_xs(blk, xt, scales, g0):
    """blk: u8[136] out from the group scales of groups g0..g0+7 (xt f32[32, G], scales f32[G])."""
    max_scale = f32(0.0)
    amax_scale = f32(0.0)
    for j in range(8):
        if abs(scales[g0 + j]) > amax_scale:
            amax_scale = abs(scales[g0 + j])
            max_scale = scales[g0 + j]
    d = -max_scale / f32(32.0)
    put_f16(blk, 0, d)
    inv_d = f32(1.0) / d if d != f32(0.0) else f32(0.0)
    scales_h = 0
    for j in range(8):
        l = min(31, max(-32, nearest_int(inv_d * scales[g0 + j])))
        dl = d * f32(l)
        _pack_group(blk[8 + 16 * j:24 + 16 * j], xt, g0 + j, f32(1.0) / dl if dl != f32(0.0) else f32(0.0))
        l += 32
        if j % 2 == 0:
            blk[4 + j // 2] = l & 0xF
        else:
            blk[4 + j // 2] |= (l & 0xF) << 4
        scales_h |= (l >> 4) << (2 * j)
    blk[2] = scales_h & 0xFF
    blk[3] = scales_h >> 8


@njit(**_jit, parallel=True)
def quantize_rows_iq4_xs(out, x):
    """out: u8[rows, n // 256 * 136]; x: f32[rows, n], n a multiple of 256."""
    G = x.shape[1] // 32
    for r in prange(x.shape[0]):
        xt = np.empty((32, G), np.float32)
        to_groups(xt, x[r])
        scales = np.empty(G, np.float32)
        group_scales(scales, xt)
        for k in range(G // 8):
            _finish_block_iq4_xs(out[r, 136 * k:136 * k + 136], xt, scales, 8 * k)


_ORACLE = "llama.cpp's ggml_quantize_chunk without imatrix"
quantize_iq4_nl = row_quantizer(GGMLQuantizationType.IQ4_NL, quantize_rows_iq4_nl, _ORACLE)
quantize_iq4_xs = row_quantizer(GGMLQuantizationType.IQ4_XS, quantize_rows_iq4_xs, _ORACLE)
