"""Legacy-type matvec / matmul with int8 activations, computed the way llama.cpp computes them.

llama.cpp never multiplies float activations by Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weights. It first
quantizes each activation row to the weight type's "vec_dot type" (Q8_0 for Q4_0, Q5_0, Q8_0;
Q8_1 for Q4_1, Q5_1) and then takes integer dot products per 32-block. The registered kernels
here do the same, with the float arithmetic of ggml's x86 (AVX2) code, so that every output
is bit-identical to ggml's `vec_dot` on such a machine (the reference outputs in
../shared/reference were made there). The float kernels in legacy.py are their reference twins.

Activation rows (ggml's quantize_row_q8_0 / quantize_row_q8_1 as the x86 SIMD path computes
them), per block of 32 values:

  amax = max |x|;  d = amax / 127, stored as f16;  q = round_half_even(x * (127 / amax))
  (all zero when amax == 0); Q8_1 also stores s = f16(d * sum(q)) with d still in float32.

ggml's portable reference quantizer (quantize_row_q8_0_ref) differs from this on exact ties
and where 1/d != 127/amax: it multiplies by 1/d and rounds half away from zero. llama.cpp on
x86 runs the SIMD version, which is what this module reproduces.

Dot product of one weight row with one activation row: eight float32 lanes. For block b,
lane j gets the integer sum over elements 4j..4j+3 of q_w * q_x (q_w with its offset -8 or
-16 applied for the _0 types), and acc_j = fma(d_w * d_x, lane_j, acc_j) block after block.
The lanes are reduced as ((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7)); the _1 types then add
sum_b m_w * s_x (float32, block order). d_w * d_x and m_w * s_x are products of two halves,
exact in float32.

Written as LLVM vector IR (as kquants_int8.py, whose building blocks it shares) because
Numba widens integer products to int64. Per block: the weight quants are unpacked into
<32 x i8>, multiplied with the 32 activation bytes into 8 int32 lanes (AVX-512 VNNI `vpdpbusd`,
or AVX2 `pmaddubsw` + `pmaddwd`, or plain vector IR elsewhere; signed weights go through the
|w|, sign(x, w) trick) and accumulated with a vector fma. The matmul kernel runs four
activation rows per pass over a weight row so each block is unpacked once for four rows;
every (row, activation row) pair still sees exactly the matvec's operations.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from llvmlite import binding as llvm_binding, ir
from numba import njit, prange, types
from numba.core import cgutils, config
from numba.extending import intrinsic

from .float_bits import nearest_int, round_to_f16
from .kernel_kit import specialize
from . import kquants  # noqa: F401  (first: kquants imports kquants_int8 back at its end)
from . import kquants_int8 as _k8
from .kquants_int8 import _I8, _I16, _I32, _call, _consts, _contiguous, _data, _load, _vec

BLOCK = 32

# ---- activations: Q8_0 / Q8_1 parts ----------------------------------------------------------

_INT32_LIMIT = np.float32(2147483648.0)


@njit(cache=True, inline="always")
def _quantize_q8_blocks(d, s, qs, x, with_sums):
    """Q8_0 parts of x into d, qs (and Q8_1's s when with_sums); see quantize_q8_1_parts."""
    n = x.shape[0]
    n_blocks = n // BLOCK
    if n % BLOCK or d.shape[0] != n_blocks or qs.shape[0] != n or (with_sums and s.shape[0] != n_blocks):
        raise ValueError("Q8 activations: x length must be a multiple of 32 matching d, s and qs")
    for b in range(n_blocks):
        o = b * BLOCK
        amax = np.float32(0.0)
        for j in range(BLOCK):
            a = abs(x[o + j])
            if a > amax:
                amax = a
        scale = amax / np.float32(127.0)
        inverse = np.float32(127.0) / amax if amax != 0 else np.float32(0.0)
        total = 0
        for j in range(BLOCK):
            v = x[o + j] * inverse
            # cvtps2dq: NaN and out-of-int32 values (x * inf when amax is subnormal) give INT_MIN
            q = nearest_int(v) if abs(v) < _INT32_LIMIT else -2147483648
            qs[o + j] = max(-128, min(127, q))  # the saturating packs to int8
            total += q
        d[b] = round_to_f16(scale)
        if with_sums:
            total = ((total + 2147483648) & 0xFFFFFFFF) - 2147483648  # ggml sums in int32
            s[b] = round_to_f16(scale * np.float32(total))


@njit(cache=True)
def quantize_q8_0_parts(d, qs, x):
    """x f32[n] (n % 32 == 0) -> d f32[n/32] (the f16 scales, widened), qs i8[n], as llama.cpp's x86 path."""
    _quantize_q8_blocks(d, d[:0], qs, x, False)


@njit(cache=True)
def quantize_q8_1_parts(d, s, qs, x):
    """As quantize_q8_0_parts, plus s f32[n/32]: the f16 of d * sum(qs) per block (Q8_1)."""
    _quantize_q8_blocks(d, s, qs, x, True)


# ---- vector IR -------------------------------------------------------------------------------

_F32 = ir.FloatType()
_V8F = _vec(_F32, 8)
_V8I = _vec(_I32, 8)
_INTP = ir.IntType(64)

# Named x86 instructions only when Numba compiles for this host (as kquants_int8.X86_AVX2).
_HOST_FEATURES = (llvm_binding.get_host_cpu_features()
                  if config.CPU_NAME is None and config.CPU_FEATURES is None else {})
X86_VNNI = bool(_HOST_FEATURES.get("avx512vnni", False) and _HOST_FEATURES.get("avx512vl", False))
X86_F16C = bool(_HOST_FEATURES.get("f16c", False))


def _i8(v):
    return v - 256 if v >= 128 else v


def _splat(builder, value, ty, n):
    vec = builder.insert_element(ir.Constant(_vec(ty, n), None), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(vec, vec, ir.Constant(_vec(_I32, n), None))


def _f16_to_f32(builder, bits16):
    """i16 IEEE half bits -> float, exactly, in integer and float32 operations (no F16C)."""
    bits = builder.zext(bits16, _I32)
    magnitude = builder.shl(builder.and_(bits, ir.Constant(_I32, 0x7FFF)), ir.Constant(_I32, 13))
    # exponent and mantissa in float32 position; a multiply by 2**112 rebiases the exponent
    # exactly (half subnormals land on float32 normals); infinities and NaNs are kept apart
    rebiased = builder.fmul(builder.bitcast(magnitude, _F32), ir.Constant(_F32, 2.0 ** 112))
    special = builder.icmp_unsigned(">=", builder.and_(bits, ir.Constant(_I32, 0x7C00)),
                                    ir.Constant(_I32, 0x7C00))
    value = builder.select(special, builder.or_(magnitude, ir.Constant(_I32, 0x7F800000)),
                           builder.bitcast(rebiased, _I32))
    sign = builder.shl(builder.and_(bits, ir.Constant(_I32, 0x8000)), ir.Constant(_I32, 16))
    return builder.bitcast(builder.or_(value, sign), _F32)


def _halves_at(builder, ptr, index):
    """(h0, h1): the f16 pair at byte ptr[index:index + 4] as floats."""
    word = builder.load(builder.bitcast(builder.gep(ptr, [index]), _I32.as_pointer()), align=1)
    if X86_F16C:
        # one vcvtph2ps for both. The word enters a zeroed vector register (vmovd), passed
        # through an empty inline asm so that LLVM cannot narrow it back to its scalar form: that
        # form merges the half into an arbitrary register (vpinsrw) whose stale value, often an
        # fma accumulator of another row, becomes a dependency that serialises the otherwise
        # independent accumulation chains.
        vec = builder.insert_element(ir.Constant(_vec(_I32, 4), None), word, ir.Constant(_I32, 0))
        vec = builder.asm(ir.FunctionType(vec.type, [vec.type]), "", "=x,0", [vec], side_effect=False)
        halves = builder.shuffle_vector(builder.bitcast(vec, _vec(ir.HalfType(), 8)),
                                        ir.Constant(_vec(ir.HalfType(), 8), None), _consts(_I32, range(4)))
        floats = builder.fpext(halves, _vec(_F32, 4))
        return (builder.extract_element(floats, ir.Constant(_I32, 0)),
                builder.extract_element(floats, ir.Constant(_I32, 1)))
    return (_f16_to_f32(builder, builder.trunc(word, _I16)),
            _f16_to_f32(builder, builder.trunc(builder.lshr(word, ir.Constant(_I32, 16)), _I16)))


@dataclass(frozen=True)
class Layout:
    """Byte offsets inside one block (None: the field is absent) and how quants decode."""
    nbytes: int
    d_at: int
    qs_at: int
    m_at: int | None = None   # the _1 types' offset: values are d * q + m, q unsigned
    qh_at: int | None = None  # 5-bit types: bit j of this little-endian uint32 is bit 4 of q[j]
    offset: int = 0           # subtracted from q (Q4_0: 8, Q5_0: 16)
    int8: bool = False        # Q8_0: qs are 32 signed bytes

    @property
    def signed(self) -> bool:
        return self.int8 or self.offset != 0


LAYOUTS = {
    T.Q4_0: Layout(GGML_QUANT_SIZES[T.Q4_0][1], d_at=0, qs_at=2, offset=8),
    T.Q4_1: Layout(GGML_QUANT_SIZES[T.Q4_1][1], d_at=0, m_at=2, qs_at=4),
    T.Q5_0: Layout(GGML_QUANT_SIZES[T.Q5_0][1], d_at=0, qh_at=2, qs_at=6, offset=16),
    T.Q5_1: Layout(GGML_QUANT_SIZES[T.Q5_1][1], d_at=0, m_at=2, qh_at=4, qs_at=8),
    T.Q8_0: Layout(GGML_QUANT_SIZES[T.Q8_0][1], d_at=0, qs_at=2, int8=True),
}


def _quants(builder, wp, i, lay: Layout):
    """<32 x i8>: the block's 32 quants in element order (signed when lay.signed)."""
    def at(offset):
        return builder.add(i, ir.Constant(i.type, offset))

    if lay.int8:
        return _load(builder, wp, at(lay.qs_at), _I8, 32)
    packed = _load(builder, wp, at(lay.qs_at), _I8, 16)
    low = builder.and_(packed, _consts(_I8, [0x0F] * 16))
    high = builder.lshr(packed, _consts(_I8, [4] * 16))
    q = builder.shuffle_vector(low, high, _consts(_I32, range(32)))  # byte j: q[j] and q[j + 16]
    if lay.qh_at is not None:
        qh = _load(builder, wp, at(lay.qh_at), _I8, 4)
        spread = builder.shuffle_vector(qh, qh, _consts(_I32, [j // 8 for j in range(32)]))
        bit = builder.and_(spread, _consts(_I8, [_i8(1 << (j % 8)) for j in range(32)]))
        zero = ir.Constant(_vec(_I8, 32), None)
        q = builder.or_(q, builder.select(builder.icmp_unsigned("!=", bit, zero),
                                          _consts(_I8, [16] * 32), zero))
    if lay.offset:
        q = builder.sub(q, _consts(_I8, [lay.offset] * 32))
    return q


def _magnitude(builder, q):
    """|q| of signed bytes (as unsigned bytes: |-128| = 128)."""
    if _k8.X86_AVX2:
        return _call(builder, "llvm.x86.avx2.psign.b", q.type, [q, q])
    zero = ir.Constant(q.type, None)
    return builder.select(builder.icmp_signed("<", q, zero), builder.sub(zero, q), q)


def _signed_like(builder, x, q):
    """x with the sign of q applied (so that |q| * result = q * x)."""
    if _k8.X86_AVX2:
        return _call(builder, "llvm.x86.avx2.psign.b", x.type, [x, q])
    zero = ir.Constant(x.type, None)
    return builder.select(builder.icmp_signed("<", q, zero), builder.sub(zero, x), x)


def _lane_sums(builder, u, s):
    """<8 x i32>: lane j = sum_{e=4j..4j+3} u[e] * s[e] for unsigned bytes u, signed bytes s."""
    if X86_VNNI:
        return _call(builder, "llvm.x86.avx512.vpdpbusd.256", _V8I,
                     [ir.Constant(_V8I, None), builder.bitcast(u, _V8I), builder.bitcast(s, _V8I)])
    pairs = _k8._madd_bytes(builder, u, s)
    return _k8._madd_words(builder, pairs, _consts(_I16, [1] * 16))


def _reduce_lanes(builder, acc):
    """float: ((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7)), ggml's hsum_float_8 order."""
    def pick(v, lanes):
        return builder.shuffle_vector(v, v, _consts(_I32, lanes))

    quad = builder.fadd(pick(acc, [0, 1, 2, 3]), pick(acc, [4, 5, 6, 7]))
    pair = builder.fadd(pick(quad, [0, 1]), pick(quad, [2, 3]))
    return builder.fadd(builder.extract_element(pair, ir.Constant(_I32, 0)),
                        builder.extract_element(pair, ir.Constant(_I32, 1)))


def _dot_rows_kernel(qtype, n_act: int):
    """An intrinsic for one weight row against n_act activation rows:

    dot_rows(out f32[t, rows], r, w u8[rows, row_bytes], xq i8[t, n], xd f32[t, n/32],
             xs f32[t, n/32 or 0], k0) sets out[k0 + a, r] for a < n_act, where xq, xd, xs are
    the activations' Q8 parts (xs only read by the _1 types). Each weight block is unpacked
    once for the n_act rows, whose dot products are independent chains of fmas. No bounds
    checks: callers check the shapes once per call.
    """
    lay = LAYOUTS[qtype]
    if lay.m_at not in (None, lay.d_at + 2):
        raise ValueError(f"{qtype.name}: d and m must be adjacent halves (one conversion reads both)")

    def dot_rows(typingctx, out, r, w, xq, xd, xs, k0):
        if not (_contiguous(out, w, xq, xd, xs) and isinstance(r, types.Integer)
                and isinstance(k0, types.Integer)):
            return None
        if (out.ndim, w.ndim, xq.ndim, xd.ndim, xs.ndim) != (2, 2, 2, 2, 2):
            return None
        if (out.dtype, w.dtype, xq.dtype, xd.dtype, xs.dtype) != (
                types.float32, types.uint8, types.int8, types.float32, types.float32):
            return None

        def codegen(context, builder, sig, args):
            out_a, w_a, xq_a, xd_a, xs_a = (_data(context, builder, sig.args[k], args[k])
                                            for k in (0, 2, 3, 4, 5))
            r = context.cast(builder, args[1], sig.args[1], types.intp)
            k0 = context.cast(builder, args[6], sig.args[6], types.intp)

            def const(v):
                return ir.Constant(_INTP, v)

            def at(index, *terms):  # index + sum(a * b)
                for a, b in terms:
                    index = builder.add(index, builder.mul(a, b))
                return index

            n_out = cgutils.unpack_tuple(builder, out_a.shape, 2)[1]
            row_bytes = cgutils.unpack_tuple(builder, w_a.shape, 2)[1]
            n = cgutils.unpack_tuple(builder, xq_a.shape, 2)[1]
            n_blocks = cgutils.unpack_tuple(builder, xd_a.shape, 2)[1]
            n_sums = cgutils.unpack_tuple(builder, xs_a.shape, 2)[1]
            rows = [builder.add(k0, const(a)) for a in range(n_act)]
            accs = [cgutils.alloca_once_value(builder, ir.Constant(_V8F, None)) for _ in rows]
            mins = [cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0)) for _ in rows]
            with cgutils.for_range(builder, n_blocks) as loop:
                blk = loop.index
                i = at(const(0), (r, row_bytes), (blk, const(lay.nbytes)))
                q = _quants(builder, w_a.data, i, lay)
                u = _magnitude(builder, q) if lay.signed else q
                dw, mw = _halves_at(builder, w_a.data, builder.add(i, const(lay.d_at)))  # d, m adjacent
                for row, acc, m_acc in zip(rows, accs, mins):
                    x = _load(builder, xq_a.data, at(const(0), (row, n), (blk, const(BLOCK))), _I8, BLOCK)
                    lanes = _lane_sums(builder, u, _signed_like(builder, x, q) if lay.signed else x)
                    dx = builder.load(builder.gep(xd_a.data, [at(blk, (row, n_blocks))]))
                    scale = _splat(builder, builder.fmul(dw, dx), _F32, 8)
                    builder.store(_call(builder, "llvm.fma.v8f32", _V8F,
                                        [scale, builder.sitofp(lanes, _V8F), builder.load(acc)]), acc)
                    if lay.m_at is not None:
                        sx = builder.load(builder.gep(xs_a.data, [at(blk, (row, n_sums))]))
                        builder.store(builder.fadd(builder.load(m_acc), builder.fmul(mw, sx)), m_acc)
            for row, acc, m_acc in zip(rows, accs, mins):
                value = _reduce_lanes(builder, builder.load(acc))
                if lay.m_at is not None:
                    value = builder.fadd(value, builder.load(m_acc))
                builder.store(value, builder.gep(out_a.data, [at(r, (row, n_out))]))
            return context.get_dummy_value()

        return types.none(out, r, w, xq, xd, xs, k0), codegen

    dot_rows.__name__ = f"dot_rows{n_act}_{qtype.name.lower()}"
    return intrinsic(dot_rows)


# ---- kernel templates (specialised per type by kernel_kit.specialize) ------------------------

def _check_shapes(out_rows, out_cols, w, n, x_rows):
    """(out_rows, out_cols) must be (x_rows, w rows) and w's rows must hold n values."""
    if n % BLOCK or w.shape[1] != n // BLOCK * BYTES or out_cols != w.shape[0] or out_rows != x_rows:
        raise ValueError(SHAPE_ERROR)


def _quantize_rows(xd, xs, xq, x):
    """Each row of x f32[t, n] into its Q8 parts (Q8_1 when WITH_SUMS)."""
    for k in prange(x.shape[0]):
        if WITH_SUMS:
            quantize_q8_1_parts(xd[k], xs[k], xq[k], x[k])
        else:
            quantize_q8_0_parts(xd[k], xq[k], x[k])


def _matvec_int8(out, w, x):
    """out f32[rows] = W @ x, x f32[n] quantized to Q8 first; w u8[rows, n/32*BYTES] (C order)."""
    n = x.shape[0]
    rows = w.shape[0]
    _check_shapes(1, out.shape[0], w, n, 1)
    xq = np.empty((1, n), np.int8)
    xd = np.empty((1, n // BLOCK), np.float32)
    xs = np.empty((1, n // BLOCK if WITH_SUMS else 0), np.float32)
    quantize_rows(xd, xs, xq, x.reshape((1, n)))
    out2 = out.reshape((1, rows))
    for r in prange(rows):
        dot_rows1(out2, r, w, xq, xd, xs, 0)


def _matmul_int8(out, w, x):
    """out f32[t, rows] = x @ W.T, x f32[t, n] quantized row by row; w u8[rows, n/32*BYTES]."""
    t, n = x.shape
    _check_shapes(out.shape[0], out.shape[1], w, n, t)
    xq = np.empty((t, n), np.int8)
    xd = np.empty((t, n // BLOCK), np.float32)
    xs = np.empty((t, n // BLOCK if WITH_SUMS else 0), np.float32)
    quantize_rows(xd, xs, xq, x)
    t_full = t - t % MATMUL_ROWS
    for r in prange(w.shape[0]):
        for k in range(0, t_full, MATMUL_ROWS):
            dot_rows_tile(out, r, w, xq, xd, xs, k)
        for k in range(t_full, t):
            dot_rows1(out, r, w, xq, xd, xs, k)


# Activation rows per pass over a weight row in matmul (measured on Zen 4, 1536x576 and
# 4096x4096 Q4_1 with 32..128 rows: 4 beats 1, 2 and 8; several weight rows per pass, which
# would share the activation loads, measured slower, matvec included).
MATMUL_ROWS = 4


def _int8_kernels(qtype):
    """(matvec, matmul) with int8 activations for one legacy type."""
    name = qtype.name.lower()
    lay = LAYOUTS[qtype]
    with_sums = lay.m_at is not None  # the _1 types dot with Q8_1
    check = specialize(_check_shapes, f"check_shapes_int8_{name}", parallel=False,
                       BYTES=lay.nbytes,
                       SHAPE_ERROR=f"{qtype.name} int8 matvec/matmul: shapes of out, w and x do not agree")
    quantize_rows = specialize(_quantize_rows, f"quantize_rows_int8_{name}", WITH_SUMS=with_sums)
    common = dict(_check_shapes=check, quantize_rows=quantize_rows, WITH_SUMS=with_sums,
                  dot_rows1=_dot_rows_kernel(qtype, 1))
    matvec = specialize(_matvec_int8, f"matvec_int8_{name}", **common)
    matmul = specialize(_matmul_int8, f"matmul_int8_{name}", MATMUL_ROWS=MATMUL_ROWS,
                        dot_rows_tile=_dot_rows_kernel(qtype, MATMUL_ROWS), **common)
    return matvec, matmul


INT8_KERNELS = {qtype: _int8_kernels(qtype) for qtype in LAYOUTS}  # type -> (matvec, matmul)
