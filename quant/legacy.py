"""Legacy block types Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: block layouts, dequantize, matvec, matmul.

Each block holds 32 weights and an f16 scale d (and an f16 offset m for the `_1` types):

  Q4_0 18 B: d | qs[16]              w[j] = d * (q[j] - 8)
  Q4_1 20 B: d | m | qs[16]          w[j] = d * q[j] + m
  Q5_0 22 B: d | qh[4] | qs[16]      w[j] = d * (q[j] - 16)
  Q5_1 24 B: d | m | qh[4] | qs[16]  w[j] = d * q[j] + m
  Q8_0 34 B: d | qs[32] int8         w[j] = d * q[j]

For the 4/5-bit types byte qs[i] carries q[i] in its low nibble and q[i + 16] in its high
nibble; for the 5-bit types bit j of the little-endian uint32 qh is bit 4 of q[j].

The decoders repeat gguf-py's float32 operations in order (a product, then a sum, no fused
multiply-add), so `dequantize` is bit-identical to `gguf.quants.dequantize`. The dot kernels
work on the blocks without dequantizing the row and may reassociate (DOT_FASTMATH); they are
the float reference twins (FLOAT_KERNELS) of the registered int8-activation kernels in
legacy_int8.py, which compute as llama.cpp does.

Q8_1 (ggml's activation format for the _1 types) is not registered: gguf-py has no reference
for it and its size table still gives the old 40-byte block where ggml now uses 36 bytes;
legacy_int8.py keeps its parts (d, s, qs) internal.
"""
from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from numba import njit, prange

from .float_bits import f16_at
from .kernel_kit import DOT_FASTMATH, make_matmul, opaque, specialize
from .legacy_int8 import INT8_KERNELS
from .legacy_quantize import QUANTIZERS
from .registry import QuantType, register


@njit(cache=True, inline="always")
def _low5(qs, qh, j):
    """q[j] of a 5-bit block (j < 16): low nibble of qs[j], bit j of qh."""
    return (np.int32(qs) & 0xF) | (np.int32((qh >> j) & 1) << 4)


@njit(cache=True, inline="always")
def _high5(qs, qh, j):
    """q[j + 16] of a 5-bit block: high nibble of qs[j], bit j + 16 of qh."""
    return (np.int32(qs) >> 4) | (np.int32((qh >> (j + 16)) & 1) << 4)


@njit(cache=True, inline="always")
def _u32_at(b, i):
    """The little-endian uint32 at b[i:i+4] (b: u8 array)."""
    return (np.uint32(b[i]) | (np.uint32(b[i + 1]) << np.uint32(8))
            | (np.uint32(b[i + 2]) << np.uint32(16)) | (np.uint32(b[i + 3]) << np.uint32(24)))


# ---- block decoders: out f32[32] <- one block blk u8[type_size] (both slices) ----

@njit(cache=True, inline="always")
def _decode_q4_0(out, blk):
    d = f16_at(blk, 0)
    for j in range(opaque(16)):
        q = np.int32(blk[2 + j])
        out[j] = d * np.float32((q & 0xF) - 8)
        out[16 + j] = d * np.float32((q >> 4) - 8)


@njit(cache=True, inline="always")
def _decode_q4_1(out, blk):
    d = f16_at(blk, 0)
    m = f16_at(blk, 2)
    for j in range(opaque(16)):
        q = np.int32(blk[4 + j])
        out[j] = d * np.float32(q & 0xF) + m
        out[16 + j] = d * np.float32(q >> 4) + m


@njit(cache=True, inline="always")
def _decode_q5_0(out, blk):
    d = f16_at(blk, 0)
    qh = _u32_at(blk, 2)
    for j in range(opaque(16)):
        qs = blk[6 + j]
        out[j] = d * np.float32(_low5(qs, qh, j) - 16)
        out[16 + j] = d * np.float32(_high5(qs, qh, j) - 16)


@njit(cache=True, inline="always")
def _decode_q5_1(out, blk):
    d = f16_at(blk, 0)
    m = f16_at(blk, 2)
    qh = _u32_at(blk, 4)
    for j in range(opaque(16)):
        qs = blk[8 + j]
        out[j] = d * np.float32(_low5(qs, qh, j)) + m
        out[16 + j] = d * np.float32(_high5(qs, qh, j)) + m


@njit(cache=True, inline="always")
def _decode_q8_0(out, blk):
    d = f16_at(blk, 0)
    for j in range(opaque(32)):
        out[j] = np.float32(np.int8(blk[2 + j])) * d


# ---- block dot products: dequantize(blk u8[type_size]) . xs f32[32] (both slices) ----

@njit(cache=True, inline="always", fastmath=DOT_FASTMATH)
def _dot_q4_0(blk, xs):
    acc = np.float32(0.0)
    for j in range(opaque(16)):
        q = np.int32(blk[2 + j])
        acc += np.float32((q & 0xF) - 8) * xs[j] + np.float32((q >> 4) - 8) * xs[16 + j]
    return f16_at(blk, 0) * acc


@njit(cache=True, inline="always", fastmath=DOT_FASTMATH)
def _dot_q4_1(blk, xs):
    qx = np.float32(0.0)
    sx = np.float32(0.0)
    for j in range(opaque(16)):
        q = np.int32(blk[4 + j])
        qx += np.float32(q & 0xF) * xs[j] + np.float32(q >> 4) * xs[16 + j]
        sx += xs[j] + xs[16 + j]
    return f16_at(blk, 0) * qx + f16_at(blk, 2) * sx


@njit(cache=True, inline="always", fastmath=DOT_FASTMATH)
def _dot_q5_0(blk, xs):
    qh = _u32_at(blk, 2)
    acc = np.float32(0.0)
    for j in range(opaque(16)):
        qs = blk[6 + j]
        acc += (np.float32(_low5(qs, qh, j) - 16) * xs[j]
                + np.float32(_high5(qs, qh, j) - 16) * xs[16 + j])
    return f16_at(blk, 0) * acc


@njit(cache=True, inline="always", fastmath=DOT_FASTMATH)
def _dot_q5_1(blk, xs):
    qh = _u32_at(blk, 4)
    qx = np.float32(0.0)
    sx = np.float32(0.0)
    for j in range(opaque(16)):
        qs = blk[8 + j]
        qx += np.float32(_low5(qs, qh, j)) * xs[j] + np.float32(_high5(qs, qh, j)) * xs[16 + j]
        sx += xs[j] + xs[16 + j]
    return f16_at(blk, 0) * qx + f16_at(blk, 2) * sx


@njit(cache=True, inline="always", fastmath=DOT_FASTMATH)
def _dot_q8_0(blk, xs):
    acc = np.float32(0.0)
    for j in range(opaque(32)):
        acc += np.float32(np.int8(blk[2 + j])) * xs[j]
    return f16_at(blk, 0) * acc


# ---- kernel templates over one block type (BLOCK values in BYTES bytes) ----

def _dequantize_blocks(out, blocks):
    """out f32[n_blocks * BLOCK] <- blocks u8[n_blocks * BYTES]."""
    n_blocks = blocks.shape[0] // BYTES
    if blocks.shape[0] != n_blocks * BYTES or out.shape[0] != n_blocks * BLOCK:
        raise ValueError("dequantize: sizes of out and blocks do not agree with the block size")
    for i in prange(n_blocks):
        decode_block(out[i * BLOCK:(i + 1) * BLOCK], blocks[i * BYTES:(i + 1) * BYTES])


def _decode_row_blocks(out, w_row):
    """out f32[n] <- one weight row w_row u8[n / BLOCK * BYTES]."""
    for i in range(w_row.shape[0] // BYTES):
        decode_block(out[i * BLOCK:(i + 1) * BLOCK], w_row[i * BYTES:(i + 1) * BYTES])


def _matvec_blocks(out, w, x):
    """out f32[rows] = W @ x; w u8[rows, n / BLOCK * BYTES], x f32[n]."""
    if out.shape[0] != w.shape[0] or not row_fits(w.shape[1], x.shape[0]):
        raise ValueError("matvec: shapes of out, w and x do not agree")
    n_blocks = x.shape[0] // BLOCK
    for r in prange(w.shape[0]):
        row = w[r]
        acc = np.float32(0.0)
        for i in range(n_blocks):
            acc += dot_block(row[i * BYTES:(i + 1) * BYTES], x[i * BLOCK:(i + 1) * BLOCK])
        out[r] = acc


def _row_fits_blocks(row_bytes, n):
    return n % BLOCK == 0 and row_bytes == n // BLOCK * BYTES


def _block_kernels(qtype, decode_block, dot_block):
    """(dequantize, matvec, matmul) for one block type, from its decoder and block dot."""
    name = qtype.name.lower()
    block, nbytes = GGML_QUANT_SIZES[qtype]
    size = dict(BLOCK=block, BYTES=nbytes)
    row_fits = specialize(_row_fits_blocks, f"row_fits_{name}", parallel=False, **size)
    decode_row = specialize(_decode_row_blocks, f"decode_row_{name}", parallel=False,
                            decode_block=decode_block, **size)
    return (specialize(_dequantize_blocks, f"dequantize_{name}", decode_block=decode_block, **size),
            specialize(_matvec_blocks, f"matvec_{name}", fastmath=DOT_FASTMATH,
                       dot_block=dot_block, row_fits=row_fits, **size),
            make_matmul(f"matmul_{name}", decode_row, row_fits))


# Registered matvec/matmul quantize the activations to Q8_0/Q8_1 first and dot integers, as
# llama.cpp does (legacy_int8.py); the float-activation kernels above are their reference
# twins, kept in FLOAT_KERNELS.
FLOAT_KERNELS = {}  # type -> (matvec, matmul) on float activations
for _qtype, _decode, _dot in ((T.Q4_0, _decode_q4_0, _dot_q4_0),
                              (T.Q4_1, _decode_q4_1, _dot_q4_1),
                              (T.Q5_0, _decode_q5_0, _dot_q5_0),
                              (T.Q5_1, _decode_q5_1, _dot_q5_1),
                              (T.Q8_0, _decode_q8_0, _dot_q8_0)):
    _dequantize, _float_matvec, _float_matmul = _block_kernels(_qtype, _decode, _dot)
    FLOAT_KERNELS[_qtype] = (_float_matvec, _float_matmul)
    _matvec, _matmul = INT8_KERNELS[_qtype]
    register(QuantType(_qtype, _dequantize, _matvec, _matmul, quantize=QUANTIZERS[_qtype], batch_invariant=True))
