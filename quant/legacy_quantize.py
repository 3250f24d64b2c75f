"""Quantizers for the legacy block types, byte-identical to `gguf.quants.quantize`.

Per block of 32 values (all arithmetic in float32, in gguf-py's order, no fused multiply-add):

  Q4_0 / Q5_0  d = v / -8 (/-16), v the value of largest magnitude (first one on ties);
               q = trunc(x / d + 8.5 (16.5)), clipped to 15 (31)
  Q4_1 / Q5_1  d = (max - min) / 15 (31), m = min;  q = trunc((x - min) / d + 0.5), clipped
  Q8_0         d = max|x| / 127;  q = x / d rounded half away from zero

where "x / d" is x * (1 / d), and 0 when d == 0. d and m are stored as f16.

Two details make the bytes match even for degenerate blocks. A tiny scale (subnormal d)
gives 1/d = inf, and x * inf or 0 * inf turns into inf/NaN before the integer cast; numpy
casts float32 to uint8/int8 through int32 on x86, where every non-finite or out-of-range
value becomes 0x80000000, so `_as_byte` keeps that rule. When the extreme of a Q4_1/Q5_1
block is a zero present with both signs, numpy's SIMD reduction decides which sign m gets;
we take the last such zero, which matches numpy except in rare orders.

Non-finite input has no meaningful quantization (ggml's is undefined too) and is rejected.
"""
from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from numba import njit, prange

from .floats import float_to_half
from .kernel_kit import specialize

BLOCK = 32


@njit(cache=True)
def _as_byte(v):
    """numpy's float32 -> uint8 cast on x86 (truncate toward zero through int32)."""
    if not (v >= np.float32(-2147483648.0) and v < np.float32(2147483648.0)):
        return 0  # NaN, inf or beyond int32: x86 gives 0x80000000, whose low byte is 0
    return np.int64(v) & 0xFF


@njit(cache=True)
def _round_away(v):
    """float32 rounded half away from zero (C roundf), kept as float32."""
    a = abs(v)
    r = np.float32(np.floor(a))
    if a - r >= np.float32(0.5):
        r += np.float32(1.0)
    return -r if v < 0 else r


@njit(cache=True)
def _store_half(out, o, value):
    h = float_to_half(value)
    out[o] = h & 0xFF
    out[o + 1] = h >> 8


@njit(cache=True)
def _inverse(d):
    return np.float32(0.0) if d == 0 else np.float32(1.0) / d


@njit(cache=True)
def _largest_magnitude(x, b):
    """The value of largest |x| in x[b : b+32]; the first one on ties (np.argmax)."""
    best = x[b]
    for j in range(1, BLOCK):
        if abs(x[b + j]) > abs(best):
            best = x[b + j]
    return best


@njit(cache=True)
def _min_max(x, b):
    """(min, max) of x[b : b+32]; on equal values the later one wins (signed zeros)."""
    lo = x[b]
    hi = x[b]
    for j in range(1, BLOCK):
        v = x[b + j]
        if v <= lo:
            lo = v
        if v >= hi:
            hi = v
    return lo, hi


@njit(cache=True)
def _symmetric_codes(q, x, b, divisor, offset, top):
    """q[j] = clip(trunc(x/d + offset)) with d = (largest-magnitude value) / divisor; returns d."""
    d = _largest_magnitude(x, b) / divisor
    inv = _inverse(d)
    for j in range(BLOCK):
        q[j] = min(_as_byte(x[b + j] * inv + offset), top)
    return d


@njit(cache=True)
def _affine_codes(q, x, b, levels, top):
    """q[j] = clip(trunc((x - min)/d + 0.5)) with d = (max - min) / levels; returns (d, min)."""
    lo, hi = _min_max(x, b)
    d = (hi - lo) / levels
    inv = _inverse(d)
    for j in range(BLOCK):
        q[j] = min(_as_byte((x[b + j] - lo) * inv + np.float32(0.5)), top)
    return d, lo


@njit(cache=True)
def pack_nibbles(out, o, q):
    """out[o + j] = low 4 bits of q[j] | q[j + 16] << 4, for j < 16."""
    for j in range(16):
        out[o + j] = (q[j] & 0xF) | ((q[j + 16] << 4) & 0xF0)


@njit(cache=True)
def _pack_fifth_bits(out, o, q):
    """The little-endian uint32 at out[o:o+4] gets bit 4 of q[j] as its bit j."""
    for k in range(4):
        byte = 0
        for j in range(8):
            byte |= ((q[8 * k + j] >> 4) & 1) << j
        out[o + k] = byte


# ---- block quantizers: the block at out u8[o:], from x f32[b : b+32]; q: i64[32] scratch ----

@njit(cache=True)
def _quantize_q4_0(out, o, x, b, q):
    _store_half(out, o, q4_0_codes(q, x, b))
    pack_nibbles(out, o + 2, q)


@njit(cache=True)
def _quantize_q5_0(out, o, x, b, q):
    _store_half(out, o, _symmetric_codes(q, x, b, np.float32(-16.0), np.float32(16.5), 31))
    _pack_fifth_bits(out, o + 2, q)
    pack_nibbles(out, o + 6, q)


@njit(cache=True)
def _quantize_q4_1(out, o, x, b, q):
    d, m = _affine_codes(q, x, b, np.float32(15.0), 15)
    _store_half(out, o, d)
    _store_half(out, o + 2, m)
    pack_nibbles(out, o + 4, q)


@njit(cache=True)
def _quantize_q5_1(out, o, x, b, q):
    d, m = _affine_codes(q, x, b, np.float32(31.0), 31)
    _store_half(out, o, d)
    _store_half(out, o + 2, m)
    _pack_fifth_bits(out, o + 4, q)
    pack_nibbles(out, o + 8, q)


@njit(cache=True)
def q8_0_codes(q, x, b):
    """q[j] = the byte of x/d rounded half away from zero (two's complement), d = max|x| / 127
    over x[b : b+32]; returns d (Q8_0's codes; the KV cache's q8_0 rows use them too)."""
    amax = np.float32(0.0)
    for j in range(BLOCK):
        amax = max(amax, abs(x[b + j]))
    d = amax / np.float32(127.0)
    inv = _inverse(d)
    for j in range(BLOCK):
        q[j] = _as_byte(_round_away(x[b + j] * inv))
    return d


@njit(cache=True)
def q4_0_codes(q, x, b):
    """Q4_0's codes of x[b : b+32] in q (0..15); returns d (see _symmetric_codes)."""
    return _symmetric_codes(q, x, b, np.float32(-8.0), np.float32(8.5), 15)


@njit(cache=True)
def _quantize_q8_0(out, o, x, b, q):
    _store_half(out, o, q8_0_codes(q, x, b))
    for j in range(BLOCK):
        out[o + 2 + j] = q[j]


def _quantize_rows(out, x):
    """out u8[rows, n / 32 * BYTES] <- x f32[rows, n], block by block."""
    n_blocks = x.shape[1] // BLOCK
    if x.shape[1] != n_blocks * BLOCK or out.shape[0] != x.shape[0] or out.shape[1] != n_blocks * BYTES:
        raise ValueError("quantize: shapes of out and x do not agree with the block size")
    for r in prange(x.shape[0]):
        q = np.empty(BLOCK, dtype=np.int64)
        for i in range(n_blocks):
            quantize_block(out[r], i * BYTES, x[r], i * BLOCK, q)


def _quantizer(qtype, quantize_block):
    """The registry's quantize(x f32[rows, n]) -> u8[rows, row_bytes] for one type."""
    nbytes = GGML_QUANT_SIZES[qtype][1]
    kernel = specialize(_quantize_rows, f"quantize_{qtype.name.lower()}",
                        quantize_block=quantize_block, BYTES=nbytes)

    def quantize(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] % BLOCK:
            raise ValueError(f"{qtype.name}: expected rows of a multiple of {BLOCK} values, got shape {x.shape}")
        bad = ~np.isfinite(x)
        if bad.any():
            row = int(np.argmax(bad.any(axis=1)))
            raise ValueError(f"{qtype.name}: cannot quantize non-finite values ({int(bad.sum())} found, first in row {row})")
        out = np.empty((x.shape[0], x.shape[1] // BLOCK * nbytes), dtype=np.uint8)
        kernel(out, x)
        return out

    quantize.__name__ = quantize.__qualname__ = f"quantize_{qtype.name.lower()}"
    return quantize


QUANTIZERS = {qtype: _quantizer(qtype, fn) for qtype, fn in ((T.Q4_0, _quantize_q4_0),
                                                            (T.Q4_1, _quantize_q4_1),
                                                            (T.Q5_0, _quantize_q5_0),
                                                            (T.Q5_1, _quantize_q5_1),
                                                            (T.Q8_0, _quantize_q8_0))}
