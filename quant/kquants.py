"""K-quant types Q2_K..Q6_K and the Q8_K activation format: block layouts and dequantization.

Every K-quant block covers QK_K = 256 weights ("super-block") split into sub-blocks of 16 or 32
that carry their own small integer scale (and min), which the block's f16 `d` (and `dmin`)
scale back to float. Byte layouts, in block order:

  Q2_K  84 B: scales[16] (lo nibble scale, hi nibble min) | qs[64] 2-bit | d f16 | dmin f16
  Q3_K 110 B: hmask[32] high bit | qs[64] low 2 bits | scales[12] 6-bit packed | d f16
  Q4_K 144 B: d f16 | dmin f16 | scales[12] 6-bit scale+min packed | qs[128] 4-bit
  Q5_K 176 B: d f16 | dmin f16 | scales[12] as Q4_K | qh[32] high bit | qs[128] low 4 bits
  Q6_K 210 B: ql[128] low 4 bits | qh[64] high 2 bits | scales[16] int8 | d f16
  Q8_K 292 B: d f32 | qs[256] int8 | bsums[16] int16 (sums of each 16 quants)

Which bits of which byte feed element e of a block is spelled out in each `decode_*` below.
The decoders reproduce gguf-py's float32 operation order exactly (`(d*sc)*q - (dmin*m)`) so
that `dequantize` is bit-identical to `gguf.quants.dequantize`; they are compiled without
fastmath for that reason (no fused multiply-add).

Q8_K is also the activation format of the registered K-quant matvec/matmul kernels (int8
activations, kquants_int8.py); their float reference twins are in kquants_dot.py. This module
registers all six types at its end. Numba's on-disk cache does not notice edits in a module a
cached function inlines from, so after changing a helper here, clear quant/__pycache__.
"""
from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from numba import literally, njit, prange, types
from numba.extending import overload

from .float_bits import f16_bits_to_f32, i32_as_f32, nearest_int

QK_K = 256
Q2_K_BYTES = GGML_QUANT_SIZES[T.Q2_K][1]
Q3_K_BYTES = GGML_QUANT_SIZES[T.Q3_K][1]
Q4_K_BYTES = GGML_QUANT_SIZES[T.Q4_K][1]
Q5_K_BYTES = GGML_QUANT_SIZES[T.Q5_K][1]
Q6_K_BYTES = GGML_QUANT_SIZES[T.Q6_K][1]
Q8_K_BYTES = GGML_QUANT_SIZES[T.Q8_K][1]


@njit(cache=True, inline="always")
def f16_at(b, i):
    """The little-endian IEEE half at b[i:i+2] (u8 array) as float32, exactly."""
    return f16_bits_to_f32(np.int64(b[i]) | (np.int64(b[i + 1]) << 8))


@njit(cache=True, inline="always")
def f32_at(b, i):
    """The little-endian float32 at b[i:i+4] (u8 array)."""
    bits = (np.int64(b[i]) | (np.int64(b[i + 1]) << 8)
            | (np.int64(b[i + 2]) << 16) | (np.int64(b[i + 3]) << 24))
    return i32_as_f32(np.int32(bits))  # the int32 conversion keeps the low 32 bits


@njit(cache=True, inline="always")
def i8_at(b, i):
    v = np.int64(b[i])
    return v - 256 if v >= 128 else v


@njit(cache=True, inline="always")
def i16_at(b, i):
    v = np.int64(b[i]) | (np.int64(b[i + 1]) << 8)
    return v - 65536 if v >= 32768 else v


@njit(cache=True, inline="always")
def scale_min_k4(b, i, s):
    """6-bit (scale, min) of sub-block s (0..7) from the 12 packed bytes at b[i:i+12] (Q4_K, Q5_K).

    Bytes 0-3 hold scales 0-3 in their low 6 bits, bytes 4-7 mins 0-3; sub-blocks 4-7 take
    their low 4 bits from the nibbles of bytes 8-11 and their top 2 bits from the spare
    high bits of bytes 0-3 (scales) and 4-7 (mins).
    """
    if s < 4:
        return np.int64(b[i + s]) & 63, np.int64(b[i + s + 4]) & 63
    packed = np.int64(b[i + s + 4])
    sc = (packed & 0xF) | ((np.int64(b[i + s - 4]) >> 6) << 4)
    m = (packed >> 4) | ((np.int64(b[i + s]) >> 6) << 4)
    return sc, m


@njit(cache=True, inline="always")
def scale_q3_k(b, i, s):
    """Signed 6-bit scale (-32..31) of sub-block s (0..15) from the 12 bytes at b[i:i+12] (Q3_K).

    Low 4 bits: nibble s%8 of bytes 0-7 (low nibbles for s<8, high for s>=8); high 2 bits:
    bits 2*(s//4) of byte 8 + s%4.
    """
    lo = (np.int64(b[i + s]) & 0xF) if s < 8 else (np.int64(b[i + s - 8]) >> 4)
    hi = (np.int64(b[i + 8 + (s & 3)]) >> (2 * (s >> 2))) & 3
    return (lo | (hi << 4)) - 32


# ---- block decoders: decode_X(out f32[:], o, b u8[:], i) writes the 256 floats of the block at b[i:]
#      to out[o:o+256]. Element e sits in sub-block e//16 (or e//32); its bits are noted per type.

@njit(cache=True, inline="always")
def decode_q2_k(out, o, b, i):
    # e = 128*h + 32*j + l: bits 2j..2j+1 of qs[32*h + l]; sub-block e//16 has scale/min scales[e//16].
    d = f16_at(b, i + 80)
    dmin = f16_at(b, i + 82)
    for s in range(16):
        dl = d * np.float32(b[i + s] & 0xF)
        ml = dmin * np.float32(b[i + s] >> 4)
        q0 = i + 16 + 32 * (s >> 3) + 16 * (s & 1)
        shift = 2 * ((s >> 1) & 3)
        for l in range(16):
            out[o + 16 * s + l] = dl * np.float32((b[q0 + l] >> shift) & 3) - ml


@njit(cache=True, inline="always")
def decode_q3_k(out, o, b, i):
    # Low bits as Q2_K; high bit of e is bit e//32 of hmask[e%32]; a clear high bit means q-4.
    d = f16_at(b, i + 108)
    for s in range(16):
        dl = d * np.float32(scale_q3_k(b, i + 96, s))
        q0 = i + 32 + 32 * (s >> 3) + 16 * (s & 1)
        h0 = i + 16 * (s & 1)
        shift = 2 * ((s >> 1) & 3)
        hbit = s >> 1
        for l in range(16):
            q = np.int64((b[q0 + l] >> shift) & 3) - (0 if (b[h0 + l] >> hbit) & 1 else 4)
            out[o + 16 * s + l] = dl * np.float32(q)


@njit(cache=True, inline="always")
def decode_q4_k(out, o, b, i):
    # e = 64*c + 32*h + l: nibble h of qs[32*c + l]; sub-block s = e//32 = 2c + h.
    d = f16_at(b, i)
    dmin = f16_at(b, i + 2)
    for s in range(8):
        sc, m = scale_min_k4(b, i + 4, s)
        dl = d * np.float32(sc)
        ml = dmin * np.float32(m)
        q0 = i + 16 + 32 * (s >> 1)
        shift = 4 * (s & 1)
        for l in range(32):
            out[o + 32 * s + l] = dl * np.float32((b[q0 + l] >> shift) & 0xF) - ml


@njit(cache=True, inline="always")
def decode_q5_k(out, o, b, i):
    # Low 4 bits as Q4_K (qs at byte 48); 5th bit of e is bit e//32 of qh[e%32].
    d = f16_at(b, i)
    dmin = f16_at(b, i + 2)
    for s in range(8):
        sc, m = scale_min_k4(b, i + 4, s)
        dl = d * np.float32(sc)
        ml = dmin * np.float32(m)
        q0 = i + 48 + 32 * (s >> 1)
        shift = 4 * (s & 1)
        for l in range(32):
            q = ((b[q0 + l] >> shift) & 0xF) | (((b[i + 16 + l] >> s) & 1) << 4)
            out[o + 32 * s + l] = dl * np.float32(q) - ml


@njit(cache=True, inline="always")
def decode_q6_k(out, o, b, i):
    # e = 128*h + r: low 4 bits are nibble r//64 of ql[64*h + r%64], high 2 bits are
    # bits 2*(r//32) of qh[32*h + r%32]; value q - 32, scale int8 scales[e//16].
    d = f16_at(b, i + 208)
    for s in range(16):
        dl = d * np.float32(i8_at(b, i + 192 + s))
        r0 = 16 * (s & 7)
        lo0 = i + 64 * (s >> 3) + (r0 & 63)
        lo_shift = 4 * (r0 >> 6)
        hi0 = i + 128 + 32 * (s >> 3) + (r0 & 31)
        hi_shift = 2 * (r0 >> 5)
        for l in range(16):
            q = ((b[lo0 + l] >> lo_shift) & 0xF) | (((b[hi0 + l] >> hi_shift) & 3) << 4)
            out[o + 16 * s + l] = dl * np.float32(np.int64(q) - 32)


@njit(cache=True, inline="always")
def decode_q8_k(out, o, b, i):
    d = f32_at(b, i)
    for l in range(QK_K):
        out[o + l] = d * np.float32(i8_at(b, i + 4 + l))


# ---- compile-time tables: generic kernels take the GGML type number as a literal argument and
#      these overloads resolve it to the type's block function while Numba compiles (no run-time
#      branching on the type).

def table_entry(table, qtype):
    """table[qtype] for a Numba literal type number; None (no match) for a non-literal."""
    if not isinstance(qtype, types.IntegerLiteral):
        return None
    return table[qtype.literal_value]


_K_TYPES = (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_K)
_BLOCK_BYTES = {int(t): GGML_QUANT_SIZES[t][1] for t in _K_TYPES}
_DECODERS = dict(zip(_BLOCK_BYTES, (decode_q2_k, decode_q3_k, decode_q4_k,
                                    decode_q5_k, decode_q6_k, decode_q8_k)))


def block_bytes(qtype):
    """Numba-only: bytes per block of the literal type number `qtype`, a compile-time constant."""
    raise NotImplementedError("block_bytes is callable from Numba code only")


@overload(block_bytes, inline="always")
def _block_bytes(qtype):
    nbytes = table_entry(_BLOCK_BYTES, qtype)
    return None if nbytes is None else (lambda qtype: nbytes)


def decode_block(qtype, out, o, b, i):
    """Numba-only: decode the block of literal type `qtype` at b[i:] into out[o:o+256]."""
    raise NotImplementedError("decode_block is callable from Numba code only")


@overload(decode_block, inline="always")
def _decode_block(qtype, out, o, b, i):
    decode = table_entry(_DECODERS, qtype)
    return None if decode is None else (lambda qtype, out, o, b, i: decode(out, o, b, i))


@njit(cache=True, parallel=True)
def dequantize_blocks(out, blocks, qtype):
    """out f32[n_blocks*256] <- blocks u8[n_blocks*type_size] of the literal type number `qtype`."""
    nbytes = block_bytes(literally(qtype))
    n_blocks = blocks.size // nbytes
    if blocks.size != n_blocks * nbytes or out.size != n_blocks * QK_K:
        raise ValueError("dequantize: block bytes and output length do not match")
    for blk in prange(n_blocks):
        decode_block(qtype, out, blk * QK_K, blocks, blk * nbytes)


# Numba caches only module-level functions called with concrete types, so each type gets a
# one-line entry point that fixes the literal type number (globals are compile-time constants).
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K = (int(t) for t in _K_TYPES)

@njit(cache=True)
def dequantize_q2_k(out, blocks):
    """out f32[n_blocks*256] <- blocks u8[n_blocks*84] (Q2_K)."""
    dequantize_blocks(out, blocks, Q2_K)


@njit(cache=True)
def dequantize_q3_k(out, blocks):
    """out f32[n_blocks*256] <- blocks u8[n_blocks*110] (Q3_K)."""
    dequantize_blocks(out, blocks, Q3_K)


@njit(cache=True)
def dequantize_q4_k(out, blocks):
    """out f32[n_blocks*256] <- blocks u8[n_blocks*144] (Q4_K)."""
    dequantize_blocks(out, blocks, Q4_K)


@njit(cache=True)
def dequantize_q5_k(out, blocks):
    """out f32[n_blocks*256] <- blocks u8[n_blocks*176] (Q5_K)."""
    dequantize_blocks(out, blocks, Q5_K)


@njit(cache=True)
def dequantize_q6_k(out, blocks):
    """out f32[n_blocks*256] <- blocks u8[n_blocks*210] (Q6_K)."""
    dequantize_blocks(out, blocks, Q6_K)


@njit(cache=True)
def dequantize_q8_k(out, blocks):
    """out f32[n_blocks*256] <- blocks u8[n_blocks*292] (Q8_K)."""
    dequantize_blocks(out, blocks, Q8_K)


# ---- Q8_K: the activation format of the int8 dot kernels (kquants_int8.py)

@njit(cache=True)
def quantize_q8_k_parts(d, qs, bsums, x):
    """x f32[n] (n % 256 == 0) -> d f32[n/256], qs i8[n], bsums i16[n/16], as llama.cpp.

    Per block: the value of largest magnitude maps to -127 (scale -127/max), the rest round
    half to even and clip at 127; an all-zero block gets d = 0 and zero quants and sums.
    """
    n_blocks = x.size // QK_K
    if x.size % QK_K or d.size != n_blocks or qs.size != x.size or bsums.size != 16 * n_blocks:
        raise ValueError("quantize_q8_k_parts: x length must be a multiple of 256 matching d, qs, bsums")
    for blk in range(n_blocks):
        o = blk * QK_K
        amax = np.float32(0.0)
        vmax = np.float32(0.0)
        for j in range(QK_K):
            a = abs(x[o + j])
            if a > amax:
                amax = a
                vmax = x[o + j]
        if amax == 0:
            d[blk] = 0.0
            qs[o:o + QK_K] = 0
            bsums[16 * blk:16 * blk + 16] = 0
            continue
        iscale = np.float32(-127.0) / vmax
        for j in range(QK_K):
            qs[o + j] = min(127, nearest_int(iscale * x[o + j]))
        for s in range(16):
            total = 0
            for j in range(16):
                total += qs[o + 16 * s + j]
            bsums[16 * blk + s] = total
        d[blk] = np.float32(1.0) / iscale


Q8_K_BLOCK = np.dtype([("d", "<f4"), ("qs", "i1", QK_K), ("bsums", "<i2", 16)])
assert Q8_K_BLOCK.itemsize == Q8_K_BYTES


def quantize_q8_k(x: np.ndarray) -> np.ndarray:
    """f32 (rows, n) -> u8 (rows, n/256*292) Q8_K blocks (the registry's quantize)."""
    rows, n = x.shape
    d = np.empty(rows * n // QK_K, np.float32)
    qs = np.empty(rows * n, np.int8)
    bsums = np.empty(rows * n // 16, np.int16)
    quantize_q8_k_parts(d, qs, bsums, np.ascontiguousarray(x, np.float32).reshape(-1))
    blocks = np.empty(d.size, Q8_K_BLOCK)
    blocks["d"] = d
    blocks["qs"] = qs.reshape(-1, QK_K)
    blocks["bsums"] = bsums.reshape(-1, 16)
    return blocks.view(np.uint8).reshape(rows, -1)


# ---- registration (the kernel modules import this one's decoders, so they are imported last)
#      Registered matvec/matmul are the int8-activation kernels (kquants_int8, 4-10x faster);
#      kquants_dot keeps the float kernels as their reference twins and serves Q8_K weights.

from .registry import QuantType, register  # noqa: E402
from . import kquants_dot as _float_dot, kquants_int8 as _int8  # noqa: E402

for _t, _deq, _mv, _mm, _rows in (
    (T.Q2_K, dequantize_q2_k, _int8.matvec_int8_q2_k, _int8.matmul_int8_q2_k, _int8.matmul_rows_int8_q2_k),
    (T.Q3_K, dequantize_q3_k, _int8.matvec_int8_q3_k, _int8.matmul_int8_q3_k, _int8.matmul_rows_int8_q3_k),
    (T.Q4_K, dequantize_q4_k, _int8.matvec_int8_q4_k, _int8.matmul_int8_q4_k, _int8.matmul_rows_int8_q4_k),
    (T.Q5_K, dequantize_q5_k, _int8.matvec_int8_q5_k, _int8.matmul_int8_q5_k, _int8.matmul_rows_int8_q5_k),
    (T.Q6_K, dequantize_q6_k, _int8.matvec_int8_q6_k, _int8.matmul_int8_q6_k, _int8.matmul_rows_int8_q6_k),
):
    register(QuantType(_t, dequantize=_deq, matvec=_mv, matmul=_mm, quantize=None, matmul_rows=_rows))
register(QuantType(T.Q8_K, dequantize=dequantize_q8_k, matvec=_float_dot.matvec_q8_k,
                   matmul=_float_dot.matmul_q8_k, quantize=quantize_q8_k))
