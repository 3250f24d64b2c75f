"""K-quant matvec with int8 activations (ggml's Q8_K path): the decode hot function.

x is quantized once per call to Q8_K parts (per 256 values a float scale, 256 int8 and the
sums of each 16 of them: kquants.quantize_q8_k_parts, bit-identical to llama.cpp's reference),
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

Per type, a decoder written against `_Unpack` yields the 8 groups and the bsum coefficients;
`_block_kernels` turns it into two intrinsics, `block_sums_X` (one activation row -> (isum,
corr)) and `block_sums_rows_X` (all rows of a batch, the block decoded once), and
`scales_X` gives the block's float (d, e) with value = d * isum - e * corr.
"""
from __future__ import annotations

import numpy as np
from llvmlite import binding as llvm_binding, ir
from numba import literally, njit, prange, types
from numba.core import cgutils, config
from numba.extending import intrinsic, overload

from .kquants import (QK_K, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, block_bytes, f16_at,
                      quantize_q8_k_parts, table_entry)
from .kquants_dot import check_dot_shapes

# ---- vector IR building blocks ------------------------------------------------------------

_I8, _I16, _I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
# The AVX2 instructions are named only when Numba compiles for this host (NUMBA_CPU_NAME and
# NUMBA_CPU_FEATURES unset); a cache is tied to the CPU it was built on, so the choice is fixed
# per cache.
X86_AVX2 = (config.CPU_NAME is None and config.CPU_FEATURES is None
            and bool(llvm_binding.get_host_cpu_features().get("avx2", False)))


def _vec(t, n):
    return ir.VectorType(t, n)


def _consts(t, values):
    return ir.Constant(_vec(t, len(values)), [ir.Constant(t, v) for v in values])


class _Unpack:
    """IR helpers for decoding the weight block at w[i:] into vectors (no activations here)."""

    def __init__(self, builder, wp, i):
        self.b, self.wp, self.i = builder, wp, i

    def weights(self, offset, n):
        """<n x i8>: block bytes offset..offset+n (must lie inside the block)."""
        return _load(self.b, self.wp, self.b.add(self.i, ir.Constant(self.i.type, offset)), _I8, n)

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


def _load(builder, ptr, index, ty, n):
    p = builder.gep(ptr, [index])
    return builder.load(builder.bitcast(p, _vec(ty, n).as_pointer()), align=1)


def _call(builder, name, ret, args):
    fnty = ir.FunctionType(ret, [a.type for a in args])
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), args)


def _pairs(builder, v, ty, widen):
    """Even and odd lanes of v, each widened to vector type ty."""
    n = v.type.count
    even = builder.shuffle_vector(v, v, _consts(_I32, range(0, n, 2)))
    odd = builder.shuffle_vector(v, v, _consts(_I32, range(1, n, 2)))
    return widen(even, ty), widen(odd, ty)


def _madd_bytes(builder, u, s):
    """<32 x u8> u, <32 x i8> s -> <16 x i16>: u[2j]*s[2j] + u[2j+1]*s[2j+1]."""
    if X86_AVX2:
        return _call(builder, "llvm.x86.avx2.pmadd.ub.sw", _vec(_I16, 16), [u, s])
    ue, uo = _pairs(builder, u, _vec(_I16, 16), builder.zext)
    se, so = _pairs(builder, s, _vec(_I16, 16), builder.sext)
    return builder.add(builder.mul(ue, se), builder.mul(uo, so))


def _madd_words(builder, a, c):
    """<16 x i16> a, c -> <8 x i32>: a[2j]*c[2j] + a[2j+1]*c[2j+1]."""
    if X86_AVX2:
        return _call(builder, "llvm.x86.avx2.pmadd.wd", _vec(_I32, 8), [a, c])
    ae, ao = _pairs(builder, a, _vec(_I32, 8), builder.sext)
    ce, co = _pairs(builder, c, _vec(_I32, 8), builder.sext)
    return builder.add(builder.mul(ae, ce), builder.mul(ao, co))


def _reduce(builder, v):
    return _call(builder, f"llvm.vector.reduce.add.v{v.type.count}i32", _I32, [v])


def _dot_block(builder, groups, coefs, xp, bp):
    """(isum, corr) i32 of decoded groups against 256 int8 at xp and 16 int16 bsums at bp.

    groups: 8 pairs (quants <32 x i8> unsigned, weights <16 x i16>: lane j weights elements
    2j, 2j+1 of the group); coefs <16 x i16>: corr = sum_s coefs[s] * bsums[s].
    """
    acc = ir.Constant(_vec(_I32, 8), None)
    for g, (quants, weights16) in enumerate(groups):
        x = _load(builder, xp, ir.Constant(_I32, 32 * g), _I8, 32)
        acc = builder.add(acc, _madd_words(builder, _madd_bytes(builder, quants, x), weights16))
    bsums = _load(builder, bp, ir.Constant(_I32, 0), _I16, 16)
    return _reduce(builder, acc), _reduce(builder, _madd_words(builder, bsums, coefs))


def _data(context, builder, arrty, arr):
    return context.make_array(arrty)(context, builder, arr)


def _contiguous(*arrays):
    """The intrinsics address memory directly: only C-contiguous arrays are accepted."""
    return all(isinstance(a, types.Array) and a.layout == "C" for a in arrays)


def _block_kernels(decode):
    """Two intrinsics from one block decoder `decode(unpack) -> (groups, coefs)`:

    sums(w u8[:], i, xq i8[:], xo, bsums i16[:], so) -> (isum, corr): one activation row;
    sums_rows(w, i, xq i8[t, n], xo, bsums i16[t, n/16], so, isums i32[t], corrs i32[t]):
        every activation row against the block, decoded once (the matmul form).
    """
    def sums(typingctx, w, i, xq, xo, bsums, so):
        if not _contiguous(w, xq, bsums):
            return None

        def codegen(context, builder, sig, args):
            w_, i_, xq_, xo_, bsums_, so_ = args
            unpack = _Unpack(builder, _data(context, builder, sig.args[0], w_).data, i_)
            xp = builder.gep(_data(context, builder, sig.args[2], xq_).data, [xo_])
            bp = builder.gep(_data(context, builder, sig.args[4], bsums_).data, [so_])
            isum, corr = _dot_block(builder, *decode(unpack), xp, bp)
            return context.make_tuple(builder, sig.return_type, [isum, corr])
        return types.UniTuple(types.int32, 2)(w, i, xq, xo, bsums, so), codegen

    def sums_rows(typingctx, w, i, xq, xo, bsums, so, isums, corrs):
        if not _contiguous(w, xq, bsums, isums, corrs):
            return None

        def codegen(context, builder, sig, args):
            w_, i_, xq_, xo_, bsums_, so_, isums_, corrs_ = args
            groups, coefs = decode(_Unpack(builder, _data(context, builder, sig.args[0], w_).data, i_))
            xa = _data(context, builder, sig.args[2], xq_)
            ba = _data(context, builder, sig.args[4], bsums_)
            out_i = _data(context, builder, sig.args[6], isums_).data
            out_c = _data(context, builder, sig.args[7], corrs_).data
            t, n = cgutils.unpack_tuple(builder, xa.shape, 2)
            n_sums = cgutils.unpack_tuple(builder, ba.shape, 2)[1]
            with cgutils.for_range(builder, t) as loop:  # rows are C-contiguous
                k = loop.index
                xp = builder.gep(xa.data, [builder.add(builder.mul(k, n), xo_)])
                bp = builder.gep(ba.data, [builder.add(builder.mul(k, n_sums), so_)])
                isum, corr = _dot_block(builder, groups, coefs, xp, bp)
                builder.store(isum, builder.gep(out_i, [k]))
                builder.store(corr, builder.gep(out_c, [k]))
            return context.get_dummy_value()
        return types.none(w, i, xq, xo, bsums, so, isums, corrs), codegen

    sums.__name__ = f"block_sums_{decode.__name__}"
    sums_rows.__name__ = f"block_sums_rows_{decode.__name__}"
    return intrinsic(sums), intrinsic(sums_rows)


def _per16(u, scales, g):
    """Weights of group g when sub-blocks are 16 wide: scales[2g] x8, scales[2g+1] x8."""
    return u.shuffle(scales, [2 * g] * 8 + [2 * g + 1] * 8)


def _per32(u, scales8, g):
    return u.shuffle(scales8, [g] * 16)


def _scales_mins_k4(u):
    """The 8 scales and 8 mins of Q4_K/Q5_K (bytes 4..15, see kquants.scale_min_k4) as <8 x i16>."""
    v = u.widen(u.weights(4, 16))
    high_half = _consts(_I16, [0] * 4 + [0xFFFF] * 4)
    six_or_four = _consts(_I16, [63] * 4 + [15] * 4)
    top_sc = u.shl(u.shr(u.shuffle(v, [0, 1, 2, 3, 0, 1, 2, 3]), 6), 4)  # bits 6-7 of bytes 0-3
    top_m = u.shl(u.shr(u.shuffle(v, [4, 5, 6, 7, 4, 5, 6, 7]), 6), 4)  # bits 6-7 of bytes 4-7
    sc = u.bor(u.b.and_(u.shuffle(v, [0, 1, 2, 3, 8, 9, 10, 11]), six_or_four), u.b.and_(top_sc, high_half))
    m = u.bor(u.b.and_(u.shr(u.shuffle(v, [4, 5, 6, 7, 8, 9, 10, 11]), [0] * 4 + [4] * 4), six_or_four),
              u.b.and_(top_m, high_half))
    return sc, m


# ---- the five block layouts (byte maps in kquants.py): decode(unpack) -> (groups, coefs) ----

def q2_k(u):
    bytes16 = u.widen(u.weights(0, 16))
    scales, mins = u.band(bytes16, 0xF), u.shr(bytes16, 4)
    groups = []
    for h in range(2):
        qs = u.weights(16 + 32 * h, 32)
        for j in range(4):
            groups.append((u.band(u.shr(qs, 2 * j), 3), _per16(u, scales, 4 * h + j)))
    return groups, mins


def q3_k(u):
    # q + 4 = low 2 bits | high bit << 2 (0..7); the -4 returns through corr (weighted by 4).
    v = u.widen(u.weights(94, 16))  # bytes 94..109: the 12 scale bytes start at lane 2
    low = u.band(u.shr(u.shuffle(v, [2 + (s & 7) for s in range(16)]), [0] * 8 + [4] * 8), 0xF)
    high = u.band(u.shr(u.shuffle(v, [10 + (s & 3) for s in range(16)]), [2 * (s >> 2) for s in range(16)]), 3)
    scales = u.b.sub(u.bor(low, u.shl(high, 4)), _consts(_I16, [32] * 16))
    hmask = u.weights(0, 32)
    groups = []
    for h in range(2):
        qs = u.weights(32 + 32 * h, 32)
        for j in range(4):
            g = 4 * h + j
            q = u.bor(u.band(u.shr(qs, 2 * j), 3), u.shl(u.band(u.shr(hmask, g), 1), 2))
            groups.append((q, _per16(u, scales, g)))
    return groups, scales


def q4_k(u):
    scales, mins = _scales_mins_k4(u)
    groups = []
    for c in range(4):
        qs = u.weights(16 + 32 * c, 32)
        groups.append((u.band(qs, 0xF), _per32(u, scales, 2 * c)))
        groups.append((u.shr(qs, 4), _per32(u, scales, 2 * c + 1)))
    return groups, u.shuffle(mins, [s // 2 for s in range(16)])


def q5_k(u):
    scales, mins = _scales_mins_k4(u)
    qh = u.weights(16, 32)
    groups = []
    for c in range(4):
        qs = u.weights(48 + 32 * c, 32)
        for h, nibble in enumerate((u.band(qs, 0xF), u.shr(qs, 4))):
            g = 2 * c + h
            groups.append((u.bor(nibble, u.shl(u.band(u.shr(qh, g), 1), 4)), _per32(u, scales, g)))
    return groups, u.shuffle(mins, [s // 2 for s in range(16)])


def q6_k(u):
    # q + 32 = 4 low bits | 2 high bits << 4 (0..63); the -32 returns through corr (weighted by 32).
    scales = u.widen(u.weights(192, 16), signed=True)
    groups = []
    for h in range(2):
        ql_a = u.weights(64 * h, 32)
        ql_b = u.weights(64 * h + 32, 32)
        qh = u.weights(128 + 32 * h, 32)
        for k, low in enumerate((u.band(ql_a, 0xF), u.band(ql_b, 0xF), u.shr(ql_a, 4), u.shr(ql_b, 4))):
            q = u.bor(low, u.shl(u.band(u.shr(qh, 2 * k), 3), 4))
            groups.append((q, _per16(u, scales, 4 * h + k)))
    return groups, scales


block_sums_q2_k, block_sums_rows_q2_k = _block_kernels(q2_k)
block_sums_q3_k, block_sums_rows_q3_k = _block_kernels(q3_k)
block_sums_q4_k, block_sums_rows_q4_k = _block_kernels(q4_k)
block_sums_q5_k, block_sums_rows_q5_k = _block_kernels(q5_k)
block_sums_q6_k, block_sums_rows_q6_k = _block_kernels(q6_k)


# ---- float scales: a block's value is d * isum - e * corr, times the activation scale -------

@njit(inline="always")
def scales_q2_k(w, i):
    return f16_at(w, i + 80), f16_at(w, i + 82)


@njit(inline="always")
def scales_q3_k(w, i):
    d = f16_at(w, i + 108)
    return d, np.float32(4.0) * d


@njit(inline="always")
def scales_q4_k(w, i):
    return f16_at(w, i), f16_at(w, i + 2)


@njit(inline="always")
def scales_q6_k(w, i):
    d = f16_at(w, i + 208)
    return d, np.float32(32.0) * d


INT8_KERNELS = {  # type -> (block_sums, block_sums_rows, float scales)
    Q2_K: (block_sums_q2_k, block_sums_rows_q2_k, scales_q2_k),
    Q3_K: (block_sums_q3_k, block_sums_rows_q3_k, scales_q3_k),
    Q4_K: (block_sums_q4_k, block_sums_rows_q4_k, scales_q4_k),
    Q5_K: (block_sums_q5_k, block_sums_rows_q5_k, scales_q4_k),  # same d, dmin fields
    Q6_K: (block_sums_q6_k, block_sums_rows_q6_k, scales_q6_k),
}


def block_sums(qtype, w, i, xq, xo, bsums, so):
    """Numba-only: (isum, corr) of the literal-`qtype` block at w[i:] against one Q8_K row."""
    raise NotImplementedError("block_sums is callable from Numba code only")


@overload(block_sums, inline="always")
def _block_sums(qtype, w, i, xq, xo, bsums, so):
    entry = table_entry(INT8_KERNELS, qtype)
    if entry is None:
        return None
    fn = entry[0]
    return lambda qtype, w, i, xq, xo, bsums, so: fn(w, i, xq, xo, bsums, so)


def block_sums_rows(qtype, w, i, xq, xo, bsums, so, isums, corrs):
    """Numba-only: block_sums for every row of xq i8[t, n] / bsums i16[t, n/16], into isums/corrs i32[t]."""
    raise NotImplementedError("block_sums_rows is callable from Numba code only")


@overload(block_sums_rows, inline="always")
def _block_sums_rows(qtype, w, i, xq, xo, bsums, so, isums, corrs):
    entry = table_entry(INT8_KERNELS, qtype)
    if entry is None:
        return None
    fn = entry[1]
    return lambda qtype, w, i, xq, xo, bsums, so, isums, corrs: fn(w, i, xq, xo, bsums, so, isums, corrs)


def block_scales(qtype, w, i):
    """Numba-only: (d, e) float32 of the literal-`qtype` block at w[i:]."""
    raise NotImplementedError("block_scales is callable from Numba code only")


@overload(block_scales, inline="always")
def _block_scales(qtype, w, i):
    entry = table_entry(INT8_KERNELS, qtype)
    if entry is None:
        return None
    fn = entry[2]
    return lambda qtype, w, i: fn(w, i)


@njit(inline="always")
def dot_int8_block(qtype, w, i, xq, xo, bsums, so):
    """The literal-`qtype` block at w[i:] dotted with Q8_K parts xq[xo:], bsums[so:] (no dx)."""
    isum, corr = block_sums(qtype, w, i, xq, xo, bsums, so)
    d, e = block_scales(qtype, w, i)
    return d * np.float32(isum) - e * np.float32(corr)


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


_ROW_TILE = 8  # weight rows per matmul work item (their per-row sums buffers are allocated once)


@njit(cache=True, parallel=True)
def matmul_int8_rows(out, w, x, qtype):
    """out f32[t, rows] <- x f32[t, n] @ w.T for w u8[rows, row_bytes] of literal type `qtype`.

    Each weight block is decoded once for all t activation rows (block_sums_rows).
    """
    nbytes = block_bytes(literally(qtype))
    t, n = x.shape
    check_dot_shapes(out.shape[1], w, n, nbytes)
    if out.shape[0] != t:
        raise ValueError("K-quant matmul: output rows do not match the activation rows")
    n_blocks = n // QK_K
    xd = np.empty((t, n_blocks), np.float32)
    xq = np.empty((t, n), np.int8)
    bsums = np.empty((t, n // 16), np.int16)
    for k in prange(t):
        quantize_q8_k_parts(xd[k], xq[k], bsums[k], x[k])
    rows = w.shape[0]
    for tile in prange((rows + _ROW_TILE - 1) // _ROW_TILE):
        isums = np.empty(t, np.int32)
        corrs = np.empty(t, np.int32)
        acc = np.empty(t, np.float32)
        for r in range(tile * _ROW_TILE, min(rows, tile * _ROW_TILE + _ROW_TILE)):
            row = w[r]
            acc[:] = 0.0
            for blk in range(n_blocks):
                i = blk * nbytes
                block_sums_rows(qtype, row, i, xq, blk * QK_K, bsums, blk * 16, isums, corrs)
                d, e = block_scales(qtype, row, i)
                for k in range(t):
                    acc[k] += xd[k, blk] * (d * np.float32(isums[k]) - e * np.float32(corrs[k]))
            for k in range(t):
                out[k, r] = acc[k]


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
