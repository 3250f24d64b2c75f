"""Block-kernel templates for types whose kernels decode one block at a time: from a type's
block decoder, `make_block_kernels` builds its dequantize, matvec and matmul (tquants.py,
mxfp4.py and iquants_grid.py use it).

matvec / matmul decode one block into a small buffer and dot it with x in LANES interleaved
float32 sums, added together in a fixed order at the end of the row. They run without
fastmath, so that order is the one executed, in every kernel: matmul's row for each token is
bit-identical to matvec on that token (batch-invariant). The lanes are independent, so the
compiler still vectorizes them without reassociating anything.

Numba caches the kernels built here under this file: after changing a decoder in another
module, clear quant/__pycache__ (see kernel_kit.py).
"""
from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from numba import njit, prange

from .kernel_kit import specialize

f32 = np.float32
LANES = 8  # interleaved partial sums per dot: one AVX2 vector; every block size is a multiple
_ROWS_PER_TASK = 32  # rows per parallel work item: scratch buffers are allocated per item

@njit(cache=True, inline="always")
def dot_lanes(acc, buf, xs):
    """acc[l] += buf[j] * xs[j] over the j = l (mod LANES); buf, xs: f32[m], m % LANES == 0."""
    for j in range(0, xs.size, LANES):
        for l in range(LANES):
            acc[l] += buf[j + l] * xs[j + l]


@njit(cache=True, inline="always")
def sum_lanes(acc):
    """The row's dot from its LANES partial sums, always added in this order."""
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


@njit(cache=True, inline="always")
def check_shapes(out_rows, w, n, block, nbytes):
    if n % block:
        raise ValueError("matvec/matmul: activation length is not a multiple of the block size")
    if w.shape[1] != n // block * nbytes:
        raise ValueError("matvec/matmul: weight row bytes do not match the activation length")
    if out_rows != w.shape[0]:
        raise ValueError("matvec/matmul: output length does not match the weight rows")


def _dequantize(out, blocks):
    """out: f32[n_blocks * BLOCK] <- blocks: u8[n_blocks * BYTES]."""
    n_blocks = blocks.size // BYTES
    if blocks.size != n_blocks * BYTES or out.size != n_blocks * BLOCK:
        raise ValueError("dequantize: block bytes and output length do not match")
    for k in prange(n_blocks):
        DECODE(out, k * BLOCK, blocks, k * BYTES)


def _matvec(out, w, x):
    """out: f32[rows] <- w: u8[rows, n // BLOCK * BYTES] @ x: f32[n]."""
    check_shapes(out.size, w, x.size, BLOCK, BYTES)
    rows = w.shape[0]
    for task in prange((rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        buf = np.empty(BLOCK, dtype=np.float32)
        acc = np.empty(LANES, dtype=np.float32)
        for r in range(task * _ROWS_PER_TASK, min(rows, (task + 1) * _ROWS_PER_TASK)):
            acc[:] = 0.0
            for k in range(x.size // BLOCK):
                DECODE(buf, 0, w[r], k * BYTES)
                dot_lanes(acc, buf, x[k * BLOCK:(k + 1) * BLOCK])
            out[r] = sum_lanes(acc)


def _matmul(out, w, x):
    """out: f32[t, rows] <- x: f32[t, n] @ w.T, w: u8[rows, n // BLOCK * BYTES].

    Each block is decoded once and dotted with every token; per token the operations are
    matvec's, in matvec's order, so every row of out is bit-identical to matvec on its token.
    """
    t, n = x.shape
    check_shapes(out.shape[1], w, n, BLOCK, BYTES)
    if out.shape[0] != t:
        raise ValueError("matmul: output rows do not match the activation rows")
    rows = w.shape[0]
    for task in prange((rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        buf = np.empty(BLOCK, dtype=np.float32)
        acc = np.empty((t, LANES), dtype=np.float32)
        for r in range(task * _ROWS_PER_TASK, min(rows, (task + 1) * _ROWS_PER_TASK)):
            acc[:] = 0.0
            for k in range(n // BLOCK):
                DECODE(buf, 0, w[r], k * BYTES)
                for i in range(t):
                    dot_lanes(acc[i], buf, x[i, k * BLOCK:(k + 1) * BLOCK])
            for i in range(t):
                out[i, r] = sum_lanes(acc[i])


def make_block_kernels(qtype: GGMLQuantizationType, decode_block):
    """(dequantize, matvec, matmul) for `qtype`, whose blocks decode_block reads.

    decode_block(out, o, b, i): njit, out[o:o+block_size] <- the block at b[i:i+type_size].
    """
    block, nbytes = GGML_QUANT_SIZES[qtype]
    name = qtype.name.lower()
    bind = dict(DECODE=decode_block, BLOCK=block, BYTES=nbytes)
    return (dequantize_kernel(qtype, decode_block),
            specialize(_matvec, f"matvec_{name}", **bind),
            specialize(_matmul, f"matmul_{name}", **bind))


def dequantize_kernel(qtype: GGMLQuantizationType, decode_block):
    """dequantize(out f32[n_blocks * block_size], blocks u8[n_blocks * type_size]) for `qtype`,
    every block decoded by decode_block (as make_block_kernels), blocks in parallel."""
    block, nbytes = GGML_QUANT_SIZES[qtype]
    return specialize(_dequantize, f"dequantize_{qtype.name.lower()}", DECODE=decode_block, BLOCK=block,
                      BYTES=nbytes)


