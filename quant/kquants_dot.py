"""K-quant matvec / matmul on float activations, on the quantized blocks (no full dequantization).

These are the reference twins of the registered int8-activation kernels (kquants_int8.py):
exact up to float summation order, they check the fast kernels and serve Q8_K weights.
Each block's dot product is fused with its decode: the 256 quants are unpacked into int lanes,
multiplied with x and summed per sub-block, and the sub-block's integer scale and min are
applied once per sub-block rather than per weight. Sub-block mins need only the sum of x
over the sub-block, which does not depend on the row, so it is computed once per call
(`sum16`: sums of each 16 consecutive x).

matmul (prefill; registered for Q8_K weights only) decodes each weight block once into a
small float buffer and reuses it for every activation row; rows are taken a few at a time so
each x block loaded is used for several weight rows.

These kernels are compiled with fastmath (reassociated sums vectorize); they are checked
against dequantize(W) @ x with a tolerance relative to |W||x|, not bit for bit.
"""
from __future__ import annotations

import numpy as np
from numba import literally, njit, prange
from numba.extending import overload

from .kquants import (QK_K, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, block_bytes, decode_block,
                      f16_at, f32_at, i8_at, scale_min_k4, scale_q3_k, table_entry)

_f32 = np.float32


# ---- per-block dot products: dot_X(b u8[:], i, x f32[:], xo, sum16 f32[:], so) -> float32
#      = dot(decode(block at b[i:]), x[xo:xo+256]); sum16[so:so+16] are the 16-sums of that x.

@njit(inline="always")
def dot_q2_k(b, i, x, xo, sum16, so):
    # qs byte 32h + l holds elements 128h + 32j + l (j = 0..3, bits 2j); sub-block 8h + 2j + l//16.
    acc = _f32(0.0)
    for h in range(2):
        for g in range(2):
            s0 = _f32(0.0)
            s1 = _f32(0.0)
            s2 = _f32(0.0)
            s3 = _f32(0.0)
            for l in range(16 * g, 16 * g + 16):
                q = np.int32(b[i + 16 + 32 * h + l])
                e = xo + 128 * h + l
                s0 += _f32(q & 3) * x[e]
                s1 += _f32((q >> 2) & 3) * x[e + 32]
                s2 += _f32((q >> 4) & 3) * x[e + 64]
                s3 += _f32(q >> 6) * x[e + 96]
            sb = 8 * h + g
            acc += (_f32(b[i + sb] & 0xF) * s0 + _f32(b[i + sb + 2] & 0xF) * s1
                    + _f32(b[i + sb + 4] & 0xF) * s2 + _f32(b[i + sb + 6] & 0xF) * s3)
    mins = _f32(0.0)
    for s in range(16):
        mins += _f32(b[i + s] >> 4) * sum16[so + s]
    return f16_at(b, i + 80) * acc - f16_at(b, i + 82) * mins


@njit(inline="always")
def dot_q3_k(b, i, x, xo, sum16, so):
    # Low bits as Q2_K; element 128h + 32j + l takes its high bit from bit 4h + j of hmask[l].
    acc = _f32(0.0)
    for h in range(2):
        for g in range(2):
            s0 = _f32(0.0)
            s1 = _f32(0.0)
            s2 = _f32(0.0)
            s3 = _f32(0.0)
            for l in range(16 * g, 16 * g + 16):
                q = np.int32(b[i + 32 + 32 * h + l])
                m = np.int32(b[i + l]) >> (4 * h)
                e = xo + 128 * h + l
                s0 += _f32((q & 3) - 4 + 4 * (m & 1)) * x[e]
                s1 += _f32(((q >> 2) & 3) - 4 + 2 * (m & 2)) * x[e + 32]
                s2 += _f32(((q >> 4) & 3) - 4 + (m & 4)) * x[e + 64]
                s3 += _f32((q >> 6) - 4 + ((m >> 1) & 4)) * x[e + 96]
            sb = 8 * h + g
            acc += (_f32(scale_q3_k(b, i + 96, sb)) * s0 + _f32(scale_q3_k(b, i + 96, sb + 2)) * s1
                    + _f32(scale_q3_k(b, i + 96, sb + 4)) * s2 + _f32(scale_q3_k(b, i + 96, sb + 6)) * s3)
    return f16_at(b, i + 108) * acc


@njit(inline="always")
def dot_q4_k(b, i, x, xo, sum16, so):
    # qs byte 32c + l: low nibble is element 64c + l (sub-block 2c), high 64c + 32 + l (2c + 1).
    acc = _f32(0.0)
    mins = _f32(0.0)
    for c in range(4):
        lo = _f32(0.0)
        hi = _f32(0.0)
        for l in range(32):
            q = np.int32(b[i + 16 + 32 * c + l])
            lo += _f32(q & 0xF) * x[xo + 64 * c + l]
            hi += _f32(q >> 4) * x[xo + 64 * c + 32 + l]
        sc_lo, m_lo = scale_min_k4(b, i + 4, 2 * c)
        sc_hi, m_hi = scale_min_k4(b, i + 4, 2 * c + 1)
        acc += _f32(sc_lo) * lo + _f32(sc_hi) * hi
        mins += (_f32(m_lo) * (sum16[so + 4 * c] + sum16[so + 4 * c + 1])
                 + _f32(m_hi) * (sum16[so + 4 * c + 2] + sum16[so + 4 * c + 3]))
    return f16_at(b, i) * acc - f16_at(b, i + 2) * mins


@njit(inline="always")
def dot_q5_k(b, i, x, xo, sum16, so):
    # Q4_K's nibbles (at byte 48) plus a 5th bit: bit s of qh[l] for element 32s + l.
    acc = _f32(0.0)
    mins = _f32(0.0)
    for c in range(4):
        lo = _f32(0.0)
        hi = _f32(0.0)
        for l in range(32):
            q = np.int32(b[i + 48 + 32 * c + l])
            qh = np.int32(b[i + 16 + l]) >> (2 * c)
            lo += _f32((q & 0xF) | ((qh & 1) << 4)) * x[xo + 64 * c + l]
            hi += _f32((q >> 4) | ((qh & 2) << 3)) * x[xo + 64 * c + 32 + l]
        sc_lo, m_lo = scale_min_k4(b, i + 4, 2 * c)
        sc_hi, m_hi = scale_min_k4(b, i + 4, 2 * c + 1)
        acc += _f32(sc_lo) * lo + _f32(sc_hi) * hi
        mins += (_f32(m_lo) * (sum16[so + 4 * c] + sum16[so + 4 * c + 1])
                 + _f32(m_hi) * (sum16[so + 4 * c + 2] + sum16[so + 4 * c + 3]))
    return f16_at(b, i) * acc - f16_at(b, i + 2) * mins


@njit(inline="always")
def dot_q6_k(b, i, x, xo, sum16, so):
    # ql bytes 64h + l and 64h + 32 + l and qh byte 32h + l hold elements 128h + 32k + l (k = 0..3):
    # nibbles of the two ql bytes, 2-bit pairs of qh; value q - 32, sub-block 8h + 2k + l//16.
    acc = _f32(0.0)
    for h in range(2):
        for g in range(2):
            s0 = _f32(0.0)
            s1 = _f32(0.0)
            s2 = _f32(0.0)
            s3 = _f32(0.0)
            for l in range(16 * g, 16 * g + 16):
                a = np.int32(b[i + 64 * h + l])
                c = np.int32(b[i + 64 * h + 32 + l])
                qh = np.int32(b[i + 128 + 32 * h + l])
                e = xo + 128 * h + l
                s0 += _f32(((a & 0xF) | ((qh & 3) << 4)) - 32) * x[e]
                s1 += _f32(((c & 0xF) | ((qh & 12) << 2)) - 32) * x[e + 32]
                s2 += _f32(((a >> 4) | (qh & 48)) - 32) * x[e + 64]
                s3 += _f32(((c >> 4) | ((qh >> 2) & 48)) - 32) * x[e + 96]
            sb = i + 192 + 8 * h + g
            acc += (_f32(i8_at(b, sb)) * s0 + _f32(i8_at(b, sb + 2)) * s1
                    + _f32(i8_at(b, sb + 4)) * s2 + _f32(i8_at(b, sb + 6)) * s3)
    return f16_at(b, i + 208) * acc


@njit(inline="always")
def dot_q8_k(b, i, x, xo, sum16, so):
    acc = _f32(0.0)
    for l in range(QK_K):
        acc += _f32(i8_at(b, i + 4 + l)) * x[xo + l]
    return f32_at(b, i) * acc


_DOTS = {Q2_K: dot_q2_k, Q3_K: dot_q3_k, Q4_K: dot_q4_k, Q5_K: dot_q5_k, Q6_K: dot_q6_k, Q8_K: dot_q8_k}


def dot_block(qtype, b, i, x, xo, sum16, so):
    """Numba-only: dot of the block of literal type `qtype` at b[i:] with x[xo:xo+256]."""
    raise NotImplementedError("dot_block is callable from Numba code only")


@overload(dot_block, inline="always")
def _dot_block(qtype, b, i, x, xo, sum16, so):
    dot = table_entry(_DOTS, qtype)
    return None if dot is None else (lambda qtype, b, i, x, xo, sum16, so: dot(b, i, x, xo, sum16, so))


@njit(inline="always")
def check_dot_shapes(out_rows, w, n, nbytes):
    if n % QK_K:
        raise ValueError("K-quant dot: activation length is not a multiple of 256")
    if w.shape[1] != (n // QK_K) * nbytes:
        raise ValueError("K-quant dot: weight row bytes do not match the activation length")
    if out_rows != w.shape[0]:
        raise ValueError("K-quant dot: output length does not match the weight rows")


@njit(cache=True, fastmath=True)
def sums_of_16(out, x):
    """out f32[n/16] <- sums of each 16 consecutive values of x f32[n]."""
    for s in range(out.size):
        acc = _f32(0.0)
        for l in range(16):
            acc += x[16 * s + l]
        out[s] = acc


@njit(cache=True, parallel=True, fastmath=True)
def matvec_rows(out, w, x, qtype):
    """out f32[rows] <- w (u8[rows, row_bytes], literal type `qtype`) @ x f32[n]."""
    nbytes = block_bytes(literally(qtype))
    n = x.size
    check_dot_shapes(out.size, w, n, nbytes)
    n_blocks = n // QK_K
    sum16 = np.empty(n // 16, dtype=np.float32)
    sums_of_16(sum16, x)
    for r in prange(w.shape[0]):
        row = w[r]
        acc = _f32(0.0)
        for blk in range(n_blocks):
            acc += dot_block(qtype, row, blk * nbytes, x, blk * QK_K, sum16, blk * 16)
        out[r] = acc


_ROW_TILE = 4  # weight rows decoded together in matmul: each x block loaded serves 4 rows


@njit(cache=True, parallel=True, fastmath=True)
def matmul_rows(out, w, x, qtype):
    """out f32[t, rows] <- x f32[t, n] @ w.T for w u8[rows, row_bytes] of literal type `qtype`."""
    nbytes = block_bytes(literally(qtype))
    t, n = x.shape
    check_dot_shapes(out.shape[1], w, n, nbytes)
    if out.shape[0] != t:
        raise ValueError("K-quant matmul: output rows do not match the activation rows")
    rows = w.shape[0]
    n_blocks = n // QK_K
    n_tiles = (rows + _ROW_TILE - 1) // _ROW_TILE
    for tile in prange(n_tiles):
        r0 = tile * _ROW_TILE
        nr = min(_ROW_TILE, rows - r0)
        wbuf = np.empty(_ROW_TILE * QK_K, dtype=np.float32)  # decoded blocks of this tile's rows
        acc = np.zeros((t, _ROW_TILE), dtype=np.float32)
        for blk in range(n_blocks):
            for r in range(nr):
                decode_block(qtype, wbuf, r * QK_K, w[r0 + r], blk * nbytes)
            xo = blk * QK_K
            for i in range(t):
                for r in range(nr):
                    s = _f32(0.0)
                    for l in range(QK_K):
                        s += wbuf[r * QK_K + l] * x[i, xo + l]
                    acc[i, r] += s
        for i in range(t):
            for r in range(nr):
                out[i, r0 + r] = acc[i, r]


# One entry point per type and kernel (Numba caches module-level functions only).

@njit(cache=True)
def matvec_q2_k(out, w, x):
    """out f32[rows] <- w u8[rows, n/256*84] (Q2_K) @ x f32[n]."""
    matvec_rows(out, w, x, Q2_K)


@njit(cache=True)
def matvec_q3_k(out, w, x):
    """out f32[rows] <- w u8[rows, n/256*110] (Q3_K) @ x f32[n]."""
    matvec_rows(out, w, x, Q3_K)


@njit(cache=True)
def matvec_q4_k(out, w, x):
    """out f32[rows] <- w u8[rows, n/256*144] (Q4_K) @ x f32[n]."""
    matvec_rows(out, w, x, Q4_K)


@njit(cache=True)
def matvec_q5_k(out, w, x):
    """out f32[rows] <- w u8[rows, n/256*176] (Q5_K) @ x f32[n]."""
    matvec_rows(out, w, x, Q5_K)


@njit(cache=True)
def matvec_q6_k(out, w, x):
    """out f32[rows] <- w u8[rows, n/256*210] (Q6_K) @ x f32[n]."""
    matvec_rows(out, w, x, Q6_K)


@njit(cache=True)
def matvec_q8_k(out, w, x):
    """out f32[rows] <- w u8[rows, n/256*292] (Q8_K) @ x f32[n]."""
    matvec_rows(out, w, x, Q8_K)


@njit(cache=True)
def matmul_q8_k(out, w, x):
    """out f32[t, rows] <- x f32[t, n] @ w.T, w u8[rows, n/256*292] (Q8_K)."""
    matmul_rows(out, w, x, Q8_K)
