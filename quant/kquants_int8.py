"""K-quant matvec with int8 activations (ggml's Q8_K path): the decode hot function.

x is quantized once per call to Q8_K parts (per 256 values a float scale, 256 int8 and the
sums of each 16 of them, `quantize_q8_k_parts`, bit-identical to llama.cpp's reference),
and every weight block is then dotted with it in integer arithmetic:

  sum_e w_e x_e  ~  dx * (d * sum_s sc_s * sum_{e in s} q_e xq_e  -  dmin * sum_s m_s * bsum_s)

All five types share one shape. A block is 8 groups of 32 unsigned quants in element order
(offsets such as Q3_K's -4 and Q6_K's -32 are moved into the bsum term); each group is
multiplied with its 32 int8 activations into 16 pair sums (`pmaddubsw`), those are
multiplied by the group's sub-block scales and summed into 8 int32 lanes (`pmaddwd`), and
the lanes are reduced once per block. This is written as LLVM vector IR because Numba
widens every integer product to int64, which vectorizes four times narrower. On x86 with
AVX2 the two multiply-add steps are the named instructions; elsewhere the same arithmetic is
plain vector IR that LLVM lowers for the target (no sum here can saturate int16: at most
2 * 63 * 128).

Each `block_sums_X(w, i, xq, xo, bsums, so)` intrinsic returns (isum, corr) for the block at
w[i:] against xq[xo:xo+256] and bsums[so:so+16]; `dot_int8_X` applies the block's f16 scales.
"""
from __future__ import annotations

import numpy as np
from llvmlite import binding as llvm_binding, ir
from numba import literally, njit, prange, types
from numba.core import cgutils, config
from numba.extending import intrinsic, overload

from .float_bits import nearest_int
from .kquants import (QK_K, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K_BYTES, block_bytes,
                      f16_at, table_entry)
from .kquants_dot import check_dot_shapes

# ---- activation quantization (Q8_K) -------------------------------------------------------

@njit(cache=True)
def quantize_q8_k_parts(d, qs, bsums, x):
    """x f32[n] (n % 256 == 0) -> d f32[n/256], qs i8[n], bsums i16[n/16], as llama.cpp.

    Per block: the value of largest magnitude maps to -127 (scale -127/max), the rest round
    half to even and clip at 127; an all-zero block gets d = 0 and zero quants and sums.
    """
    for blk in range(x.size // QK_K):
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


# ---- vector IR building blocks ------------------------------------------------------------

_I8, _I16, _I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
# The AVX2 instructions are named only when Numba compiles for this host (NUMBA_CPU_NAME
# unset); a cache is tied to the CPU it was built on, so the choice is fixed per cache.
X86_AVX2 = config.CPU_NAME is None and bool(llvm_binding.get_host_cpu_features().get("avx2", False))


def _vec(t, n):
    return ir.VectorType(t, n)


def _consts(t, values):
    return ir.Constant(_vec(t, len(values)), [ir.Constant(t, v) for v in values])


class _Block:
    """IR helpers bound to one block of weights w[i:] and activations xq[xo:], bsums[so:]."""

    def __init__(self, context, builder, sig, args):
        self.b = builder
        w, self.i, xq, self.xo, bsums, self.so = args
        self.wp = context.make_array(sig.args[0])(context, builder, w).data
        self.xp = context.make_array(sig.args[2])(context, builder, xq).data
        self.bp = context.make_array(sig.args[4])(context, builder, bsums).data
        self.acc = ir.Constant(_vec(_I32, 8), None)

    def _load(self, ptr, base, offset, ty, n):
        p = self.b.gep(ptr, [self.b.add(base, ir.Constant(base.type, offset))])
        return self.b.load(self.b.bitcast(p, _vec(ty, n).as_pointer()), align=1)

    def weights(self, offset, n):
        """<n x i8>: block bytes offset..offset+n (must lie inside the block)."""
        return self._load(self.wp, self.i, offset, _I8, n)

    def widen(self, v, signed=False):
        """<n x i8> -> <n x i16>."""
        ty = _vec(_I16, v.type.count)
        return self.b.sext(v, ty) if signed else self.b.zext(v, ty)

    def shuffle(self, v, lanes):
        return self.b.shuffle_vector(v, v, _consts(_I32, list(lanes)))

    def band(self, v, mask):
        return self.b.and_(v, _consts(v.type.element, [mask] * v.type.count))

    def shr(self, v, bits):
        """Logical right shift by a constant or by per-lane constants."""
        bits = [bits] * v.type.count if isinstance(bits, int) else list(bits)
        return self.b.lshr(v, _consts(v.type.element, bits))

    def shl(self, v, bits):
        return self.b.shl(v, _consts(v.type.element, [bits] * v.type.count))

    def bor(self, a, b):
        return self.b.or_(a, b)

    def add_group(self, g, quants, scales16):
        """acc += sum over group g's 32 (unsigned) quants * activations, weighted by scales16.

        quants: <32 x i8> non-negative; scales16: <16 x i16>, lane j weighting elements 2j, 2j+1.
        """
        x = self._load(self.xp, self.xo, 32 * g, _I8, 32)
        self.acc = self.b.add(self.acc, self._madd_words(self._madd_bytes(quants, x), scales16))

    def bsum_dot(self, coefs16):
        """sum_s coefs16[s] * bsums[so + s] over the block's 16 sub-sums (i32)."""
        return self._reduce(self._madd_words(self._load(self.bp, self.so, 0, _I16, 16), coefs16))

    def total(self):
        return self._reduce(self.acc)

    def result(self, context, isum, corr):
        return context.make_tuple(self.b, types.UniTuple(types.int32, 2), [isum, corr])

    # products of adjacent pairs summed: u8 x i8 -> i16 and i16 x i16 -> i32
    def _pairs(self, v, widen):
        n = v.type.count
        even = self.b.shuffle_vector(v, v, _consts(_I32, range(0, n, 2)))
        odd = self.b.shuffle_vector(v, v, _consts(_I32, range(1, n, 2)))
        return widen(even), widen(odd)

    def _madd_bytes(self, u, s):
        if X86_AVX2:
            return self._call("llvm.x86.avx2.pmadd.ub.sw", _vec(_I16, 16), [u, s])
        ue, uo = self._pairs(u, lambda v: self.b.zext(v, _vec(_I16, 16)))
        se, so = self._pairs(s, lambda v: self.b.sext(v, _vec(_I16, 16)))
        return self.b.add(self.b.mul(ue, se), self.b.mul(uo, so))

    def _madd_words(self, a, c):
        if X86_AVX2:
            return self._call("llvm.x86.avx2.pmadd.wd", _vec(_I32, 8), [a, c])
        ae, ao = self._pairs(a, lambda v: self.b.sext(v, _vec(_I32, 8)))
        ce, co = self._pairs(c, lambda v: self.b.sext(v, _vec(_I32, 8)))
        return self.b.add(self.b.mul(ae, ce), self.b.mul(ao, co))

    def _reduce(self, v):
        return self._call(f"llvm.vector.reduce.add.v{v.type.count}i32", _I32, [v])

    def _call(self, name, ret, args):
        fn = cgutils.get_or_insert_function(self.b.module, ir.FunctionType(ret, [a.type for a in args]), name)
        return self.b.call(fn, args)


def _block_intrinsic(emit):
    """An intrinsic (w u8[:], i, xq i8[:], xo, bsums i16[:], so) -> (isum, corr) int32 pair."""
    def typer(typingctx, w, i, xq, xo, bsums, so):
        sig = types.UniTuple(types.int32, 2)(w, i, xq, xo, bsums, so)

        def codegen(context, builder, signature, args):
            blk = _Block(context, builder, signature, args)
            return blk.result(context, *emit(blk))
        return sig, codegen
    typer.__name__ = emit.__name__
    return intrinsic(typer)


def _per16(blk, scales, g):
    """<16 x i16> weights of group g when sub-blocks are 16 wide: scales[2g] x8, scales[2g+1] x8."""
    return blk.shuffle(scales, [2 * g] * 8 + [2 * g + 1] * 8)


def _per32(blk, scales8, g):
    return blk.shuffle(scales8, [g] * 16)


def _scales_mins_k4(blk):
    """The 8 scales and 8 mins of Q4_K/Q5_K (bytes 4..15, see kquants.scale_min_k4) as <8 x i16>."""
    v = blk.widen(blk.weights(4, 16))
    top = blk.shl(blk.shr(blk.shuffle(v, [0, 1, 2, 3, 0, 1, 2, 3]), 6), 4)  # bits 6-7 of bytes 0-3
    top_m = blk.shl(blk.shr(blk.shuffle(v, [4, 5, 6, 7, 4, 5, 6, 7]), 6), 4)  # bits 6-7 of bytes 4-7
    high_half = [0] * 4 + [0xFFFF] * 4
    sc = blk.bor(blk.b.and_(blk.shuffle(v, [0, 1, 2, 3, 8, 9, 10, 11]), _consts(_I16, [63] * 4 + [15] * 4)),
                 blk.b.and_(top, _consts(_I16, high_half)))
    m = blk.bor(blk.b.and_(blk.shr(blk.shuffle(v, [4, 5, 6, 7, 8, 9, 10, 11]), [0] * 4 + [4] * 4),
                           _consts(_I16, [63] * 4 + [15] * 4)),
                blk.b.and_(top_m, _consts(_I16, high_half)))
    return sc, m


# ---- the five block layouts (see kquants.py for the byte maps) -----------------------------

@_block_intrinsic
def block_sums_q2_k(blk):
    bytes16 = blk.widen(blk.weights(0, 16))
    scales, mins = blk.band(bytes16, 0xF), blk.shr(bytes16, 4)
    for h in range(2):
        qs = blk.weights(16 + 32 * h, 32)
        for j in range(4):
            g = 4 * h + j
            blk.add_group(g, blk.band(blk.shr(qs, 2 * j), 3), _per16(blk, scales, g))
    return blk.total(), blk.bsum_dot(mins)


@_block_intrinsic
def block_sums_q3_k(blk):
    # q + 4 = low 2 bits | high bit << 2 (0..7); corr = sum_s sc_s * bsum_s, weighted by 4.
    v = blk.widen(blk.weights(94, 16))  # bytes 94..109: the 12 scale bytes start at lane 2
    low = blk.band(blk.shr(blk.shuffle(v, [2 + (s & 7) for s in range(16)]), [0] * 8 + [4] * 8), 0xF)
    high = blk.band(blk.shr(blk.shuffle(v, [10 + (s & 3) for s in range(16)]),
                            [2 * (s >> 2) for s in range(16)]), 3)
    scales = blk.b.sub(blk.bor(low, blk.shl(high, 4)), _consts(_I16, [32] * 16))
    hmask = blk.weights(0, 32)
    for h in range(2):
        qs = blk.weights(32 + 32 * h, 32)
        for j in range(4):
            g = 4 * h + j
            q = blk.bor(blk.band(blk.shr(qs, 2 * j), 3), blk.shl(blk.band(blk.shr(hmask, g), 1), 2))
            blk.add_group(g, q, _per16(blk, scales, g))
    return blk.total(), blk.bsum_dot(scales)


@_block_intrinsic
def block_sums_q4_k(blk):
    scales, mins = _scales_mins_k4(blk)
    for c in range(4):
        qs = blk.weights(16 + 32 * c, 32)
        blk.add_group(2 * c, blk.band(qs, 0xF), _per32(blk, scales, 2 * c))
        blk.add_group(2 * c + 1, blk.shr(qs, 4), _per32(blk, scales, 2 * c + 1))
    return blk.total(), blk.bsum_dot(blk.shuffle(mins, [s // 2 for s in range(16)]))


@_block_intrinsic
def block_sums_q5_k(blk):
    scales, mins = _scales_mins_k4(blk)
    qh = blk.weights(16, 32)
    for c in range(4):
        qs = blk.weights(48 + 32 * c, 32)
        for h, nibble in enumerate((blk.band(qs, 0xF), blk.shr(qs, 4))):
            g = 2 * c + h
            q = blk.bor(nibble, blk.shl(blk.band(blk.shr(qh, g), 1), 4))
            blk.add_group(g, q, _per32(blk, scales, g))
    return blk.total(), blk.bsum_dot(blk.shuffle(mins, [s // 2 for s in range(16)]))


@_block_intrinsic
def block_sums_q6_k(blk):
    # q + 32 = 4 low bits | 2 high bits << 4 (0..63); corr = sum_s sc_s * bsum_s, weighted by 32.
    scales = blk.widen(blk.weights(192, 16), signed=True)
    for h in range(2):
        ql_a = blk.weights(64 * h, 32)
        ql_b = blk.weights(64 * h + 32, 32)
        qh = blk.weights(128 + 32 * h, 32)
        for k, low in enumerate((blk.band(ql_a, 0xF), blk.band(ql_b, 0xF), blk.shr(ql_a, 4), blk.shr(ql_b, 4))):
            g = 4 * h + k
            q = blk.bor(low, blk.shl(blk.band(blk.shr(qh, 2 * k), 3), 4))
            blk.add_group(g, q, _per16(blk, scales, g))
    return blk.total(), blk.bsum_dot(scales)


# ---- per-type block value (before the activation scale) and the generic kernel -----------

@njit(inline="always")
def dot_int8_q2_k(w, i, xq, xo, bsums, so):
    isum, msum = block_sums_q2_k(w, i, xq, xo, bsums, so)
    return f16_at(w, i + 80) * np.float32(isum) - f16_at(w, i + 82) * np.float32(msum)


@njit(inline="always")
def dot_int8_q3_k(w, i, xq, xo, bsums, so):
    isum, corr = block_sums_q3_k(w, i, xq, xo, bsums, so)
    return f16_at(w, i + 108) * np.float32(isum - 4 * corr)


@njit(inline="always")
def dot_int8_q4_k(w, i, xq, xo, bsums, so):
    isum, msum = block_sums_q4_k(w, i, xq, xo, bsums, so)
    return f16_at(w, i) * np.float32(isum) - f16_at(w, i + 2) * np.float32(msum)


@njit(inline="always")
def dot_int8_q5_k(w, i, xq, xo, bsums, so):
    isum, msum = block_sums_q5_k(w, i, xq, xo, bsums, so)
    return f16_at(w, i) * np.float32(isum) - f16_at(w, i + 2) * np.float32(msum)


@njit(inline="always")
def dot_int8_q6_k(w, i, xq, xo, bsums, so):
    isum, corr = block_sums_q6_k(w, i, xq, xo, bsums, so)
    return f16_at(w, i + 208) * np.float32(isum - 32 * corr)


_DOTS = {Q2_K: dot_int8_q2_k, Q3_K: dot_int8_q3_k, Q4_K: dot_int8_q4_k,
         Q5_K: dot_int8_q5_k, Q6_K: dot_int8_q6_k}


def dot_int8_block(qtype, w, i, xq, xo, bsums, so):
    """Numba-only: the block of literal type `qtype` at w[i:] against Q8_K parts (no dx)."""
    raise NotImplementedError("dot_int8_block is callable from Numba code only")


@overload(dot_int8_block, inline="always")
def _dot_int8_block(qtype, w, i, xq, xo, bsums, so):
    dot = table_entry(_DOTS, qtype)
    return None if dot is None else (lambda qtype, w, i, xq, xo, bsums, so: dot(w, i, xq, xo, bsums, so))


@njit(cache=True, parallel=True)
def matvec_int8_rows(out, w, x, qtype):
    """out f32[rows] <- w (u8[rows, row_bytes], literal type `qtype`) @ x f32[n], via Q8_K x."""
    nbytes = block_bytes(literally(qtype))
    n = x.size
    check_dot_shapes(out.size, w, n, nbytes)
    n_blocks = n // QK_K
    xd = np.empty(n_blocks, np.float32)
    xq = np.empty(n, np.int8)
    bsums = np.empty(n // 16, np.int16)
    quantize_q8_k_parts(xd, xq, bsums, x)
    for r in prange(w.shape[0]):
        row = w[r]
        acc = np.float32(0.0)
        for blk in range(n_blocks):
            acc += xd[blk] * dot_int8_block(qtype, row, blk * nbytes, xq, blk * QK_K, bsums, blk * 16)
        out[r] = acc


_ROW_TILE = 4  # weight rows per matmul work item: each activation block loaded serves 4 rows


@njit(cache=True, parallel=True)
def matmul_int8_rows(out, w, x, qtype):
    """out f32[t, rows] <- x f32[t, n] @ w.T for w u8[rows, row_bytes] of literal type `qtype`."""
    nbytes = block_bytes(literally(qtype))
    t, n = x.shape
    check_dot_shapes(out.shape[1], w, n, nbytes)
    if out.shape[0] != t:
        raise ValueError("K-quant matmul: output rows do not match the activation rows")
    n_blocks = n // QK_K
    xd = np.empty((t, n_blocks), np.float32)
    xq = np.empty((t, n), np.int8)
    bsums = np.empty((t, n // 16), np.int16)
    for i in prange(t):
        quantize_q8_k_parts(xd[i], xq[i], bsums[i], x[i])
    rows = w.shape[0]
    for tile in prange((rows + _ROW_TILE - 1) // _ROW_TILE):
        r0 = tile * _ROW_TILE
        nr = min(_ROW_TILE, rows - r0)
        acc = np.empty(_ROW_TILE, np.float32)
        for i in range(t):
            acc[:] = 0.0
            xqi = xq[i]
            bsi = bsums[i]
            for blk in range(n_blocks):
                for k in range(nr):
                    acc[k] += xd[i, blk] * dot_int8_block(qtype, w[r0 + k], blk * nbytes, xqi,
                                                          blk * QK_K, bsi, blk * 16)
            for k in range(nr):
                out[i, r0 + k] = acc[k]


# One entry point per type and kernel (Numba caches module-level functions only).

@njit(cache=True)
def matvec_int8_q2_k(out, w, x):
    """out f32[rows] <- w u8[rows, n/256*84] (Q2_K) @ x f32[n], int8 activations."""
    matvec_int8_rows(out, w, x, Q2_K)


@njit(cache=True)
def matvec_int8_q3_k(out, w, x):
    """out f32[rows] <- w u8[rows, n/256*110] (Q3_K) @ x f32[n], int8 activations."""
    matvec_int8_rows(out, w, x, Q3_K)


@njit(cache=True)
def matvec_int8_q4_k(out, w, x):
    """out f32[rows] <- w u8[rows, n/256*144] (Q4_K) @ x f32[n], int8 activations."""
    matvec_int8_rows(out, w, x, Q4_K)


@njit(cache=True)
def matvec_int8_q5_k(out, w, x):
    """out f32[rows] <- w u8[rows, n/256*176] (Q5_K) @ x f32[n], int8 activations."""
    matvec_int8_rows(out, w, x, Q5_K)


@njit(cache=True)
def matvec_int8_q6_k(out, w, x):
    """out f32[rows] <- w u8[rows, n/256*210] (Q6_K) @ x f32[n], int8 activations."""
    matvec_int8_rows(out, w, x, Q6_K)


@njit(cache=True)
def matmul_int8_q2_k(out, w, x):
    """out f32[t, rows] <- x f32[t, n] @ w.T, w u8[rows, n/256*84] (Q2_K), int8 activations."""
    matmul_int8_rows(out, w, x, Q2_K)


@njit(cache=True)
def matmul_int8_q3_k(out, w, x):
    """out f32[t, rows] <- x f32[t, n] @ w.T, w u8[rows, n/256*110] (Q3_K), int8 activations."""
    matmul_int8_rows(out, w, x, Q3_K)


@njit(cache=True)
def matmul_int8_q4_k(out, w, x):
    """out f32[t, rows] <- x f32[t, n] @ w.T, w u8[rows, n/256*144] (Q4_K), int8 activations."""
    matmul_int8_rows(out, w, x, Q4_K)


@njit(cache=True)
def matmul_int8_q5_k(out, w, x):
    """out f32[t, rows] <- x f32[t, n] @ w.T, w u8[rows, n/256*176] (Q5_K), int8 activations."""
    matmul_int8_rows(out, w, x, Q5_K)


@njit(cache=True)
def matmul_int8_q6_k(out, w, x):
    """out f32[t, rows] <- x f32[t, n] @ w.T, w u8[rows, n/256*210] (Q6_K), int8 activations."""
    matmul_int8_rows(out, w, x, Q6_K)
