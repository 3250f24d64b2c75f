"""Legacy-type matvec / matmul with int8 activations, computed the way llama.cpp computes them.

llama.cpp never multiplies float activations by Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weights. It first
quantizes each activation row to the weight type's "vec_dot type" (Q8_0 for Q4_0, Q5_0, Q8_0;
Q8_1 for Q4_1, Q5_1) and then takes integer dot products per 32-block. The registered kernels
(legacy_tiles.py, built from the pieces here) do the same, with the float arithmetic of ggml's
x86 (AVX2) code, so that every output is bit-identical to ggml's `vec_dot` on such a machine
(the reference outputs in ../shared/reference were made there). The float kernels in legacy.py
are their reference twins.

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
exact in float32, so however they are computed (one by one, eight to a vector, or fused into
an fma) they are the same floats.

Written as LLVM vector IR (as kquants_int8.py, whose building blocks it shares) because Numba
widens integer products to int64. Per block the weight quants are unpacked into <32 x i8> and
multiplied with the 32 activation bytes into 8 int32 lanes (_BlockProducts): with AVX-512 VNNI
one `vpdpbusd` whose accumulator starts at the activation block's offset correction; else AVX2
`pmaddubsw` + `pmaddwd` with ggml's |w|, sign(x, w) trick, or plain vector IR elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from . import cpu_features
from .float_bits import nearest_int, round_to_f16
from . import kquants  # noqa: F401  (first: kquants imports kquants_int8 back at its end)
from . import kquants_int8 as _k8
from .kquants_int8 import _I8, _I16, _I32, _call, _consts, _load, _vec

BLOCK = 32

# ---- activations: Q8_0 / Q8_1 parts ----------------------------------------------------------

_INT32_LIMIT = np.float32(2147483648.0)


def _max_abs(x, o):
    """max(0, max |x[o + j]| over j < 32 that are not NaN), as the scalar loop `if a > amax`."""
    amax = np.float32(0.0)
    for j in range(BLOCK):
        a = abs(x[o + j])
        if a > amax:
            amax = a
    return amax


@intrinsic
def _max_abs_vector(typingctx, x, o):
    """_max_abs of a contiguous x in vector IR (a tree of compares: LLVM vectorised the scalar
    loop across blocks with gathers). Order does not matter: NaNs become 0 first, and the
    maximum of the other values is the same whichever way they are paired."""
    if not (isinstance(x, types.Array) and x.ndim == 1 and x.layout == "C" and x.dtype == types.float32
            and isinstance(o, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        start = builder.gep(data, [context.cast(builder, args[1], sig.args[1], types.intp)])
        v = builder.load(builder.bitcast(start, _vec(ir.FloatType(), BLOCK).as_pointer()), align=4)
        bits = builder.and_(builder.bitcast(v, _vec(_I32, BLOCK)), _consts(_I32, [0x7FFFFFFF] * BLOCK))
        m = builder.select(builder.fcmp_unordered("uno", v, v), ir.Constant(v.type, None),
                           builder.bitcast(bits, v.type))
        while m.type.count > 1:
            half = m.type.count // 2
            lo = builder.shuffle_vector(m, m, _consts(_I32, range(half)))
            hi = builder.shuffle_vector(m, m, _consts(_I32, range(half, 2 * half)))
            m = builder.select(builder.fcmp_ordered(">", hi, lo), hi, lo)
        return builder.extract_element(m, ir.Constant(_I32, 0))

    return types.float32(x, o), codegen


@overload(_max_abs)
def _max_abs_impl(x, o):
    if isinstance(x, types.Array) and x.layout == "C" and x.dtype == types.float32:
        return lambda x, o: _max_abs_vector(x, o)
    return _max_abs


@njit(cache=True, inline="always")
def _quantize_q8_blocks(d, s, qs, x, with_sums):
    """Q8_0 parts of x into d, qs (and Q8_1's s when with_sums); see quantize_q8_1_parts."""
    n = x.shape[0]
    n_blocks = n // BLOCK
    if n % BLOCK or d.shape[0] != n_blocks or qs.shape[0] != n or (with_sums and s.shape[0] != n_blocks):
        raise ValueError("Q8 activations: x length must be a multiple of 32 matching d, s and qs")
    for b in range(n_blocks):
        o = b * BLOCK
        amax = _max_abs(x, o)
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


@njit(cache=True)
def offset_lanes(c, qs, shift):
    """c i32[n/4] = -shift * (the sum of each 4 consecutive qs i8[n]): an activation row's
    correction lanes for weights taken shifted to unsigned (see _BlockProducts)."""
    for lane in range(c.shape[0]):
        o = 4 * lane
        c[lane] = -shift * (np.int32(qs[o]) + np.int32(qs[o + 1]) + np.int32(qs[o + 2]) + np.int32(qs[o + 3]))


# ---- vector IR -------------------------------------------------------------------------------

_F32 = ir.FloatType()
_V8F = _vec(_F32, 8)
_V8I = _vec(_I32, 8)
_INTP = _I64 = ir.IntType(64)

# Named x86 instructions only when Numba compiles for this host (cpu_features.py); the VNNI
# path also relies on AVX-512BW (a block's 32 high bits of Q5 as one mask register), which
# X86_VNNI includes. Tests switch paths by patching this module's names.
X86_VNNI = _k8.X86_VNNI
X86_F16C = cpu_features.has("f16c")


def _i8(v):
    return v - 256 if v >= 128 else v


def _splat(builder, value, ty, n):
    vec = builder.insert_element(ir.Constant(_vec(ty, n), None), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(vec, vec, ir.Constant(_vec(_I32, n), None))


def _f16_to_f32(builder, bits16):
    """i16 IEEE half bits (scalar or vector) -> float, exactly, in integer and float32
    operations (no F16C)."""
    count = bits16.type.count if isinstance(bits16.type, ir.VectorType) else None

    def const(ty, v):
        return ir.Constant(ty, v) if count is None else _consts(ty, [v] * count)

    i32, f32 = (_I32, _F32) if count is None else (_vec(_I32, count), _vec(_F32, count))
    bits = builder.zext(bits16, i32)
    magnitude = builder.shl(builder.and_(bits, const(_I32, 0x7FFF)), const(_I32, 13))
    # exponent and mantissa in float32 position; a multiply by 2**112 rebiases the exponent
    # exactly (half subnormals land on float32 normals); infinities and NaNs are kept apart
    rebiased = builder.fmul(builder.bitcast(magnitude, f32), const(_F32, 2.0 ** 112))
    special = builder.icmp_unsigned(">=", builder.and_(bits, const(_I32, 0x7C00)), const(_I32, 0x7C00))
    value = builder.select(special, builder.or_(magnitude, const(_I32, 0x7F800000)),
                           builder.bitcast(rebiased, i32))
    sign = builder.shl(builder.and_(bits, const(_I32, 0x8000)), const(_I32, 16))
    return builder.bitcast(builder.or_(value, sign), f32)


def _row_halves(builder, ptr, indices):
    """<2R x float>: the f16 pairs at byte ptr[index:index + 4] of R indices, pair i in lanes
    2i, 2i + 1 (the weight blocks' d and, for the _1 types, m of R rows; other types' second
    half is quant bytes, never used)."""
    count = len(indices)
    width = 4 if count <= 4 else 8
    words = ir.Constant(_vec(_I32, width), None)
    for lane, index in enumerate(indices):
        word = builder.load(builder.bitcast(builder.gep(ptr, [index]), _I32.as_pointer()), align=1)
        words = builder.insert_element(words, word, ir.Constant(_I32, lane))
    if X86_F16C:
        # one vcvtph2ps for all. The words enter a zeroed vector register, passed through an
        # empty inline asm so that LLVM cannot narrow a single word back to its scalar form:
        # that form merges the half into an arbitrary register (vpinsrw) whose stale value,
        # often an fma accumulator, becomes a dependency that serialises the otherwise
        # independent accumulation chains.
        words = builder.asm(ir.FunctionType(words.type, [words.type]), "", "=x,0", [words],
                            side_effect=False)
        halves = builder.bitcast(words, _vec(ir.HalfType(), 2 * width))
        lanes = max(4, 2 * count)  # vcvtph2ps converts 4 or 8 halves
        floats = builder.fpext(builder.shuffle_vector(halves, halves, _consts(_I32, range(lanes))),
                               _vec(_F32, lanes))
    else:
        floats = _f16_to_f32(builder, builder.bitcast(words, _vec(_I16, 2 * width)))
    return builder.shuffle_vector(floats, floats, _consts(_I32, range(2 * count)))


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

    @property
    def shift(self) -> int:
        """What makes every quant unsigned when added: the offset, or 128 for Q8_0's int8."""
        return 128 if self.int8 else self.offset


LAYOUTS = {
    T.Q4_0: Layout(GGML_QUANT_SIZES[T.Q4_0][1], d_at=0, qs_at=2, offset=8),
    T.Q4_1: Layout(GGML_QUANT_SIZES[T.Q4_1][1], d_at=0, m_at=2, qs_at=4),
    T.Q5_0: Layout(GGML_QUANT_SIZES[T.Q5_0][1], d_at=0, qh_at=2, qs_at=6, offset=16),
    T.Q5_1: Layout(GGML_QUANT_SIZES[T.Q5_1][1], d_at=0, m_at=2, qh_at=4, qs_at=8),
    T.Q8_0: Layout(GGML_QUANT_SIZES[T.Q8_0][1], d_at=0, qs_at=2, int8=True),
}


def _quants(builder, wp, i, lay: Layout, shifted: bool):
    """<32 x i8>: the block's 32 quants in element order: signed (offset applied) when lay.signed,
    unless `shifted`, which gives them plus lay.shift, every byte unsigned."""
    def at(offset):
        return builder.add(i, ir.Constant(i.type, offset))

    if lay.int8:
        q = _load(builder, wp, at(lay.qs_at), _I8, 32)
        return builder.xor(q, _consts(_I8, [-128] * 32)) if shifted else q  # q + 128 as u8
    # the 16 packed bytes twice (one broadcast load), the upper copy shifted right by 4 as
    # two 64-bit lanes (vpsrlvq): one shift and one mask give byte j = q[j], byte j + 16 = q[j + 16]
    packed = _load(builder, wp, at(lay.qs_at), _I8, 16)
    twice = builder.bitcast(builder.shuffle_vector(packed, packed, _consts(_I32, list(range(16)) * 2)),
                            _vec(_I64, 4))
    shifted_high = builder.lshr(twice, _consts(_I64, [0, 0, 4, 4]))
    q = builder.and_(builder.bitcast(shifted_high, _vec(_I8, 32)), _consts(_I8, [0x0F] * 32))
    if lay.qh_at is not None:
        sixteen = _consts(_I8, [16] * 32)
        if X86_VNNI:  # AVX-512: the 32 bits go straight into a mask register
            qh = builder.load(builder.bitcast(builder.gep(wp, [at(lay.qh_at)]), _I32.as_pointer()), align=1)
            q = builder.select(builder.bitcast(qh, _vec(ir.IntType(1), 32)), builder.or_(q, sixteen), q)
        else:
            qh = _load(builder, wp, at(lay.qh_at), _I8, 4)
            spread = builder.shuffle_vector(qh, qh, _consts(_I32, [j // 8 for j in range(32)]))
            bit = builder.and_(spread, _consts(_I8, [_i8(1 << (j % 8)) for j in range(32)]))
            zero = ir.Constant(_vec(_I8, 32), None)
            q = builder.or_(q, builder.select(builder.icmp_unsigned("!=", bit, zero), sixteen, zero))
    if lay.offset and not shifted:
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


def _dpbusd(builder, acc, u, s):
    """acc + <8 x i32>: lane j = sum_{e=4j..4j+3} u[e] * s[e] (unsigned u, signed s; VNNI only)."""
    return _call(builder, "llvm.x86.avx512.vpdpbusd.256", _V8I,
                 [acc, builder.bitcast(u, _V8I), builder.bitcast(s, _V8I)])


def _lane_sums(builder, u, s):
    """<8 x i32>: lane j = sum_{e=4j..4j+3} u[e] * s[e] for unsigned bytes u, signed bytes s."""
    if X86_VNNI:
        return _dpbusd(builder, ir.Constant(_V8I, None), u, s)
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


class _BlockProducts:
    """How one weight block meets one activation block: the integer lanes of q_w * q_x.

    With VNNI, signed weights are taken shifted to unsigned (q + shift) and the lanes are
    vpdpbusd(-shift * sum4(x), q + shift, x): the same integers as sum4(q * x) (no step
    saturates), where -shift * sum4(x) was computed once per activation block by the
    quantizer (offset_lanes) and serves every weight row. Without VNNI (pmaddubsw saturates
    int16: 255 * 127 * 2 does not fit), signed weights keep ggml's |q| times sign-applied x,
    which costs a psign per (weight, activation) pair.
    """

    def __init__(self, builder, lay: Layout):
        self.b, self.lay = builder, lay
        self.shifted = X86_VNNI and lay.signed

    def quants(self, wp, i):
        """<32 x i8>: the block at byte i unpacked (shifted to unsigned with VNNI)."""
        return _quants(self.b, wp, i, self.lay, self.shifted)

    def weight(self, q):
        """Unpacked quants q prepared for any number of activation blocks."""
        if self.lay.signed and not self.shifted:
            return _magnitude(self.b, q), q
        return q, None

    def lanes(self, weight, x, correction):
        """<8 x i32> of a weight block (from `weight`) and activation block x <32 x i8>;
        correction: the activation block's offset lanes when shifted, else None."""
        u, q = weight
        if self.shifted:
            return _dpbusd(self.b, correction, u, x)
        return _lane_sums(self.b, u, _signed_like(self.b, x, q) if q is not None else x)


def shift_of(qtype) -> int:
    """The shift the kernels add to qtype's quants (0: none; see _BlockProducts)."""
    lay = LAYOUTS[qtype]
    return lay.shift if X86_VNNI and lay.signed else 0


from .legacy_tiles import INT8_KERNELS  # noqa: E402,F401  (the kernels, built from the above)
