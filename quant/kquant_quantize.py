"""Quantizers for the K-quant types Q2_K..Q6_K, byte-identical to llama.cpp.

llama-quantize without an importance matrix writes what ggml_quantize_chunk
produces, which for every K type is the reference row quantizer
(`quantize_row_q*_K_ref`).  These kernels reproduce it exactly: same scale
searches (kquant_search.py), same float32 operation order, same half-precision
rounding of the super-block scales, and the rounded scales (not the exact
ones) are what the final levels are computed against, as in llama.cpp.

Super-blocks hold 256 weights.  Layouts (bytes):
    Q2_K  84: scales[16] (4-bit scale | 4-bit min << 4), qs[64], d, dmin
    Q3_K 110: hmask[32], qs[64], scales[12] (16 x 6-bit, signed - 32), d
    Q4_K 144: d, dmin, scales[12] (8 x 6-bit scale + 8 x 6-bit min), qs[128]
    Q5_K 176: d, dmin, scales[12], qh[32], qs[128]
    Q6_K 210: ql[128], qh[64], scales[16] (int8), d
d / dmin are little-endian IEEE halves.

Public: quantize_q2_k .. quantize_q6_k, each f32[rows, n] -> u8[rows, row_bytes];
they are attached to the registry at import.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from numba import njit, prange

from .float_bits import nearest_int, put_f16
from .kquant_search import (GROUP_MAX_EPS, clamp, make_affine_quants, make_q3_quants,
                            make_symmetric_quants, to_groups)
from .quantizer_kit import row_quantizer
from .registry import register_quantizer

f32 = np.float32
QK_K = 256
_jit = dict(cache=True, error_model="numpy")

# The searches run on a whole row at once, group-major: L[i, g] is the level of
# element i of group g (see kquant_search.py); super-block b owns groups
# b * (256 // group) onwards.


@njit(**_jit, inline="always")
def _level(L, g0, e):
    """Level of element e (0..255) of the super-block whose first group is g0."""
    gs = L.shape[0]
    return np.intp(L[e % gs, g0 + e // gs])


@njit(**_jit)
def _pack_2bit(qs, L, g0):
    """qs: u8[64] <- levels 0..3; byte l of each 128-run holds elements l, l+32, l+64, l+96."""
    for j in range(0, QK_K, 128):
        for l in range(32):
            qs[j // 4 + l] = (_level(L, g0, j + l) | (_level(L, g0, j + l + 32) << 2)
                              | (_level(L, g0, j + l + 64) << 4) | (_level(L, g0, j + l + 96) << 6))


@njit(**_jit)
def _affine_levels(L, xt, g, d, dmin, sc, mn, nmax):
    """Final levels of group g against its stored (rounded) scale and min.

    L: u8[gs, G]; xt: f32[gs, G]; d, dmin: f32 super-block halves; sc, mn: int
    group scale and min.  A zero scale keeps the searched levels, as llama.cpp does.
    """
    dl = d * f32(sc)
    if dl == f32(0.0):
        return
    ml = dmin * f32(mn)
    for i in range(L.shape[0]):
        L[i, g] = clamp(nearest_int((xt[i, g] + ml) / dl), 0, nmax)


@njit(**_jit)
def _symmetric_levels(L, xt, g, dl, nmax):
    """L[:, g] = clamp(round(x / dl), -nmax, nmax - 1) + nmax; a zero dl keeps L."""
    if dl == f32(0.0):
        return
    for i in range(L.shape[0]):
        L[i, g] = clamp(nearest_int(xt[i, g] / dl), -nmax, nmax - 1) + nmax


# ---------------------------------------------------------------- Q2_K

@njit(**_jit)
def _finish_block_q2_k(blk, L, xt, scales, mins, g0):
    """blk: u8[84] out from the searched groups g0..g0+15 (L u8[16, G], xt, scales, mins)."""
    max_scale = f32(0.0)
    max_min = f32(0.0)
    for j in range(16):
        if scales[g0 + j] > max_scale:
            max_scale = scales[g0 + j]
        if mins[g0 + j] > max_min:
            max_min = mins[g0 + j]
    sc = blk[0:16]
    if max_scale > f32(0.0):
        iscale = f32(15.0) / max_scale
        for j in range(16):
            sc[j] = nearest_int(iscale * scales[g0 + j]) & 0xFF
        d = put_f16(blk, 80, max_scale / f32(15.0))
    else:
        sc[:] = 0
        d = put_f16(blk, 80, f32(0.0))
    if max_min > f32(0.0):
        iscale = f32(15.0) / max_min
        for j in range(16):
            sc[j] = (sc[j] | (nearest_int(iscale * mins[g0 + j]) << 4)) & 0xFF
        dmin = put_f16(blk, 82, max_min / f32(15.0))
    else:
        dmin = put_f16(blk, 82, f32(0.0))
    for j in range(16):
        s = np.intp(sc[j])
        _affine_levels(L, xt, g0 + j, d, dmin, s & 0xF, s >> 4, 3)
    _pack_2bit(blk[16:80], L, g0)


@njit(**_jit, parallel=True)
def quantize_rows_q2_k(out, x):
    """out: u8[rows, n // 256 * 84]; x: f32[rows, n], n a multiple of 256."""
    G = x.shape[1] // 16
    for r in prange(x.shape[0]):
        xt = np.empty((16, G), np.float32)
        to_groups(xt, x[r])
        weights = np.abs(xt)
        L = np.empty((16, G), np.uint8)
        scales = np.empty(G, np.float32)
        mins = np.empty(G, np.float32)
        make_affine_quants(L, scales, mins, xt, weights, 3, f32(-0.5), f32(0.1), 15, True)
        for b in range(G // 16):
            _finish_block_q2_k(out[r, 84 * b:84 * b + 84], L, xt, scales, mins, 16 * b)


# ---------------------------------------------------------------- Q3_K

@njit(**_jit)
def _finish_block_q3_k(blk, L, xt, scales, g0):
    """blk: u8[110] out from the searched groups g0..g0+15 (L i8[16, G], xt, scales)."""
    max_scale = f32(0.0)
    amax = f32(0.0)
    for j in range(16):
        if abs(scales[g0 + j]) > amax:
            amax = abs(scales[g0 + j])
            max_scale = scales[g0 + j]
    sc = blk[96:108]
    sc[:] = 0
    if max_scale != f32(0.0):
        iscale = f32(-32.0) / max_scale
        for j in range(16):
            l = ((nearest_int(iscale * scales[g0 + j]) + 128) & 0xFF) - 128  # C stores it in an int8
            l = clamp(l, -32, 31) + 32
            if j < 8:
                sc[j] = l & 0xF
            else:
                sc[j - 8] |= (l & 0xF) << 4
            sc[j % 4 + 8] |= (l >> 4) << (2 * (j // 4))
        d = put_f16(blk, 108, f32(1.0) / iscale)
    else:
        d = put_f16(blk, 108, f32(0.0))
    for j in range(16):
        low = np.intp(sc[j]) & 0xF if j < 8 else np.intp(sc[j - 8]) >> 4
        s = (low | ((np.intp(sc[8 + j % 4]) >> (2 * (j // 4))) & 3) << 4) - 32
        _symmetric_levels(L, xt, g0 + j, d * f32(s), 4)
    # the high bit of level e goes to bit e // 32 of hmask[e % 32]; qs keeps the low 2 bits
    hmask = blk[0:32]
    hmask[:] = 0
    for e in range(QK_K):
        i, g = e % 16, g0 + e // 16
        if L[i, g] > 3:
            hmask[e % 32] |= 1 << (e // 32)
            L[i, g] -= 4
    _pack_2bit(blk[32:96], L, g0)


@njit(**_jit, parallel=True)
def quantize_rows_q3_k(out, x):
    """out: u8[rows, n // 256 * 110]; x: f32[rows, n], n a multiple of 256."""
    G = x.shape[1] // 16
    for r in prange(x.shape[0]):
        xg = x[r].reshape(G, 16)  # Q3_K searches group by group (see kquant_search.py)
        Lg = np.empty((G, 16), np.int8)
        scales = np.empty(G, np.float32)
        for g in range(G):
            scales[g] = make_q3_quants(Lg[g], xg[g], 4)
        L = np.ascontiguousarray(Lg.T)  # group-major, as the finishing code of every type expects
        xt = np.empty((16, G), np.float32)
        to_groups(xt, x[r])
        for b in range(G // 16):
            _finish_block_q3_k(out[r, 110 * b:110 * b + 110], L, xt, scales, 16 * b)


# ---------------------------------------------------------------- Q4_K / Q5_K

@njit(**_jit, inline="always")
def _scale_min_k4(sc, j):
    """6-bit (scale, min) of group j from the 12 packed bytes of Q4_K / Q5_K."""
    a = np.intp(sc[j])
    if j < 4:
        return a & 63, np.intp(sc[j + 4]) & 63
    b = np.intp(sc[j + 4])
    return (b & 0xF) | ((np.intp(sc[j - 4]) >> 6) << 4), (b >> 4) | ((a >> 6) << 4)


@njit(**_jit)
def _search_groups_of_32(L, scales, mins, xt, xrow, nmax, rmin, nstep):
    """Q4_K / Q5_K group search over a row: weights rms(group) + |x|.

    L: u8[32, G], scales, mins: f32[G] out; xt: f32[32, G] out (the row, group-major);
    xrow: f32[32 * G]; nmax, nstep: int; rmin: f32.
    """
    to_groups(xt, xrow)
    G = xt.shape[1]
    sum_x2 = np.zeros(G, np.float32)
    for i in range(32):
        for g in range(G):
            sum_x2[g] += xt[i, g] * xt[i, g]
    weights = np.empty((32, G), np.float32)
    for i in range(32):
        for g in range(G):
            weights[i, g] = np.sqrt(sum_x2[g] / f32(32.0)) + abs(xt[i, g])
    make_affine_quants(L, scales, mins, xt, weights, nmax, rmin, f32(0.1), nstep, False)


@njit(**_jit)
def _finish_head_k4(head, L, xt, scales, mins, g0, nmax):
    """Q4_K / Q5_K head (d, dmin, 12 scale bytes: u8[16] out) and final levels of groups g0..g0+7."""
    max_scale = f32(0.0)
    max_min = f32(0.0)
    for j in range(8):
        if scales[g0 + j] > max_scale:
            max_scale = scales[g0 + j]
        if mins[g0 + j] > max_min:
            max_min = mins[g0 + j]
    inv_scale = f32(63.0) / max_scale if max_scale > f32(0.0) else f32(0.0)
    inv_min = f32(63.0) / max_min if max_min > f32(0.0) else f32(0.0)
    sc = head[4:16]
    for j in range(8):
        ls = min(63, nearest_int(inv_scale * scales[g0 + j]) & 0xFF)  # C keeps it in a uint8
        lm = min(63, nearest_int(inv_min * mins[g0 + j]) & 0xFF)
        if j < 4:
            sc[j] = ls
            sc[j + 4] = lm
        else:
            sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
            sc[j - 4] |= (ls >> 4) << 6
            sc[j] |= (lm >> 4) << 6
    d = put_f16(head, 0, max_scale / f32(63.0))
    dmin = put_f16(head, 2, max_min / f32(63.0))
    for j in range(8):
        s, m = _scale_min_k4(sc, j)
        _affine_levels(L, xt, g0 + j, d, dmin, s, m, nmax)


@njit(**_jit, parallel=True)
def quantize_rows_q4_k(out, x):
    """out: u8[rows, n // 256 * 144]; x: f32[rows, n], n a multiple of 256."""
    G = x.shape[1] // 32
    for r in prange(x.shape[0]):
        xt = np.empty((32, G), np.float32)
        L = np.empty((32, G), np.uint8)
        scales = np.empty(G, np.float32)
        mins = np.empty(G, np.float32)
        _search_groups_of_32(L, scales, mins, xt, x[r], 15, f32(-1.0), 20)
        for b in range(G // 8):
            blk = out[r, 144 * b:144 * b + 144]
            _finish_head_k4(blk[0:16], L, xt, scales, mins, 8 * b, 15)
            # qs byte 32c + l: low nibble element 64c + l (group 2c), high 64c + 32 + l
            for c in range(4):
                for l in range(32):
                    blk[16 + 32 * c + l] = L[l, 8 * b + 2 * c] | (L[l, 8 * b + 2 * c + 1] << 4)


@njit(**_jit, parallel=True)
def quantize_rows_q5_k(out, x):
    """out: u8[rows, n // 256 * 176]; x: f32[rows, n], n a multiple of 256."""
    G = x.shape[1] // 32
    for r in prange(x.shape[0]):
        xt = np.empty((32, G), np.float32)
        L = np.empty((32, G), np.uint8)
        scales = np.empty(G, np.float32)
        mins = np.empty(G, np.float32)
        _search_groups_of_32(L, scales, mins, xt, x[r], 31, f32(-0.5), 15)
        for b in range(G // 8):
            blk = out[r, 176 * b:176 * b + 176]
            _finish_head_k4(blk[0:16], L, xt, scales, mins, 8 * b, 31)
            # low nibbles as Q4_K (qs at byte 48); the 5th bit of element 32j + l is bit j of qh[l]
            for l in range(32):
                qh = 0
                for j in range(8):
                    qh |= (np.intp(L[l, 8 * b + j]) >> 4) << j
                blk[16 + l] = qh
            for c in range(4):
                for l in range(32):
                    blk[48 + 32 * c + l] = ((L[l, 8 * b + 2 * c] & 0xF)
                                            | ((L[l, 8 * b + 2 * c + 1] & 0xF) << 4))


# ---------------------------------------------------------------- Q6_K

@njit(**_jit)
def _finish_block_q6_k(blk, L, xt, scales, g0):
    """blk: u8[210] out from the searched groups g0..g0+15 (L u8[16, G], xt, scales)."""
    max_scale = f32(0.0)
    max_abs = f32(0.0)
    for j in range(16):
        if abs(scales[g0 + j]) > max_abs:
            max_abs = abs(scales[g0 + j])
            max_scale = scales[g0 + j]
    if max_abs < GROUP_MAX_EPS:
        blk[:] = 0
        return
    iscale = f32(-128.0) / max_scale
    d = put_f16(blk, 208, f32(1.0) / iscale)
    for j in range(16):
        q = ((min(127, nearest_int(iscale * scales[g0 + j])) + 128) & 0xFF) - 128  # stored as int8
        blk[192 + j] = q & 0xFF
        _symmetric_levels(L, xt, g0 + j, d * f32(q), 32)
    # ql byte 64h + l: element 128h + l (low nibble) and 128h + 64 + l (high);
    # ql byte 64h + 32 + l: elements 128h + 32 + l and 128h + 96 + l;
    # qh byte 32h + l: top 2 bits of elements 128h + 32k + l at bits 2k
    for h in range(2):
        for l in range(32):
            e = 128 * h + l
            a, b, c, f = _level(L, g0, e), _level(L, g0, e + 32), _level(L, g0, e + 64), _level(L, g0, e + 96)
            blk[64 * h + l] = (a & 0xF) | ((c & 0xF) << 4)
            blk[64 * h + 32 + l] = (b & 0xF) | ((f & 0xF) << 4)
            blk[128 + 32 * h + l] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((f >> 4) << 6)


@njit(**_jit, parallel=True)
def quantize_rows_q6_k(out, x):
    """out: u8[rows, n // 256 * 210]; x: f32[rows, n], n a multiple of 256."""
    G = x.shape[1] // 16
    for r in prange(x.shape[0]):
        xt = np.empty((16, G), np.float32)
        to_groups(xt, x[r])
        L = np.empty((16, G), np.uint8)
        scales = np.empty(G, np.float32)
        make_symmetric_quants(L, scales, xt, 32)
        for b in range(G // 16):
            _finish_block_q6_k(out[r, 210 * b:210 * b + 210], L, xt, scales, 16 * b)


# ---------------------------------------------------------------- public API

_ORACLE = "llama.cpp's reference quantizer (ggml_quantize_chunk without imatrix)"

quantize_q2_k = row_quantizer(GGMLQuantizationType.Q2_K, quantize_rows_q2_k, _ORACLE)
quantize_q3_k = row_quantizer(GGMLQuantizationType.Q3_K, quantize_rows_q3_k, _ORACLE)
quantize_q4_k = row_quantizer(GGMLQuantizationType.Q4_K, quantize_rows_q4_k, _ORACLE)
quantize_q5_k = row_quantizer(GGMLQuantizationType.Q5_K, quantize_rows_q5_k, _ORACLE)
quantize_q6_k = row_quantizer(GGMLQuantizationType.Q6_K, quantize_rows_q6_k, _ORACLE)

QUANTIZERS = {
    GGMLQuantizationType.Q2_K: quantize_q2_k,
    GGMLQuantizationType.Q3_K: quantize_q3_k,
    GGMLQuantizationType.Q4_K: quantize_q4_k,
    GGMLQuantizationType.Q5_K: quantize_q5_k,
    GGMLQuantizationType.Q6_K: quantize_q6_k,
}

for _qtype, _fn in QUANTIZERS.items():
    register_quantizer(_qtype, _fn)
