"""The 4-bit non-linear I-quants IQ4_NL and IQ4_XS: layouts, dequantize, matvec, matmul.

Both map a 4-bit index through the same 16-entry non-uniform table
(`KVALUES`, denser near zero where weights are) and scale groups of 32.

    IQ4_NL  18 B per 32 weights:  d f16 | qs[16]
    IQ4_XS 136 B per 256 weights: d f16 | scales_h u16 | scales_l[4] | qs[128]

In both, qs byte j of a 32-group holds element j (low nibble) and element
j + 16 (high nibble).  IQ4_XS gives each of its 8 groups a 6-bit scale
ls (low 4 bits: nibble g % 2 of scales_l[g // 2]; high 2 bits: bits 2g, 2g+1
of scales_h) and the group's weights are d * (ls - 32) * KVALUES[q].

The decoders reproduce gguf-py's float32 order (d * q, and (d * (ls - 32)) * q)
so `dequantize` is bit-identical to gguf.quants.dequantize; they run without
fastmath.  matvec/matmul decode into small float buffers and reassociate
their dot products (fastmath); they are tested against dequantize(W) @ x with
a tolerance.  Quantizers: iquant_quantize.py.
"""
from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from numba import njit, prange

from .block_kernels import check_shapes, dequantize_kernel
from .float_bits import f16_at
from .kernel_kit import specialize
from .registry import QuantType, register

f32 = np.float32
KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                   dtype=np.int8)
KVALUES_F32 = KVALUES.astype(np.float32)  # the table as the kernels use it (exact small integers)
_KV = KVALUES_F32

NL_BLOCK, NL_BYTES = GGML_QUANT_SIZES[GGMLQuantizationType.IQ4_NL]  # 32, 18
XS_BLOCK, XS_BYTES = GGML_QUANT_SIZES[GGMLQuantizationType.IQ4_XS]  # 256, 136
DOT_FASTMATH = {"reassoc", "contract"}


@njit(cache=True, inline="always")
def xs_group_scale(b, i, g):
    """Signed scale ls - 32 (-32..31) of group g (0..7) of the IQ4_XS block at b[i:]."""
    lo = (np.intp(b[i + 4 + g // 2]) >> (4 * (g % 2))) & 0xF
    hi = ((np.intp(b[i + 2]) | (np.intp(b[i + 3]) << 8)) >> (2 * g)) & 3
    return (lo | (hi << 4)) - 32


@njit(cache=True, inline="always")
def decode_group(out, o, scale, b, q):
    """out[o:o+32] = scale * KVALUES[nibbles of b[q:q+16]] (low nibbles first)."""
    for j in range(16):
        v = np.intp(b[q + j])
        out[o + j] = scale * _KV[v & 0xF]
        out[o + 16 + j] = scale * _KV[v >> 4]


@njit(cache=True, inline="always")
def decode_nl_block(out, o, b, i):
    """out[o:o+32] <- the IQ4_NL block at b[i:i+18]."""
    decode_group(out, o, f16_at(b, i), b, i + 2)


@njit(cache=True, inline="always")
def decode_xs_block(out, o, b, i):
    """out[o:o+256] <- the IQ4_XS block at b[i:i+136]."""
    d = f16_at(b, i)
    for g in range(8):
        decode_group(out, o + 32 * g, d * f32(xs_group_scale(b, i, g)), b, i + 8 + 16 * g)


dequantize_iq4_nl = dequantize_kernel(GGMLQuantizationType.IQ4_NL, decode_nl_block)
dequantize_iq4_xs = dequantize_kernel(GGMLQuantizationType.IQ4_XS, decode_xs_block)


# ---------------------------------------------------------------- dot products
# matvec decodes up to 256 weights at a time into a small buffer (stays in L1) and
# dots it with x: the table lookups of the decode do not vectorize, the dot does.


@njit(cache=True, inline="always", fastmath=DOT_FASTMATH)
def _dot(buf, x, xo, m):
    """buf[:m] . x[xo:xo+m]."""
    acc = f32(0.0)
    for j in range(m):
        acc += buf[j] * x[xo + j]
    return acc


@njit(cache=True, inline="always", fastmath=DOT_FASTMATH)
def dot_nl_row(row, x, buf):
    """dequantize(row) . x for one IQ4_NL row u8[n // 32 * 18], x f32[n]; buf: f32[256] scratch."""
    n_blocks = x.size // NL_BLOCK
    full = n_blocks - n_blocks % 8
    acc = f32(0.0)
    for k0 in range(0, full, 8):  # fixed-size chunks: the compiler unrolls and vectorizes
        for k in range(8):
            decode_nl_block(buf, NL_BLOCK * k, row, NL_BYTES * (k0 + k))
        acc += _dot(buf, x, NL_BLOCK * k0, XS_BLOCK)
    for k in range(full, n_blocks):
        decode_nl_block(buf, 0, row, NL_BYTES * k)
        acc += _dot(buf, x, NL_BLOCK * k, NL_BLOCK)
    return acc


@njit(cache=True, inline="always", fastmath=DOT_FASTMATH)
def dot_xs_row(row, x, buf):
    """dequantize(row) . x for one IQ4_XS row u8[n // 256 * 136], x f32[n]; buf: f32[256] scratch."""
    acc = f32(0.0)
    for k in range(x.size // XS_BLOCK):
        decode_xs_block(buf, 0, row, XS_BYTES * k)
        acc += _dot(buf, x, XS_BLOCK * k, XS_BLOCK)
    return acc


_ROWS_PER_TASK = 32  # rows per parallel work item: scratch buffers are allocated per item


@njit(cache=True, parallel=True, fastmath=DOT_FASTMATH)
def matvec_iq4_nl(out, w, x):
    """out: f32[rows] <- w: u8[rows, n // 32 * 18] (IQ4_NL) @ x: f32[n]."""
    check_shapes(out.size, w, x.size, NL_BLOCK, NL_BYTES)
    rows = w.shape[0]
    for task in prange((rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        buf = np.empty(XS_BLOCK, dtype=np.float32)
        for r in range(task * _ROWS_PER_TASK, min(rows, (task + 1) * _ROWS_PER_TASK)):
            out[r] = dot_nl_row(w[r], x, buf)


@njit(cache=True, parallel=True, fastmath=DOT_FASTMATH)
def matvec_iq4_xs(out, w, x):
    """out: f32[rows] <- w: u8[rows, n // 256 * 136] (IQ4_XS) @ x: f32[n]."""
    check_shapes(out.size, w, x.size, XS_BLOCK, XS_BYTES)
    rows = w.shape[0]
    for task in prange((rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        buf = np.empty(XS_BLOCK, dtype=np.float32)
        for r in range(task * _ROWS_PER_TASK, min(rows, (task + 1) * _ROWS_PER_TASK)):
            out[r] = dot_xs_row(w[r], x, buf)


def _matmul_rows(out, w, x):
    """out: f32[t, rows] <- x @ w.T, every row bit-identical to the matvec on its token: the
    matvec's row dot (ROW_DOT) for each token in turn, the weight row hot in cache."""
    check_shapes(out.shape[1], w, x.shape[1], BLOCK, BYTES)
    rows = w.shape[0]
    for task in prange((rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        buf = np.empty(XS_BLOCK, dtype=np.float32)
        for r in range(task * _ROWS_PER_TASK, min(rows, (task + 1) * _ROWS_PER_TASK)):
            for t in range(x.shape[0]):
                out[t, r] = ROW_DOT(w[r], x[t], buf)


matmul_rows_iq4_nl = specialize(_matmul_rows, "matmul_rows_iq4_nl", fastmath=DOT_FASTMATH,
                                BLOCK=NL_BLOCK, BYTES=NL_BYTES, ROW_DOT=dot_nl_row)
matmul_rows_iq4_xs = specialize(_matmul_rows, "matmul_rows_iq4_xs", fastmath=DOT_FASTMATH,
                                BLOCK=XS_BLOCK, BYTES=XS_BYTES, ROW_DOT=dot_xs_row)


@njit(cache=True, inline="always", fastmath=DOT_FASTMATH)
def dot_decoded_row(out, r, wrow, x):
    """out[t, r] = wrow . x[t] for every activation row t (wrow: decoded f32[n])."""
    for t in range(x.shape[0]):
        acc = f32(0.0)
        for j in range(wrow.size):
            acc += wrow[j] * x[t, j]
        out[t, r] = acc


@njit(cache=True, parallel=True, fastmath=DOT_FASTMATH)
def matmul_iq4_nl(out, w, x):
    """out: f32[t, rows] <- x: f32[t, n] @ w.T, w: u8[rows, n // 32 * 18] (IQ4_NL).

    Each weight row is decoded once into a float buffer and reused for all t.
    """
    n = x.shape[1]
    check_shapes(out.shape[1], w, n, NL_BLOCK, NL_BYTES)
    if out.shape[0] != x.shape[0]:
        raise ValueError("IQ4 matmul: output rows do not match the activation rows")
    rows = w.shape[0]
    for task in prange((rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        wrow = np.empty(n, dtype=np.float32)
        for r in range(task * _ROWS_PER_TASK, min(rows, (task + 1) * _ROWS_PER_TASK)):
            for k in range(n // NL_BLOCK):
                decode_nl_block(wrow, k * NL_BLOCK, w[r], k * NL_BYTES)
            dot_decoded_row(out, r, wrow, x)


@njit(cache=True, parallel=True, fastmath=DOT_FASTMATH)
def matmul_iq4_xs(out, w, x):
    """out: f32[t, rows] <- x: f32[t, n] @ w.T, w: u8[rows, n // 256 * 136] (IQ4_XS).

    Each weight row is decoded once into a float buffer and reused for all t.
    """
    n = x.shape[1]
    check_shapes(out.shape[1], w, n, XS_BLOCK, XS_BYTES)
    if out.shape[0] != x.shape[0]:
        raise ValueError("IQ4 matmul: output rows do not match the activation rows")
    rows = w.shape[0]
    for task in prange((rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        wrow = np.empty(n, dtype=np.float32)
        for r in range(task * _ROWS_PER_TASK, min(rows, (task + 1) * _ROWS_PER_TASK)):
            for k in range(n // XS_BLOCK):
                decode_xs_block(wrow, k * XS_BLOCK, w[r], k * XS_BYTES)
            dot_decoded_row(out, r, wrow, x)


# ---------------------------------------------------------------- registration

from .iquant_quantize import quantize_iq4_nl, quantize_iq4_xs  # noqa: E402

register(QuantType(GGMLQuantizationType.IQ4_NL, dequantize=dequantize_iq4_nl,
                   matvec=matvec_iq4_nl, matmul=matmul_iq4_nl, quantize=quantize_iq4_nl,
                   matmul_rows=matmul_rows_iq4_nl))
register(QuantType(GGMLQuantizationType.IQ4_XS, dequantize=dequantize_iq4_xs,
                   matvec=matvec_iq4_xs, matmul=matmul_iq4_xs, quantize=quantize_iq4_xs,
                   matmul_rows=matmul_rows_iq4_xs))
