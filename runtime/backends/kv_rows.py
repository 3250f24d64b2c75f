"""How the CPU kernels write and read one row of the KV cache (one head's keys or values at one
position), for each cache type of runtime/kv_cache.py. Every helper is a Numba overload
resolved at compile time from the cache array's dtype, so one attention kernel serves them all:

  f32   float32 elements, stored and read as they are
  f16   IEEE half bits (uint16), rounded to nearest even when stored
  q8_0  block_q8_0 records: each 32 values quantized as gguf-py's (and ggml's reference) Q8_0
  q4_0  block_q4_0 records: ditto, Q4_0

The query meets the keys as ggml's dot products meet them (the keys' `vec_dot_type`): rounded
to f16 for an f16 cache, quantized to Q8_0 for a q8_0 or q4_0 cache (llama.cpp's x86
quantize_row_q8_0, legacy_int8.quantize_q8_0_parts), so a key dot is an integer dot per block
(int32, exact) times the two scales, summed in float32; nothing is rounded for an f32 cache.
Values are weighted in float32 (a quantized block's weight times its scale, then times each
code: ggml's dequantize_row gives d * q first, so the last bits may differ).

A quantized cache's rows may be rotated (kv_cache.rotation_block): `hadamard` applies the
orthonormal Walsh-Hadamard transform to a float row, in place, block by block.

A row is a 1-D view of the cache: head_dim elements, or head_dim / 32 records. The query
operand is `qh` f32 (head_dim,) for the element types, and for the quantized ones its Q8_0
codes `qi` i8 (head_dim,) and block scales `qd` f32 (head_dim / 32,).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from ...quant.legacy_int8 import quantize_q8_0_parts
from ...quant.legacy_quantize import pack_nibbles, q4_0_codes, q8_0_codes
from .half import f32_to_half_bits, half_bits_to_f32

BLOCK = 32


def _block_kind(dtype) -> str | None:
    """"q8_0" or "q4_0" for a cache of block records, None for element caches (typing time)."""
    if not isinstance(dtype, types.Record):
        return None
    return "q8_0" if dtype.typeof("qs").dtype == types.int8 else "q4_0"


@njit(cache=True)
def hadamard(x, block):
    """x f32 (n,) <- H x for each `block` consecutive values (block a power of two; 0: leave x
    as it is), H the Sylvester Hadamard matrix / sqrt(block): the fast transform's butterflies,
    then the scale. H is symmetric and orthonormal, so applying it twice gives x back."""
    if block == 0:
        return
    scale = np.float32(1.0 / math.sqrt(block))
    for o in range(0, x.shape[0], block):
        h = 1
        while h < block:
            for i in range(o, o + block, 2 * h):
                for j in range(i, i + h):
                    a = x[j]
                    b = x[j + h]
                    x[j] = a + b
                    x[j + h] = a - b
            h *= 2
        for j in range(o, o + block):
            x[j] *= scale


def hadamard_reference(x, block):
    """hadamard's naive twin in numpy: the Sylvester matrix built by doubling, times each block."""
    h = np.ones((1, 1))
    while h.shape[0] < block:
        h = np.block([[h, h], [h, -h]])
    h = h / math.sqrt(block)
    return (x.reshape(-1, block).astype(np.float64) @ h.T).reshape(x.shape)


# ---- element types: f32, f16 ----------------------------------------------------------------

def kv_load(x):
    """A cache element as float32 (Numba only)."""


@overload(kv_load, inline="always")
def _kv_load(x):
    if x == types.uint16:
        return lambda x: half_bits_to_f32(x)
    return lambda x: np.float32(x)


def kv_encode(cache, x):
    """float32 `x` as an element of `cache`: half bits (round to nearest even) or itself."""


@overload(kv_encode, inline="always")
def _kv_encode(cache, x):
    if cache.dtype == types.uint16:
        return lambda cache, x: np.uint16(f32_to_half_bits(x))
    return lambda cache, x: np.float32(x)


def _kv_operand(cache, x):
    """float32 `x` rounded to the precision of `cache`'s elements, as float32."""


@overload(_kv_operand, inline="always")
def _kv_operand_impl(cache, x):
    if cache.dtype == types.uint16:
        return lambda cache, x: half_bits_to_f32(np.uint16(f32_to_half_bits(x)))
    return lambda cache, x: np.float32(x)


# ---- rows -----------------------------------------------------------------------------------

def row_width(cache):
    """Values per row of a cache array (its last axis; 32 per block record)."""


@overload(row_width, inline="always")
def _row_width(cache):
    if _block_kind(cache.dtype):
        return lambda cache: cache.shape[cache.ndim - 1] * BLOCK
    return lambda cache: cache.shape[cache.ndim - 1]


def put_row(row, x, codes):
    """Store x f32 (width,) into `row`; codes: int64 (32,) scratch for the quantized types."""


@overload(put_row, inline="always")
def _put_row(row, x, codes):
    kind = _block_kind(row.dtype)
    if kind == "q8_0":
        def put(row, x, codes):
            for b in range(row.shape[0]):
                blk = row[b]
                blk.d = f32_to_half_bits(q8_0_codes(codes, x, b * BLOCK))
                for j in range(BLOCK):
                    blk.qs[j] = np.int8(codes[j])
        return put
    if kind == "q4_0":
        def put(row, x, codes):
            for b in range(row.shape[0]):
                blk = row[b]
                blk.d = f32_to_half_bits(q4_0_codes(codes, x, b * BLOCK))
                pack_nibbles(blk.qs, 0, codes)
        return put

    def put(row, x, codes):
        for d in range(row.shape[0]):
            row[d] = kv_encode(row, x[d])
    return put


def _low(qs, j):
    """Value j < 16 of a block record's codes, as int32 (q4_0: less its offset 8)."""


def _high(qs, j):
    """Value j + 16 of a block record's codes (j < 16), as int32."""


@overload(_low, inline="always")
def _low_impl(qs, j):
    if qs.dtype == types.int8:
        return lambda qs, j: np.int32(qs[j])
    return lambda qs, j: (np.int32(qs[j]) & 0xF) - 8      # q4_0: the low nibbles hold 0..15


@overload(_high, inline="always")
def _high_impl(qs, j):
    if qs.dtype == types.int8:
        return lambda qs, j: np.int32(qs[j + 16])
    return lambda qs, j: (np.int32(qs[j]) >> 4) - 8       # q4_0: the high nibbles hold 16..31


def get_row(out, row):
    """out f32 (width,) = the values `row` holds."""


@overload(get_row, inline="always")
def _get_row(out, row):
    if _block_kind(row.dtype):
        def get(out, row):
            for b in range(row.shape[0]):
                d = half_bits_to_f32(row[b].d)
                qs = row[b].qs
                for j in range(BLOCK // 2):
                    out[b * BLOCK + j] = d * np.float32(_low(qs, j))
                    out[b * BLOCK + BLOCK // 2 + j] = d * np.float32(_high(qs, j))
        return get

    def get(out, row):
        for d in range(row.shape[0]):
            out[d] = kv_load(row[d])
    return get


def query_operand(cache, x, qh, qd, qi):
    """The query head x f32 (width,) as the keys of `cache` meet it: qh, or qd and qi (above)."""


@overload(query_operand, inline="always")
def _query_operand(cache, x, qh, qd, qi):
    if _block_kind(cache.dtype):
        return lambda cache, x, qh, qd, qi: quantize_q8_0_parts(qd, qi, x)

    def operand(cache, x, qh, qd, qi):
        for d in range(x.shape[0]):
            qh[d] = _kv_operand(cache, x[d])
    return operand


def dot_row(qh, qd, qi, row):
    """The query operand (qh, or qd and qi) . the key in `row`, float32."""


@overload(dot_row, inline="always")
def _dot_row(qh, qd, qi, row):
    if _block_kind(row.dtype):
        def dot(qh, qd, qi, row):
            s = np.float32(0.0)
            for b in range(row.shape[0]):
                qs = row[b].qs
                o = b * BLOCK
                acc = np.int32(0)
                for j in range(BLOCK // 2):
                    acc += np.int32(qi[o + j]) * _low(qs, j) + np.int32(qi[o + BLOCK // 2 + j]) * _high(qs, j)
                s += (half_bits_to_f32(row[b].d) * qd[b]) * np.float32(acc)
            return s
        return dot

    def dot(qh, qd, qi, row):
        s = np.float32(0.0)
        for d in range(row.shape[0]):
            s += qh[d] * kv_load(row[d])
        return s
    return dot


def add_row(acc, w, row):
    """acc f32 (width,) += w * the values in `row` (a block's scale folded into w first)."""


@overload(add_row, inline="always")
def _add_row(acc, w, row):
    if _block_kind(row.dtype):
        def add(acc, w, row):
            for b in range(row.shape[0]):
                wd = w * half_bits_to_f32(row[b].d)
                qs = row[b].qs
                o = b * BLOCK
                for j in range(BLOCK // 2):
                    acc[o + j] += wd * np.float32(_low(qs, j))
                    acc[o + BLOCK // 2 + j] += wd * np.float32(_high(qs, j))
        return add

    def add(acc, w, row):
        for d in range(row.shape[0]):
            acc[d] += w * kv_load(row[d])
    return add
