"""K-quant matmul with int8 activations on register tiles: the prefill hot function.

The arithmetic is the matvec's (kquants_int8.py): activations quantized to Q8_K (the same
quants and scales, bit for bit), integer dot products per sub-block, and per block

  block . x  ~  dx * sum_s (d * sc_s * (q_s . xq_s)  -  e * m_s * bsum_s)

but shaped for many activation rows, so that neither the per-block horizontal reductions nor
the scalar float tail of a one-row dot remain.

Lane order. vpdpbusd adds 4 byte products into each of 8 int32 lanes; the lanes can carry
sub-block scales only if each lane only ever sums values of one sub-block. So both operands
are stored block by block in a lane order (`lane_order`): 8 vectors of 32 bytes in which
bytes 4j..4j+3 of every vector belong to sub-block j of a lane group. With 8 sub-blocks of 32
(Q4_K, Q5_K) vector v, lane j holds elements 32j + 4v..+3 and the 8 vectors fill one lane
group per block; with 16 sub-blocks of 16 (Q2_K, Q3_K, Q6_K) vectors 0..3 cover sub-blocks
0..7 and vectors 4..7 sub-blocks 8..15: two lane groups per block.

Panels. Once per call each activation row is quantized into activation panels (TILE_COLS rows
interleaved block by block); once per weight tile each block of TILE_ROWS rows is decoded (by
the matvec's decoders) into a weight panel: lane-ordered quants, d * sc_s, and -e * m_s per
sub-block. The panel of one weight tile stays in L1 (CHUNK_BLOCKS blocks at a time) while every
activation panel streams past it.

The register tile: TILE_ROWS weight rows x TILE_COLS activation rows, one <8 x f32> accumulator
per pair. Per block and lane group each pair's int32 lanes come from 4 or 8 vpdpbusd (each
weight vector is shared by TILE_COLS pairs, each activation vector by TILE_ROWS), and are folded
into the float accumulator:

  acc = fma(float(lanes) * dx, d * sc, acc);  acc = fma(-e * m, dx * bsum, acc)

The 8 lanes are summed once, at the end of the row. Q3_K and Q6_K, whose correction is only a
constant offset (q - 4, q - 32), skip the second fma: their panels hold signed weights and
activations + 128 (vpdpbusd multiplies unsigned by signed bytes), and each lane sum starts from
-128 * (sum of the lane's weights), stored in the weight panel, which cancels the + 128.
Without VNNI the byte dots are pmaddubsw + pmaddwd (AVX2) or plain vector IR
(kquants_int8._dot4). Exactness: lane sums stay below 2**24 (at most 32 * 63 * 127 or
16 * 32 * 255 before the start), so their float conversion is exact, and d * sc, e * m are
exact products of an f16 and a small integer.

Numba's cache does not see edits in kquants_int8.py (decoders, _dot4): clear
quant/__pycache__ after changing them.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import literally, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .kquants import QK_K, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, block_bytes, table_entry
from .kquants_dot import check_dot_shapes
from .kquants_int8 import (INT8_KERNELS, _I8, _I32, _Unpack, _call, _consts, _contiguous, _data,
                           _dot4, _load, _splat, _vec, block_scales, row_dots)

TILE_ROWS = 4  # weight rows per register tile
TILE_COLS = 3  # activation rows per register tile (4 x 3 pairs: 12 accumulators + 12 lane sums)
# Blocks per pass of the register tile: a weight panel's 8 blocks (10-12 KiB) stay in the 32 KiB
# L1 while the activation panels' same 8 blocks (7-8 KiB each) stream past them from L2.
CHUNK_BLOCKS = 8
# Activation panel bytes run past each decoded weight tile in one pass: they should stay in
# the core's L2 (1 MiB on Zen 4) while weight tiles go by. Measured on 896 x 4864, 512 tokens
# (7 passes of 512 KiB vs one of 3.3 MiB): +10% Q4_K, +20% Q6_K; each pass decodes the
# weights again (about 3% of a 128-token matmul).
PASS_BYTES = 512 * 1024

_F32 = ir.FloatType()
_V8F = _vec(_F32, 8)
_V8I = _vec(_I32, 8)
_INTP = ir.IntType(64)


def lane_order(sub_blocks: int) -> list[int]:
    """Dword k of a lane-ordered block (vector k // 8, lane k % 8) is natural dword order[k]."""
    steps = QK_K // sub_blocks // 4  # vectors per lane group: 8 (sub-blocks of 32) or 4 (of 16)
    return [steps * (8 * (v // steps) + j) + v % steps for v in range(8) for j in range(8)]


# ---- panels: the operands of a register tile, block by block ----------------------------------
#
# Weight panel record (one block of TILE_ROWS rows r; S scales per block, WQ = 256 TILE_ROWS):
#   quants of row r in lane order at 256 r (signed q - offset for the offset types);
#   f32 d * scale[r, s] at WQ + 4 (S r + s);
#   f32 -e * min[r, s] at WQ + 4 S (TILE_ROWS + r) + 4 s, or for the offset types i32 lane-sum
#   starts -128 * sum(lane's weights) there (lane group g at + 32 g).
# Activation panel record (one block of TILE_COLS rows c, XQ = 256 TILE_COLS):
#   Q8_K quants of row c in lane order at 256 c (+ 128 as unsigned bytes for the offset types);
#   f32 dx[c] at XQ + 4 c;  f32 dx * (sum of sub-block s's quants) at XQ + 4 TILE_COLS + 4 (S c + s)
#   (not written for the offset types).
# Records are padded to 64 bytes; one pointer per panel keeps the register tile's addressing
# to constant offsets.

def _round64(v):
    return (v + 63) // 64 * 64


def weight_record(sub_blocks: int) -> int:
    """Bytes per block of a weight panel."""
    return _round64(TILE_ROWS * (QK_K + 8 * sub_blocks))


def activation_record(sub_blocks: int) -> int:
    """Bytes per block of an activation panel."""
    return _round64(TILE_COLS * (QK_K + 4 + 4 * sub_blocks))


def _intp(v):
    return ir.Constant(_INTP, v)


def _concat(builder, vectors):
    while len(vectors) > 1:
        vectors = [builder.shuffle_vector(a, b, _consts(_I32, range(2 * a.type.count)))
                   for a, b in zip(vectors[::2], vectors[1::2])]
    return vectors[0]


def _store(builder, value, base, offset):
    builder.store(value, builder.bitcast(builder.gep(base, [offset]), value.type.as_pointer()), align=1)


def _lane_vectors(builder, groups, sub_blocks):
    """8 <32 x i8> groups (a block in element order) -> the block's 8 lane-order <8 x i32>."""
    block = _concat(builder, [builder.bitcast(g, _V8I) for g in groups])  # <64 x i32>
    order = lane_order(sub_blocks)
    return [builder.shuffle_vector(block, block, _consts(_I32, order[8 * v:8 * v + 8])) for v in range(8)]


def _store_lanes(builder, vectors, base, offset):
    _store(builder, _concat(builder, vectors), base, offset)


def _sub_blocks(qtype):
    """Scales per block of a literal K type (None for anything else)."""
    entry = table_entry(INT8_KERNELS, qtype)
    return None if entry is None else entry.sub_blocks


def _index(context, builder, sig, args, k):
    return context.cast(builder, args[k], sig.args[k], types.intp)


def _group_sums(builder, lanes, sub_blocks):
    """Per lane group, <8 x i32>: lane j = the sum of sub-block j's (signed) quants."""
    ones = _consts(_I8, [1] * 32)
    steps = 64 // sub_blocks
    groups = []
    for g in range(sub_blocks // 8):
        sums = ir.Constant(_V8I, None)
        for k in range(steps):
            sums = _dot4(builder, sums, ones, builder.bitcast(lanes[g * steps + k], _vec(_I8, 32)))
        groups.append(sums)
    return groups


def _first_of(builder, masks):
    """Index of the lowest set bit over i64 masks taken as one bit string; 0 if none is (NaN
    rows: their quants are meaningless, but no load may leave the block)."""
    i64 = ir.IntType(64)
    index = ir.Constant(i64, 0)
    for q in reversed(range(len(masks))):  # the lowest non-zero mask wins
        bit = _call(builder, "llvm.cttz.i64", i64, [masks[q], ir.Constant(ir.IntType(1), 0)])
        found = builder.icmp_unsigned("!=", masks[q], ir.Constant(i64, 0))
        index = builder.select(found, builder.add(bit, ir.Constant(i64, 64 * q)), index)
    return index


@intrinsic
def put_activation_row(typingctx, panel, c, x, qtype):
    """Activation row c of a panel u8[n / 256 * activation_record] <- x f32[n] as Q8_K.

    The quants and scale are kquants.quantize_q8_k_parts' to the bit (the largest magnitude,
    the first of equals, maps to -127; products round half to even and clip at 127; an
    all-zero block has d = 0); the sub-block sums come from the quants (vpdpbusd by ones).
    """
    per = _sub_blocks(qtype)
    if per is None or not _contiguous(panel, x) or x.dtype != types.float32:
        return None
    shifted = INT8_KERNELS[qtype.literal_value].offset != 0
    record, quants = activation_record(per), TILE_COLS * QK_K
    v64f, v64i = _vec(_F32, 64), _vec(_I32, 64)

    def codegen(context, builder, sig, args):
        panel_a, x_a = (_data(context, builder, sig.args[k], args[k]) for k in (0, 2))
        c = _index(context, builder, sig, args, 1)
        n = cgutils.unpack_tuple(builder, x_a.shape, 1)[0]
        with cgutils.for_range(builder, builder.udiv(n, _intp(QK_K))) as loop:
            blk = loop.index
            xp = builder.gep(x_a.data, [builder.mul(blk, _intp(QK_K))])
            xs = [builder.load(builder.bitcast(builder.gep(xp, [_intp(64 * q)]), v64f.as_pointer()), align=4)
                  for q in range(4)]
            mags = [_call(builder, "llvm.fabs.v64f32", v64f, [v]) for v in xs]
            top = _call(builder, "llvm.maxnum.v64f32", v64f, [
                _call(builder, "llvm.maxnum.v64f32", v64f, mags[:2]),
                _call(builder, "llvm.maxnum.v64f32", v64f, mags[2:])])
            amax = _call(builder, "llvm.vector.reduce.fmax.v64f32", _F32, [top])
            masks = [builder.bitcast(builder.fcmp_ordered("==", m, _splat(builder, amax, 64)), ir.IntType(64))
                     for m in mags]
            vmax = builder.load(builder.gep(xp, [_first_of(builder, masks)]))
            zero_block = builder.fcmp_ordered("==", amax, ir.Constant(_F32, 0.0))
            zero = ir.Constant(_F32, 0.0)
            iscale = builder.select(zero_block, zero, builder.fdiv(ir.Constant(_F32, -127.0), vmax))
            dx = builder.select(zero_block, zero, builder.fdiv(ir.Constant(_F32, 1.0), iscale))
            limit = _consts(_I32, [127] * 64)
            bytes_ = []
            for v in xs:
                q = _call(builder, "llvm.roundeven.v64f32", v64f, [builder.fmul(v, _splat(builder, iscale, 64))])
                q = builder.fptosi(q, v64i)
                q = builder.select(builder.icmp_signed(">", q, limit), limit, q)
                bytes_.append(builder.trunc(q, _vec(_I8, 64)))
            groups = [builder.shuffle_vector(b, b, _consts(_I32, range(32 * h, 32 * h + 32)))
                      for b in bytes_ for h in range(2)]
            lanes = _lane_vectors(builder, groups, per)
            at = builder.mul(blk, _intp(record))
            stored = [builder.xor(v, _consts(_I32, [-0x7F7F7F80] * 8)) for v in lanes] if shifted else lanes
            _store_lanes(builder, stored, panel_a.data, builder.add(at, builder.mul(c, _intp(QK_K))))
            floats = builder.add(at, _intp(quants))
            _store(builder, dx, panel_a.data, builder.add(floats, builder.mul(c, _intp(4))))
            if not shifted:  # shifted types settle their offsets in the weight panel instead
                for g, sums in enumerate(_group_sums(builder, lanes, per)):
                    scaled = builder.fmul(builder.sitofp(sums, _V8F), _splat(builder, dx, 8))
                    offset = _intp(4 * TILE_COLS + 32 * g)
                    _store(builder, scaled, panel_a.data,
                           builder.add(floats, builder.add(offset, builder.mul(c, _intp(4 * per)))))
        return context.get_dummy_value()
    return types.none(panel, c, x, qtype), codegen


@intrinsic
def put_weight_block(typingctx, panel, r, blk, w, i, d, e, qtype):
    """Weight row r, block blk of a panel u8[n / 256 * weight_record] <- the qtype block at
    w u8[:][i:], decoded; (d, e) are its block_scales."""
    per = _sub_blocks(qtype)
    if per is None or not _contiguous(panel, w):
        return None
    decode, offset = INT8_KERNELS[qtype.literal_value].decode, INT8_KERNELS[qtype.literal_value].offset
    record, quants = weight_record(per), TILE_ROWS * QK_K

    def codegen(context, builder, sig, args):
        panel_a, w_a = (_data(context, builder, sig.args[k], args[k]) for k in (0, 3))
        r, blk, i = (_index(context, builder, sig, args, k) for k in (1, 2, 4))
        d, e = (context.cast(builder, args[k], sig.args[k], types.float32) for k in (5, 6))
        dec = decode(_Unpack(builder, w_a.data, i))
        at = builder.mul(blk, _intp(record))
        quant_vectors = dec.quants
        if offset:
            quant_vectors = [builder.sub(q, _consts(_I8, [offset] * 32)) for q in quant_vectors]
        lanes = _lane_vectors(builder, quant_vectors, per)
        _store_lanes(builder, lanes, panel_a.data, builder.add(at, builder.mul(r, _intp(QK_K))))

        def put(values, k):  # k = 0: the scales' slot, 1: the mins' slot
            where = builder.add(_intp(quants + 4 * per * TILE_ROWS * k), builder.mul(r, _intp(4 * per)))
            _store(builder, values, panel_a.data, builder.add(at, where))

        vf = _vec(_F32, per)
        put(builder.fmul(builder.sitofp(dec.scales, vf), _splat(builder, d, per)), 0)
        if offset:  # the lane sums' start: 128 * (x + 128) . q would add 128 * sum(q) per lane
            starts = [builder.mul(s, _consts(_I32, [-128] * 8)) for s in _group_sums(builder, lanes, per)]
            put(_concat(builder, starts), 1)
        else:
            put(builder.fmul(builder.sitofp(dec.mins, vf), _splat(builder, builder.fneg(e), per)), 1)
        return context.get_dummy_value()
    return types.none(panel, r, blk, w, i, d, e, qtype), codegen


@intrinsic
def tile_dots(typingctx, acc, wpanel, xpanel, fresh, qtype):
    """acc f32[TILE_COLS * TILE_ROWS * 8] += the dot products of a weight panel
    u8[blocks * weight_record] with an activation panel u8[blocks * activation_record], as
    8 partial sums per pair (pair (c, r) at 8 * (c * TILE_ROWS + r)); `fresh` (bool): start
    from zero instead (acc's old contents are ignored)."""
    per = _sub_blocks(qtype)
    if per is None or not _contiguous(acc, wpanel, xpanel) or not isinstance(fresh, types.Boolean):
        return None
    shifted = INT8_KERNELS[qtype.literal_value].offset != 0
    groups = per // 8                  # lane groups per block
    steps = 8 // groups                # vpdpbusd per lane group
    w_record, x_record = weight_record(per), activation_record(per)
    w_sc, w_mn = TILE_ROWS * QK_K, TILE_ROWS * (QK_K + 4 * per)
    x_dx, x_b = TILE_COLS * QK_K, TILE_COLS * (QK_K + 4)

    def codegen(context, builder, sig, args):
        acc_a, wp_a, xp_a = (_data(context, builder, sig.args[k], args[k]) for k in range(3))
        n_blocks = builder.udiv(cgutils.unpack_tuple(builder, wp_a.shape, 1)[0], _intp(w_record))
        pairs = [(r, c) for r in range(TILE_ROWS) for c in range(TILE_COLS)]
        sums = {(r, c): builder.gep(acc_a.data, [_intp(8 * (c * TILE_ROWS + r))]) for r, c in pairs}
        fresh = context.cast(builder, args[3], sig.args[3], types.boolean)
        accs = {p: cgutils.alloca_once_value(builder, builder.select(
            fresh, ir.Constant(_V8F, None), _load(builder, sums[p], _intp(0), _F32, 8))) for p in pairs}
        with cgutils.for_range(builder, n_blocks) as loop:
            wb = builder.gep(wp_a.data, [builder.mul(loop.index, _intp(w_record))])
            xb = builder.gep(xp_a.data, [builder.mul(loop.index, _intp(x_record))])

            def at(base, offset, ty, n):
                return _load(builder, base, _intp(offset), ty, n)

            dx = [_splat(builder, builder.load(builder.bitcast(builder.gep(xb, [_intp(x_dx + 4 * c)]),
                                                               _F32.as_pointer())), 8)
                  for c in range(TILE_COLS)]
            for g in range(groups):
                if shifted:  # signed weights, activations + 128, lane sums started at -128 * sum(w)
                    starts = [at(wb, w_mn + 4 * (per * r + 8 * g), _I32, 8) for r in range(TILE_ROWS)]
                    lanes = {(r, c): starts[r] for r, c in pairs}
                else:
                    lanes = {p: ir.Constant(_V8I, None) for p in pairs}
                for k in range(steps):
                    v = 32 * (g * steps + k)
                    wv = [at(wb, QK_K * r + v, _I8, 32) for r in range(TILE_ROWS)]
                    xv = [at(xb, QK_K * c + v, _I8, 32) for c in range(TILE_COLS)]
                    for r, c in pairs:
                        unsigned, signed = (xv[c], wv[r]) if shifted else (wv[r], xv[c])
                        lanes[r, c] = _dot4(builder, lanes[r, c], unsigned, signed)
                sc = [at(wb, w_sc + 4 * (per * r + 8 * g), _F32, 8) for r in range(TILE_ROWS)]
                if not shifted:
                    mn = [at(wb, w_mn + 4 * (per * r + 8 * g), _F32, 8) for r in range(TILE_ROWS)]
                    xs = [at(xb, x_b + 4 * (per * c + 8 * g), _F32, 8) for c in range(TILE_COLS)]
                for r, c in pairs:
                    scaled = builder.fmul(builder.sitofp(lanes[r, c], _V8F), dx[c])
                    acc = _call(builder, "llvm.fma.v8f32", _V8F, [scaled, sc[r], builder.load(accs[r, c])])
                    if not shifted:
                        acc = _call(builder, "llvm.fma.v8f32", _V8F, [mn[r], xs[c], acc])
                    builder.store(acc, accs[r, c])
        for p in pairs:
            _store(builder, builder.load(accs[p]), sums[p], _intp(0))
        return context.get_dummy_value()
    return types.none(acc, wpanel, xpanel, fresh, qtype), codegen


def panel_layout(qtype):
    """Numba-only: (S, weight_record(S), activation_record(S)) for the literal type `qtype`,
    S its scales per block; compile-time constants."""
    raise NotImplementedError("panel_layout is callable from Numba code only")


@overload(panel_layout, inline="always")
def _panel_layout(qtype):
    per = _sub_blocks(qtype)
    if per is None:
        return None
    layout = (per, weight_record(per), activation_record(per))
    return lambda qtype: layout


@njit(inline="always")
def lane_sum(v, o):
    """v[o] + ... + v[o + 7], halves added pairwise (as a vector reduction would)."""
    return (((v[o] + v[o + 4]) + (v[o + 2] + v[o + 6]))
            + ((v[o + 1] + v[o + 5]) + (v[o + 3] + v[o + 7])))


@njit(inline="always")
def weight_tile_times_panels(out, w, tile, xpanels, xt0, xt1, qtype):
    """out[k, r] for the rows r of weight tile `tile` and the activation rows k of panels
    xt0..xt1 - 1: the tile is decoded into a weight panel, then run past those panels."""
    nbytes = block_bytes(qtype)
    per, w_record, x_record = panel_layout(qtype)
    t, rows = out.shape
    n_blocks = xpanels.shape[1] // x_record
    r0 = tile * TILE_ROWS
    n_rows = min(TILE_ROWS, rows - r0)
    wpanel = np.empty(n_blocks * w_record, np.uint8)
    if n_rows < TILE_ROWS:
        wpanel[:] = 0  # rows past the end: finite values whose dots are not stored
    for r in range(n_rows):
        row = w[r0 + r]
        for blk in range(n_blocks):
            i = blk * nbytes
            d, e = block_scales(qtype, row, i)
            put_weight_block(wpanel, r, blk, row, i, d, e, qtype)
    acc = np.empty((xt1 - xt0, TILE_COLS * TILE_ROWS * 8), np.float32)
    for b0 in range(0, n_blocks, CHUNK_BLOCKS):
        b1 = min(n_blocks, b0 + CHUNK_BLOCKS)
        wchunk = wpanel[b0 * w_record:b1 * w_record]
        for xt in range(xt0, xt1):
            tile_dots(acc[xt - xt0], wchunk, xpanels[xt][b0 * x_record:b1 * x_record], b0 == 0, qtype)
    for xt in range(xt0, xt1):
        for c in range(min(TILE_COLS, t - xt * TILE_COLS)):
            for r in range(n_rows):
                out[xt * TILE_COLS + c, r0 + r] = lane_sum(acc[xt - xt0], 8 * (c * TILE_ROWS + r))


@njit(cache=True, parallel=True)
def matmul_int8_tiles(out, w, x, qtype):
    """out f32[t, rows] <- x f32[t, n] @ w.T for w u8[rows, row_bytes] of literal type `qtype`.

    Activations are quantized into panels once; then, in passes over groups of activation
    panels small enough to stay in L2 (PASS_BYTES), every weight tile is decoded and run past
    the group (threads split the weight tiles).
    """
    nbytes = block_bytes(literally(qtype))
    t, n = x.shape
    check_dot_shapes(out.shape[1], w, n, nbytes)
    if out.shape[0] != t:
        raise ValueError("K-quant matmul: output rows do not match the activation rows")
    if t == 1:  # a tile would waste two thirds of its work
        row_dots(out[0], w, x[0], qtype)
        return
    per, w_record, x_record = panel_layout(qtype)
    n_blocks = n // QK_K
    x_tiles = (t + TILE_COLS - 1) // TILE_COLS
    xpanels = np.zeros((x_tiles, n_blocks * x_record), np.uint8)  # padding rows: 0
    for xt in prange(x_tiles):  # a panel's rows share cache lines: one thread writes them
        for k in range(xt * TILE_COLS, min(t, xt * TILE_COLS + TILE_COLS)):
            put_activation_row(xpanels[xt], k - xt * TILE_COLS, np.ascontiguousarray(x[k]), qtype)
    passes = (x_tiles * n_blocks * x_record + PASS_BYTES - 1) // PASS_BYTES
    per_pass = (x_tiles + passes - 1) // passes
    w_tiles = (w.shape[0] + TILE_ROWS - 1) // TILE_ROWS
    for xt0 in range(0, x_tiles, per_pass):
        for tile in prange(w_tiles):
            weight_tile_times_panels(out, w, tile, xpanels, xt0, min(x_tiles, xt0 + per_pass), qtype)


# One entry point per type (Numba caches module-level functions only).

@njit(cache=True)
def matmul_int8_q2_k(out, w, x):
    """out f32[t, rows] <- x f32[t, n] @ w.T, w u8[rows, n/256*84] (Q2_K), int8 activations."""
    matmul_int8_tiles(out, w, x, Q2_K)


@njit(cache=True)
def matmul_int8_q3_k(out, w, x):
    """out f32[t, rows] <- x f32[t, n] @ w.T, w u8[rows, n/256*110] (Q3_K), int8 activations."""
    matmul_int8_tiles(out, w, x, Q3_K)


@njit(cache=True)
def matmul_int8_q4_k(out, w, x):
    """out f32[t, rows] <- x f32[t, n] @ w.T, w u8[rows, n/256*144] (Q4_K), int8 activations."""
    matmul_int8_tiles(out, w, x, Q4_K)


@njit(cache=True)
def matmul_int8_q5_k(out, w, x):
    """out f32[t, rows] <- x f32[t, n] @ w.T, w u8[rows, n/256*176] (Q5_K), int8 activations."""
    matmul_int8_tiles(out, w, x, Q5_K)


@njit(cache=True)
def matmul_int8_q6_k(out, w, x):
    """out f32[t, rows] <- x f32[t, n] @ w.T, w u8[rows, n/256*210] (Q6_K), int8 activations."""
    matmul_int8_tiles(out, w, x, Q6_K)
