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
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from numba import njit, prange

from .float_bits import f16_bits_to_f32, f32_to_f16_bits, nearest_int
from .kquant_search import GROUP_MAX_EPS, make_affine_quants, make_q3_quants, make_symmetric_quants
from .registry import register_quantizer

f32 = np.float32
QK_K = 256
_jit = dict(cache=True, error_model="numpy")


@njit(**_jit, inline="always")
def _store_f16(blk, off, value):
    """Write `value` as a little-endian half at blk[off]; return the stored value as float32."""
    h = f32_to_f16_bits(value)
    blk[off] = h & 0xFF
    blk[off + 1] = h >> 8
    return f16_bits_to_f32(h)


@njit(**_jit, inline="always")
def _clamp(v, lo, hi):
    return lo if v < lo else (hi if v > hi else v)


@njit(**_jit)
def _pack_2bit(qs, L):
    """qs: u8[64] <- L: [256] levels 0..3; byte l of each 128-run holds elements l, l+32, l+64, l+96."""
    for j in range(0, QK_K, 128):
        for l in range(32):
            qs[j // 4 + l] = (L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4)
                              | (L[j + l + 96] << 6))


@njit(**_jit)
def _affine_levels(L, x, d, dmin, sc, mn, group, nmax):
    """Final levels of one group against its stored (rounded) scale and min.

    L: u8[group] out; x: f32[group]; d, dmin: f32 super-block halves;
    sc, mn: int 4/6-bit group scale and min.  A zero scale keeps the levels
    from the search, as llama.cpp does.
    """
    dl = d * f32(sc)
    if dl == f32(0.0):
        return
    ml = dmin * f32(mn)
    for i in range(group):
        L[i] = _clamp(nearest_int((x[i] + ml) / dl), 0, nmax)


@njit(**_jit)
def _symmetric_levels(L, x, dl, nmax):
    """L[i] = clamp(round(x[i] / dl), -nmax, nmax - 1) + nmax; a zero dl keeps L."""
    if dl == f32(0.0):
        return
    for i in range(x.size):
        L[i] = _clamp(nearest_int(x[i] / dl), -nmax, nmax - 1) + nmax


# ---------------------------------------------------------------- Q2_K

@njit(**_jit)
def _quantize_block_q2_k(blk, x, L, Laux, weights, scales, mins):
    """blk: u8[84] out; x: f32[256]; the rest is scratch (L u8[256], Laux u8[16],
    weights f32[16], scales f32[16], mins f32[16])."""
    max_scale = f32(0.0)
    max_min = f32(0.0)
    for j in range(16):
        xs = x[16 * j:16 * j + 16]
        for i in range(16):
            weights[i] = abs(xs[i])
        s, m = make_affine_quants(L[16 * j:16 * j + 16], Laux, xs, weights, 3,
                                  f32(-0.5), f32(0.1), 15, True)
        scales[j] = s
        mins[j] = m
        if s > max_scale:
            max_scale = s
        if m > max_min:
            max_min = m
    sc = blk[0:16]
    if max_scale > f32(0.0):
        iscale = f32(15.0) / max_scale
        for j in range(16):
            sc[j] = nearest_int(iscale * scales[j]) & 0xFF
        d = _store_f16(blk, 80, max_scale / f32(15.0))
    else:
        sc[:] = 0
        d = _store_f16(blk, 80, f32(0.0))
    if max_min > f32(0.0):
        iscale = f32(15.0) / max_min
        for j in range(16):
            sc[j] = (sc[j] | (nearest_int(iscale * mins[j]) << 4)) & 0xFF
        dmin = _store_f16(blk, 82, max_min / f32(15.0))
    else:
        dmin = _store_f16(blk, 82, f32(0.0))
    for j in range(16):
        s = np.intp(sc[j])
        _affine_levels(L[16 * j:16 * j + 16], x[16 * j:16 * j + 16], d, dmin, s & 0xF, s >> 4, 16, 3)
    _pack_2bit(blk[16:80], L)


@njit(**_jit, parallel=True)
def quantize_rows_q2_k(out, x):
    """out: u8[rows, n // 256 * 84]; x: f32[rows, n], n a multiple of 256."""
    nb = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        L = np.empty(QK_K, np.uint8)
        Laux = np.empty(16, np.uint8)
        weights = np.empty(16, np.float32)
        scales = np.empty(16, np.float32)
        mins = np.empty(16, np.float32)
        for b in range(nb):
            _quantize_block_q2_k(out[r, 84 * b:84 * b + 84], x[r, QK_K * b:QK_K * b + QK_K],
                                 L, Laux, weights, scales, mins)


# ---------------------------------------------------------------- Q3_K

@njit(**_jit)
def _quantize_block_q3_k(blk, x, L, scales):
    """blk: u8[110] out; x: f32[256]; scratch L i8[256], scales f32[16]."""
    max_scale = f32(0.0)
    amax = f32(0.0)
    for j in range(16):
        s = make_q3_quants(L[16 * j:16 * j + 16], x[16 * j:16 * j + 16], 4)
        scales[j] = s
        if abs(s) > amax:
            amax = abs(s)
            max_scale = s
    sc = blk[96:108]
    sc[:] = 0
    if max_scale != f32(0.0):
        iscale = f32(-32.0) / max_scale
        for j in range(16):
            l = ((nearest_int(iscale * scales[j]) + 128) & 0xFF) - 128  # C stores it in an int8
            l = _clamp(l, -32, 31) + 32
            if j < 8:
                sc[j] = l & 0xF
            else:
                sc[j - 8] |= (l & 0xF) << 4
            sc[j % 4 + 8] |= (l >> 4) << (2 * (j // 4))
        d = _store_f16(blk, 108, f32(1.0) / iscale)
    else:
        d = _store_f16(blk, 108, f32(0.0))
    for j in range(16):
        low = np.intp(sc[j]) & 0xF if j < 8 else np.intp(sc[j - 8]) >> 4
        s = (low | ((np.intp(sc[8 + j % 4]) >> (2 * (j // 4))) & 3) << 4) - 32
        _symmetric_levels(L[16 * j:16 * j + 16], x[16 * j:16 * j + 16], d * f32(s), 4)
    # high bit of level j goes to bit j // 32 of hmask[j % 32]
    hmask = blk[0:32]
    hmask[:] = 0
    for j in range(QK_K):
        if L[j] > 3:
            hmask[j % 32] |= 1 << (j // 32)
            L[j] -= 4
    _pack_2bit(blk[32:96], L)


@njit(**_jit, parallel=True)
def quantize_rows_q3_k(out, x):
    """out: u8[rows, n // 256 * 110]; x: f32[rows, n], n a multiple of 256."""
    nb = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        L = np.empty(QK_K, np.int8)
        scales = np.empty(16, np.float32)
        for b in range(nb):
            _quantize_block_q3_k(out[r, 110 * b:110 * b + 110], x[r, QK_K * b:QK_K * b + QK_K],
                                 L, scales)


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
def _affine_superblock_32(head, x, L, Laux, weights, scales, mins, nmax, rmin, nstep):
    """Scales, mins and levels of a Q4_K / Q5_K super-block (8 groups of 32).

    head: u8[16] out (d, dmin, 12 packed scale bytes); x: f32[256];
    L: u8[256] out (levels 0..nmax); Laux u8[32], weights f32[32],
    scales f32[8], mins f32[8]: scratch.  Group weights are rms(x) + |x|.
    """
    max_scale = f32(0.0)
    max_min = f32(0.0)
    for j in range(8):
        xs = x[32 * j:32 * j + 32]
        sum_x2 = f32(0.0)
        for i in range(32):
            sum_x2 += xs[i] * xs[i]
        av_x = np.sqrt(sum_x2 / f32(32.0))
        for i in range(32):
            weights[i] = av_x + abs(xs[i])
        s, m = make_affine_quants(L[32 * j:32 * j + 32], Laux, xs, weights, nmax,
                                  rmin, f32(0.1), nstep, False)
        scales[j] = s
        mins[j] = m
        if s > max_scale:
            max_scale = s
        if m > max_min:
            max_min = m
    inv_scale = f32(63.0) / max_scale if max_scale > f32(0.0) else f32(0.0)
    inv_min = f32(63.0) / max_min if max_min > f32(0.0) else f32(0.0)
    sc = head[4:16]
    for j in range(8):
        ls = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)  # C keeps it in a uint8
        lm = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
        if j < 4:
            sc[j] = ls
            sc[j + 4] = lm
        else:
            sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
            sc[j - 4] |= (ls >> 4) << 6
            sc[j] |= (lm >> 4) << 6
    d = _store_f16(head, 0, max_scale / f32(63.0))
    dmin = _store_f16(head, 2, max_min / f32(63.0))
    for j in range(8):
        s, m = _scale_min_k4(sc, j)
        _affine_levels(L[32 * j:32 * j + 32], x[32 * j:32 * j + 32], d, dmin, s, m, 32, nmax)


@njit(**_jit, parallel=True)
def quantize_rows_q4_k(out, x):
    """out: u8[rows, n // 256 * 144]; x: f32[rows, n], n a multiple of 256."""
    nb = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        L = np.empty(QK_K, np.uint8)
        Laux = np.empty(32, np.uint8)
        weights = np.empty(32, np.float32)
        scales = np.empty(8, np.float32)
        mins = np.empty(8, np.float32)
        for b in range(nb):
            blk = out[r, 144 * b:144 * b + 144]
            _affine_superblock_32(blk[0:16], x[r, QK_K * b:QK_K * b + QK_K], L, Laux, weights,
                                  scales, mins, 15, f32(-1.0), 20)
            qs = blk[16:144]
            for j in range(0, QK_K, 64):
                for l in range(32):
                    qs[j // 2 + l] = L[j + l] | (L[j + l + 32] << 4)


@njit(**_jit, parallel=True)
def quantize_rows_q5_k(out, x):
    """out: u8[rows, n // 256 * 176]; x: f32[rows, n], n a multiple of 256."""
    nb = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        L = np.empty(QK_K, np.uint8)
        Laux = np.empty(32, np.uint8)
        weights = np.empty(32, np.float32)
        scales = np.empty(8, np.float32)
        mins = np.empty(8, np.float32)
        for b in range(nb):
            blk = out[r, 176 * b:176 * b + 176]
            _affine_superblock_32(blk[0:16], x[r, QK_K * b:QK_K * b + QK_K], L, Laux, weights,
                                  scales, mins, 31, f32(-0.5), 15)
            # low 4 bits of levels j, j+32 of each 64-run share a qs byte; the
            # 5th bits go to qh[j] at bit 2 * run (and 2 * run + 1)
            qh = blk[16:48]
            qs = blk[48:176]
            qh[:] = 0
            for run in range(4):
                for j in range(32):
                    l1 = L[64 * run + j]
                    l2 = L[64 * run + j + 32]
                    qh[j] |= ((l1 >> 4) << (2 * run)) | ((l2 >> 4) << (2 * run + 1))
                    qs[32 * run + j] = (l1 & 0xF) | ((l2 & 0xF) << 4)


# ---------------------------------------------------------------- Q6_K

@njit(**_jit)
def _quantize_block_q6_k(blk, x, L, scales):
    """blk: u8[210] out; x: f32[256]; scratch L u8[256], scales f32[16]."""
    max_scale = f32(0.0)
    max_abs = f32(0.0)
    for j in range(16):
        s = make_symmetric_quants(L[16 * j:16 * j + 16], x[16 * j:16 * j + 16], 32)
        scales[j] = s
        if abs(s) > max_abs:
            max_abs = abs(s)
            max_scale = s
    if max_abs < GROUP_MAX_EPS:
        blk[:] = 0
        return
    iscale = f32(-128.0) / max_scale
    d = _store_f16(blk, 208, f32(1.0) / iscale)
    for j in range(16):
        q = ((min(127, nearest_int(iscale * scales[j])) + 128) & 0xFF) - 128  # stored as int8
        blk[192 + j] = q & 0xFF
        _symmetric_levels(L[16 * j:16 * j + 16], x[16 * j:16 * j + 16], d * f32(q), 32)
    ql = blk[0:128]
    qh = blk[128:192]
    for j in range(0, QK_K, 128):
        for l in range(32):
            a, b, c, e = L[j + l], L[j + l + 32], L[j + l + 64], L[j + l + 96]
            ql[j // 2 + l] = (a & 0xF) | ((c & 0xF) << 4)
            ql[j // 2 + l + 32] = (b & 0xF) | ((e & 0xF) << 4)
            qh[j // 4 + l] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)


@njit(**_jit, parallel=True)
def quantize_rows_q6_k(out, x):
    """out: u8[rows, n // 256 * 210]; x: f32[rows, n], n a multiple of 256."""
    nb = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        L = np.empty(QK_K, np.uint8)
        scales = np.empty(16, np.float32)
        for b in range(nb):
            _quantize_block_q6_k(out[r, 210 * b:210 * b + 210], x[r, QK_K * b:QK_K * b + QK_K],
                                 L, scales)


# ---------------------------------------------------------------- public API

def checked_rows(x: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """x as contiguous f32[rows, n], or a ValueError naming what is wrong with it."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{qtype.name} quantizer expects a 2-D (rows, n) array, got shape {x.shape}")
    block = GGML_QUANT_SIZES[qtype][0]
    if x.shape[1] % block:
        raise ValueError(f"{qtype.name}: row length {x.shape[1]} is not a multiple of {block}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{qtype.name}: cannot quantize non-finite values (NaN or inf)")
    return x


def _row_quantizer(qtype: GGMLQuantizationType, rows_kernel):
    block, type_size = GGML_QUANT_SIZES[qtype]

    def quantize(x: np.ndarray) -> np.ndarray:
        x = checked_rows(x, qtype)
        out = np.zeros((x.shape[0], x.shape[1] // block * type_size), dtype=np.uint8)
        if x.size:
            rows_kernel(out, x)
        return out

    quantize.__name__ = f"quantize_{qtype.name.lower()}"
    quantize.__doc__ = (f"f32[rows, n] -> u8[rows, n // {block} * {type_size}] {qtype.name} blocks, "
                        "byte-identical to llama.cpp's reference quantizer.")
    return quantize


quantize_q2_k = _row_quantizer(GGMLQuantizationType.Q2_K, quantize_rows_q2_k)
quantize_q3_k = _row_quantizer(GGMLQuantizationType.Q3_K, quantize_rows_q3_k)
quantize_q4_k = _row_quantizer(GGMLQuantizationType.Q4_K, quantize_rows_q4_k)
quantize_q5_k = _row_quantizer(GGMLQuantizationType.Q5_K, quantize_rows_q5_k)
quantize_q6_k = _row_quantizer(GGMLQuantizationType.Q6_K, quantize_rows_q6_k)

QUANTIZERS = {
    GGMLQuantizationType.Q2_K: quantize_q2_k,
    GGMLQuantizationType.Q3_K: quantize_q3_k,
    GGMLQuantizationType.Q4_K: quantize_q4_k,
    GGMLQuantizationType.Q5_K: quantize_q5_k,
    GGMLQuantizationType.Q6_K: quantize_q6_k,
}

for _qtype, _fn in QUANTIZERS.items():
    register_quantizer(_qtype, _fn)
