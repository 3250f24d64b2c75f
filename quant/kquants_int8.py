"""K-quant matvec with int8 activations (ggml's Q8_K path): the decode hot function.

x is quantized once per call to Q8_K parts (per 256 values a float scale, 256 int8 and the
sums of each 16 of them: kquants.quantize_q8_k_parts, bit-identical to llama.cpp's reference),
and every weight block is then dotted with it in integer arithmetic:

  sum_e w_e x_e  ~  dx * (d * sum_s sc_s * sum_{e in s} q_e xq_e  -  dmin * sum_s m_s * bsum_s)

All five types share one shape. A block is 8 groups of 32 unsigned quants in element order
(offsets such as Q3_K's -4 and Q6_K's -32 are moved into the bsum term); each group is
multiplied with its 32 int8 activations into 16 pair sums (`pmaddubsw`), those are
multiplied by the group's sub-block scales and summed into 8 int32 lanes (`pmaddwd`; LLVM
fuses the add into `vpdpwssd` with AVX-512 VNNI). The block's lanes (and those of the bsum
term) are not reduced: they are converted and folded into 8 float lanes with the block's
float scales, acc += float(isum) * (d * dx) - float(corr) * (e * dx), and the row's 8 lanes
are summed once at the end. This is written as LLVM vector IR because Numba widens every
integer product to int64, which vectorizes four times narrower. On x86 with AVX2 the two
multiply-add steps are the named instructions; elsewhere the same arithmetic is plain vector
IR that LLVM lowers for the target (no sum here can saturate int16: at most 2 * 63 * 128).

Per type, a decoder written against `_Unpack` yields the block as `Decoded` (8 groups of
quants, per sub-block scales and correction coefficients) and `scales_X` gives the block's
float (d, e) with value = d * isum - e * corr; `row_dot` runs them over a row. The prefill
matmul (kquants_tiles.py) takes the same decoders and re-packs their output for its
register tiles.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
from gguf import GGML_QUANT_SIZES
from llvmlite import ir
from numba import literally, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from . import cpu_features
from .kquants import (QK_K, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, block_bytes, f16_at,
                      quantize_q8_k_parts, table_entry)
from .kquants_dot import check_dot_shapes

# ---- vector IR building blocks ------------------------------------------------------------

_I8, _I16, _I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
# The AVX2 instructions are named only when Numba compiles for this host (cpu_features.py).
X86_AVX2 = cpu_features.has("avx2")
# AVX-512 VNNI on 256-bit vectors (vpdpbusd ymm): the matmul tiles' byte dot products.
X86_VNNI = cpu_features.has("avx512vnni", "avx512vl", "avx512bw")


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


def _dot4(builder, acc, u, s):
    """acc <8 x i32> + (lane j: sum_{e=4j..4j+3} u[e] * s[e]) for <32 x i8> u unsigned, s signed.

    One vpdpbusd with VNNI; otherwise pmaddubsw + pmaddwd by ones (exact while every pair sum
    u[2i]*s[2i] + u[2i+1]*s[2i+1] fits int16, true for u <= 127).
    """
    if X86_VNNI:
        v8 = _vec(_I32, 8)
        return _call(builder, "llvm.x86.avx512.vpdpbusd.256", v8,
                     [acc, builder.bitcast(u, v8), builder.bitcast(s, v8)])
    ones = _consts(_I16, [1] * 16)
    return builder.add(acc, _madd_words(builder, _madd_bytes(builder, u, s), ones))


class Decoded(NamedTuple):
    """One weight block as the dot kernels take it (IR values).

    quants: 8 groups of 32 unsigned quants in element order (<32 x i8> each, group g holds
    elements 32g..32g+31; offsets such as Q6_K's -32 are moved into the correction);
    scales, mins: <S x i16> per sub-block (S = 16 sub-blocks of 16 values or 8 of 32): its
    integer scale, and the coefficient of its activation sum in the correction term, so that
    block . x = d * sum_s scales[s] * (q_s . x_s) - e * sum_s mins[s] * sum(x_s).
    """
    quants: list
    scales: ir.Value
    mins: ir.Value


def _groups(u, dec):
    """The matvec form of a block: 8 (quants, <16 x i16> weights) and <16 x i16> coefs.

    Lane l of group g's weights scales elements 2l, 2l+1 (pmaddwd pairs); coefs[s] weighs the
    s-th sum of 16 activations (Q8_K bsums).
    """
    per = dec.scales.type.count  # sub-blocks per block
    groups = [(q, u.shuffle(dec.scales, [(32 * g + 2 * l) * per // QK_K for l in range(16)]))
              for g, q in enumerate(dec.quants)]
    return groups, u.shuffle(dec.mins, [s * per // 16 for s in range(16)])


def _block_lanes(builder, groups, coefs, xp, bp):
    """(isum, corr) <8 x i32> lanes of decoded groups against 256 int8 at xp and 16 int16
    bsums at bp; groups, coefs as _groups returns them; corr = sum_s coefs[s] * bsums[s]."""
    acc = ir.Constant(_vec(_I32, 8), None)
    for g, (quants, weights16) in enumerate(groups):
        x = _load(builder, xp, ir.Constant(_I32, 32 * g), _I8, 32)
        acc = builder.add(acc, _madd_words(builder, _madd_bytes(builder, quants, x), weights16))
    bsums = _load(builder, bp, ir.Constant(_I32, 0), _I16, 16)
    return acc, _madd_words(builder, bsums, coefs)


def _data(context, builder, arrty, arr):
    return context.make_array(arrty)(context, builder, arr)


def _contiguous(*arrays):
    """The intrinsics address memory directly: only C-contiguous arrays are accepted."""
    return all(isinstance(a, types.Array) and a.layout == "C" for a in arrays)


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


# ---- the five block layouts (byte maps in kquants.py): decode(unpack) -> Decoded ------------

def q2_k(u):
    bytes16 = u.widen(u.weights(0, 16))
    quants = []
    for h in range(2):
        qs = u.weights(16 + 32 * h, 32)
        quants += [u.band(u.shr(qs, 2 * j), 3) for j in range(4)]
    return Decoded(quants, u.band(bytes16, 0xF), u.shr(bytes16, 4))


def q3_k(u):
    # q + 4 = low 2 bits | high bit << 2 (0..7); the -4 returns through the correction
    # (mins = scales, e = 4d).
    v = u.widen(u.weights(94, 16))  # bytes 94..109: the 12 scale bytes start at lane 2
    low = u.band(u.shr(u.shuffle(v, [2 + (s & 7) for s in range(16)]), [0] * 8 + [4] * 8), 0xF)
    high = u.band(u.shr(u.shuffle(v, [10 + (s & 3) for s in range(16)]), [2 * (s >> 2) for s in range(16)]), 3)
    scales = u.b.sub(u.bor(low, u.shl(high, 4)), _consts(_I16, [32] * 16))
    hmask = u.weights(0, 32)
    quants = []
    for h in range(2):
        qs = u.weights(32 + 32 * h, 32)
        for j in range(4):
            g = 4 * h + j
            quants.append(u.bor(u.band(u.shr(qs, 2 * j), 3), u.shl(u.band(u.shr(hmask, g), 1), 2)))
    return Decoded(quants, scales, scales)


def q4_k(u):
    scales, mins = _scales_mins_k4(u)
    quants = []
    for c in range(4):
        qs = u.weights(16 + 32 * c, 32)
        quants += [u.band(qs, 0xF), u.shr(qs, 4)]
    return Decoded(quants, scales, mins)


def q5_k(u):
    scales, mins = _scales_mins_k4(u)
    qh = u.weights(16, 32)
    quants = []
    for c in range(4):
        qs = u.weights(48 + 32 * c, 32)
        for h, nibble in enumerate((u.band(qs, 0xF), u.shr(qs, 4))):
            quants.append(u.bor(nibble, u.shl(u.band(u.shr(qh, 2 * c + h), 1), 4)))
    return Decoded(quants, scales, mins)


def q6_k(u):
    # q + 32 = 4 low bits | 2 high bits << 4 (0..63); the -32 returns through the correction
    # (mins = scales, e = 32d).
    scales = u.widen(u.weights(192, 16), signed=True)
    quants = []
    for h in range(2):
        ql_a = u.weights(64 * h, 32)
        ql_b = u.weights(64 * h + 32, 32)
        qh = u.weights(128 + 32 * h, 32)
        for k, low in enumerate((u.band(ql_a, 0xF), u.band(ql_b, 0xF), u.shr(ql_a, 4), u.shr(ql_b, 4))):
            quants.append(u.bor(low, u.shl(u.band(u.shr(qh, 2 * k), 3), 4)))
    return Decoded(quants, scales, scales)


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


class KInt8(NamedTuple):
    """What the int8 kernels know of one K type."""
    decode: Callable      # IR: decode(_Unpack) -> Decoded
    sub_blocks: int       # scales per block: 16 (sub-blocks of 16 values) or 8 (of 32)
    offset: int           # decoded quants are q + offset (then mins = scales, e = offset * d); 0: real mins
    scales: Callable      # njit (w, i) -> (d, e) float32: block . x = d * isum - e * corr


INT8_KERNELS = {
    Q2_K: KInt8(q2_k, 16, 0, scales_q2_k),
    Q3_K: KInt8(q3_k, 16, 4, scales_q3_k),
    Q4_K: KInt8(q4_k, 8, 0, scales_q4_k),
    Q5_K: KInt8(q5_k, 8, 0, scales_q4_k),  # same d, dmin fields
    Q6_K: KInt8(q6_k, 16, 32, scales_q6_k),
}


def block_scales(qtype, w, i):
    """Numba-only: (d, e) float32 of the literal-`qtype` block at w[i:]."""
    raise NotImplementedError("block_scales is callable from Numba code only")


@overload(block_scales, inline="always")
def _block_scales(qtype, w, i):
    entry = table_entry(INT8_KERNELS, qtype)
    if entry is None:
        return None
    fn = entry.scales
    return lambda qtype, w, i: fn(w, i)


@intrinsic
def row_dot(typingctx, w, xq, bsums, xd, qtype):
    """float32: the weight row w u8[n/256*bytes] of literal type qtype dotted with the Q8_K
    parts xq i8[n], bsums i16[n/16], xd f32[n/256] of one activation row.

    Per block the int32 lanes (isum, corr) are folded into float lanes,
    acc += float(isum) * (d * dx) + float(corr) * (-e * dx), summed once at the end: no
    horizontal reduction or scalar tail per block.
    """
    entry = table_entry(INT8_KERNELS, qtype)
    if entry is None or not _contiguous(w, xq, bsums, xd):
        return None
    nbytes = GGML_QUANT_SIZES[qtype.literal_value][1]
    scales = entry.scales
    f32, v8f = ir.FloatType(), _vec(ir.FloatType(), 8)
    scales_sig = types.UniTuple(types.float32, 2)(w, types.intp)

    def codegen(context, builder, sig, args):
        w_a, xq_a, bs_a, xd_a = (_data(context, builder, sig.args[k], args[k]) for k in range(4))
        n_blocks = cgutils.unpack_tuple(builder, xd_a.shape, 1)[0]
        intp = n_blocks.type
        acc = cgutils.alloca_once_value(builder, ir.Constant(v8f, None))
        with cgutils.for_range(builder, n_blocks) as loop:
            blk = loop.index
            i = builder.mul(blk, ir.Constant(intp, nbytes))
            unpack = _Unpack(builder, w_a.data, i)
            xp = builder.gep(xq_a.data, [builder.mul(blk, ir.Constant(intp, QK_K))])
            bp = builder.gep(bs_a.data, [builder.mul(blk, ir.Constant(intp, 16))])
            isum, corr = _block_lanes(builder, *_groups(unpack, decode(unpack)), xp, bp)
            d_e = context.compile_internal(builder, lambda w, i: scales(w, i), scales_sig, [args[0], i])
            dx = builder.load(builder.gep(xd_a.data, [blk]))
            d = builder.fmul(builder.extract_value(d_e, 0), dx)
            e = builder.fneg(builder.fmul(builder.extract_value(d_e, 1), dx))
            total = builder.load(acc)
            for lanes, factor in ((isum, d), (corr, e)):
                total = _call(builder, "llvm.fma.v8f32", v8f, [builder.sitofp(lanes, v8f), _splat(builder, factor, 8), total])
            builder.store(total, acc)
        return _call(builder, "llvm.vector.reduce.fadd.v8f32", f32, [ir.Constant(f32, 0.0), builder.load(acc)])
    decode = entry.decode
    return types.float32(w, xq, bsums, xd, qtype), codegen


def _splat(builder, value, n):
    vec = builder.insert_element(ir.Constant(_vec(value.type, n), None), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(vec, vec, ir.Constant(_vec(_I32, n), None))


@njit(inline="always")
def row_dots(out, w, x, qtype):
    """out f32[rows] <- w (u8[rows, row_bytes], literal type `qtype`) @ x f32[n], via Q8_K x.
    Inlined into its callers: the matvec, and the matmul for a single activation row."""
    nbytes = block_bytes(qtype)
    n = x.size
    check_dot_shapes(out.size, w, n, nbytes)
    n_blocks = n // QK_K
    xd = np.empty(n_blocks, np.float32)
    xq = np.empty(n, np.int8)
    bsums = np.empty(n // 16, np.int16)
    quantize_q8_k_parts(xd, xq, bsums, x)
    for r in prange(w.shape[0]):
        out[r] = row_dot(w[r], xq, bsums, xd, qtype)


@njit(cache=True, parallel=True)
def matvec_int8_rows(out, w, x, qtype):
    """out f32[rows] <- w (u8[rows, row_bytes], literal type `qtype`) @ x f32[n], via Q8_K x."""
    row_dots(out, w, x, literally(qtype))


@njit(inline="always")
def rows_for_each_token(out, w, x, qtype):
    """out f32[t, rows] <- x f32[t, n] @ w.T, every row bit-identical to the matvec on its
    token: each token quantized to Q8_K as the matvec does, and each weight row dotted with
    every token in turn by the matvec's own row_dot (the row stays in L1 between tokens, so it
    is read from memory once; the register tiles of the prefill matmul sum in another order)."""
    nbytes = block_bytes(qtype)
    t, n = x.shape
    check_dot_shapes(out.shape[1], w, n, nbytes)
    if out.shape[0] != t:
        raise ValueError("K-quant matmul: output rows do not match the activation rows")
    xd = np.empty((t, n // QK_K), np.float32)
    xq = np.empty((t, n), np.int8)
    bsums = np.empty((t, n // 16), np.int16)
    for k in range(t):
        quantize_q8_k_parts(xd[k], xq[k], bsums[k], x[k])
    for r in prange(w.shape[0]):
        for k in range(t):
            out[k, r] = row_dot(w[r], xq[k], bsums[k], xd[k], qtype)


@njit(cache=True, parallel=True)
def matmul_rows_int8(out, w, x, qtype):
    """rows_for_each_token for literal type `qtype` (QuantType.matmul_rows)."""
    rows_for_each_token(out, w, x, literally(qtype))


# One entry point per type (Numba caches module-level functions only).

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


# Row-exact matmuls (QuantType.matmul_rows), one per type:
@njit(cache=True)
def matmul_rows_int8_q2_k(out, w, x):
    matmul_rows_int8(out, w, x, Q2_K)


@njit(cache=True)
def matmul_rows_int8_q3_k(out, w, x):
    matmul_rows_int8(out, w, x, Q3_K)


@njit(cache=True)
def matmul_rows_int8_q4_k(out, w, x):
    matmul_rows_int8(out, w, x, Q4_K)


@njit(cache=True)
def matmul_rows_int8_q5_k(out, w, x):
    matmul_rows_int8(out, w, x, Q5_K)


@njit(cache=True)
def matmul_rows_int8_q6_k(out, w, x):
    matmul_rows_int8(out, w, x, Q6_K)


# The prefill kernels (register tiles over several weight and activation rows) live in
# kquants_tiles.py, which builds on this module's decoders; imported last for that reason.
from .kquants_tiles import (matmul_int8_q2_k, matmul_int8_q3_k, matmul_int8_q4_k,  # noqa: E402,F401
                            matmul_int8_q5_k, matmul_int8_q6_k)

