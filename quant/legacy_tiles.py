"""The legacy-type int8 kernels: matvec (decode) and the register-tiled matmul (prefill).

Both compute exactly legacy_int8.py's per-pair arithmetic (the block IR lives there); what
differs is how the work is arranged. Measured on Zen 4 (AVX-512 VNNI, 1 thread, t = 128
activation rows, Q5_0 / Q8_0 / Q4_1 weights 256..4864 x 576..4864): the matmul went from
~3.3 cycles per (block, activation row) pair, one weight row against 4 activation rows per
pass, to ~1.4-1.6, and the matvec got 10-35 % faster.

matmul. Tiles of TILE_ROWS weight rows x TILE_TOKENS activation rows (4 x 4 with VNNI: 16
ymm accumulators; 2 x 8, 4 x 3, 4 x 5, 3 x 6 measured slower). Per tile of weight rows, `stage`
decodes once what every activation tile reuses: the f16 scales as floats (ws) and the quants
unpacked to 32 bytes a block (us). Per (weight tile, activation tile), `dot_tile` makes two
passes over the blocks:
  1. the scales d_w * d_x of the 16 pairs, one vector multiply per block, into ps (and the
     _1 types' m_w * s_x sums);
  2. per block and pair one vpdpbusd (its accumulator the activation block's offset
     correction, legacy_int8._BlockProducts), one int -> float conversion and one fma whose
     scale is a broadcast memory operand from ps. The fma and vpdpbusd share Zen 4's two
     FP0/FP1 pipes, the floor of 1 cycle per pair; loading the scale costs no pipe slot
     where a multiply and a broadcast per pair cost two (and scales stored in the pass that
     reads them stalled on store forwarding).
Activation scales are stored transposed (xd[block, row]) so that a tile's are one vector
load. The tiles of a matmul are split into TILE_GROUPS groups of consecutive tiles, each with
one slice of a single scratch allocation (an allocation per tile cost as much as a small tile).

matvec. One activation row: each weight block serves one pair, so `dot_column` unpacks it
where it is used and splats its scale from a register, 4 weight rows per pass (independent
accumulation chains, one activation load for 4 rows), no scratch.

The weight rows of a tile (both kernels) are a quarter of the matrix apart: tile r holds rows
r, r + S, r + 2S, r + 3S (S = the number of tiles; rows past the last are read as the last and
not written). Each of them is then one ascending stream through memory, which the hardware
prefetchers follow: 4 adjacent rows read block by block made a matrix streamed from DRAM (a
262144 x 640 Q8_0 output head, or a 35 MB matmul with a few activation rows) 3x slower than
one row at a time; from L2/L3 either order is as fast.

Without VNNI the tile is 1 x 4, as before the tiling: each pair needs its own psign there
(pmaddubsw saturates, so the offset correction is not exact for Q8_0), and AVX2 has 16
vector registers. Every kernel is bit-identical to the others and to ggml's vec_dot.

Numba's cache notices edits only in the file a function is defined in: after changing
legacy_int8.py's block IR, clear quant/__pycache__ (the kernels here cache what it emitted).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import legacy_int8 as _base  # its x86 flags are read when a kernel is built
from .kernel_kit import specialize
from .kquants_int8 import _I8, _I32, _call, _consts, _contiguous, _data, _load, _vec
from .legacy_int8 import (BLOCK, LAYOUTS, _BlockProducts, _F32, _INTP, _V8F, _reduce_lanes,
                          _row_halves, _splat, offset_lanes, quantize_q8_0_parts,
                          quantize_q8_1_parts, shift_of)


# ---- intrinsics -----------------------------------------------------------------------------

def _typed(args, spec):
    """Whether intrinsic arguments match spec: (ndim, dtype) for a C-contiguous array, or
    None for an integer."""
    for arg, want in zip(args, spec, strict=True):
        if want is None:
            if not isinstance(arg, types.Integer):
                return False
        elif not (_contiguous(arg) and (arg.ndim, arg.dtype) == want):
            return False
    return True


F32_1D, F32_2D = (1, types.float32), (2, types.float32)
I8_2D, I32_2D, U8_2D = (2, types.int8), (2, types.int32), (2, types.uint8)


class _Emit:
    """Index arithmetic on intp IR values, and an array's extents."""

    def __init__(self, context, builder, sig, args):
        self.b = builder
        typed = list(enumerate(zip(sig.args, args)))
        self.arrays = {k: _data(context, builder, t, a) for k, (t, a) in typed if isinstance(t, types.Array)}
        self.ints = {k: context.cast(builder, a, t, types.intp) for k, (t, a) in typed
                     if isinstance(t, types.Integer)}

    @staticmethod
    def const(v):
        return ir.Constant(_INTP, v)

    def plus(self, index, k):
        return self.b.add(index, self.const(k))

    def at(self, index, *terms):
        """index + sum(a * b) over the (a, b) terms."""
        for a, b in terms:
            index = self.b.add(index, self.b.mul(a, self.const(b) if isinstance(b, int) else b))
        return index

    def shape(self, array):
        return cgutils.unpack_tuple(self.b, array.shape, array.shape.type.count)

    def tile_rows(self, r0, stride, n_rows, n_w):
        """(rows, real): the n_w row indices r0, r0 + stride, ..., those past the last row
        clamped to it (read, never written: real[i] says whether row i is itself; None for
        row 0, which callers keep in range)."""
        last = self.b.sub(n_rows, self.const(1))
        rows, real = [r0], [None]
        for i in range(1, n_w):
            r = self.b.add(r0, self.b.mul(stride, self.const(i)))
            real.append(self.b.icmp_signed("<=", r, last))
            rows.append(self.b.select(real[-1], r, last))
        return rows, real

    def store_if(self, real, value, ptr):
        """Store value at ptr when real (an i1, or None: always)."""
        if real is None:
            self.b.store(value, ptr)
        else:
            with self.b.if_then(real):
                self.b.store(value, ptr)

    def vector(self, ptr, index, ty):
        return self.b.load(self.b.bitcast(self.b.gep(ptr, [index]), ty.as_pointer()), align=1)

    def put(self, value, ptr, index):
        self.b.store(value, self.b.bitcast(self.b.gep(ptr, [index]), value.type.as_pointer()), align=1)


def _stage_kernel(qtype, n_w: int):
    """stage(ws f32[n/32, 2 * n_w], us i8[n/32 or 0, 32 * n_w], r0, stride, w u8[rows, row_bytes]):
    ws[b, i] = d and ws[b, n_w + i] = m (the _1 types) of block b of the tile's weight row i,
    r0 + i * stride (rows past the last clamped to it), and, when us has rows,
    us[b, 32 i: 32 i + 32] = that block's quants unpacked (_BlockProducts.quants): a tile of
    weight rows decoded once for every activation tile it meets."""
    lay = LAYOUTS[qtype]
    if lay.m_at not in (None, lay.d_at + 2):
        raise ValueError(f"{qtype.name}: d and m must be adjacent halves (one conversion reads both)")

    def stage(typingctx, ws, us, r0, stride, w):
        if not _typed((ws, us, r0, stride, w), (F32_2D, I8_2D, None, None, U8_2D)):
            return None

        def codegen(context, builder, sig, args):
            e = _Emit(context, builder, sig, args)
            ws_a, us_a, w_a = e.arrays[0], e.arrays[1], e.arrays[4]
            n_blocks, ws_width = e.shape(ws_a)
            us_blocks, us_width = e.shape(us_a)
            n_rows, row_bytes = e.shape(w_a)
            rows, _ = e.tile_rows(e.ints[2], e.ints[3], n_rows, n_w)
            products = _BlockProducts(builder, lay)
            # lanes 2i, 2i + 1 of the halves are (d, m) of row i: all d first, then all m
            order = _consts(_I32, list(range(0, 2 * n_w, 2)) + list(range(1, 2 * n_w, 2)))
            with cgutils.for_range(builder, n_blocks) as loop:
                blk = loop.index
                starts = [e.at(e.const(0), (row, row_bytes), (blk, lay.nbytes)) for row in rows]
                halves = _row_halves(builder, w_a.data, [e.plus(i, lay.d_at) for i in starts])
                e.put(builder.shuffle_vector(halves, halves, order), ws_a.data, builder.mul(blk, ws_width))
                with builder.if_then(builder.icmp_signed("!=", us_blocks, e.const(0))):
                    for i, start in enumerate(starts):
                        e.put(products.quants(w_a.data, start), us_a.data,
                              e.at(e.const(32 * i), (blk, us_width)))
            return context.get_dummy_value()

        return types.none(ws, us, r0, stride, w), codegen

    stage.__name__ = f"stage{n_w}_{qtype.name.lower()}"
    return intrinsic(stage)


def _dot_tile_kernel(qtype, n_w: int, n_act: int):
    """dot_tile(out f32[t, rows], r0, stride, ws, us, xq i8[t, n], xd f32[n/32, t],
    xs f32[n/32 or 0, t], xc i32[t, n/4 or 0], ps f32[>= n/32 * n_act * n_w], k0) sets
    out[k0 + a, r] for a < n_act and the tile's rows r = r0 + i * stride that exist, where
    ws, us are those rows staged (_stage_kernel), xq, xd, xs, xc the activations' Q8 parts
    (xs read by the _1 types, xc, the offset lanes, when shift_of) and ps scratch. Two passes
    over the blocks (see the module docstring); each of the n_w * n_act dot products is an
    independent chain of exactly the matvec's operations. No bounds checks: callers check
    the shapes once per call and keep r0 < rows, k0 + n_act <= t.
    """
    lay = LAYOUTS[qtype]
    tile = _vec(_F32, n_w * n_act)  # lane a * n_w + i: (weight row i, activation row a)
    by_row = _consts(_I32, [i for a in range(n_act) for i in range(n_w)])
    by_token = _consts(_I32, [a for a in range(n_act) for i in range(n_w)])

    def dot_tile(typingctx, out, r0, stride, ws, us, xq, xd, xs, xc, ps, k0):
        args = (out, r0, stride, ws, us, xq, xd, xs, xc, ps, k0)
        if not _typed(args, (F32_2D, None, None, F32_2D, I8_2D, I8_2D, F32_2D, F32_2D, I32_2D, F32_1D, None)):
            return None

        def codegen(context, builder, sig, args):
            e = _Emit(context, builder, sig, args)
            out_a, ws_a, us_a, xq_a, xd_a, xs_a, xc_a, ps_a = (e.arrays[k] for k in (0, 3, 4, 5, 6, 7, 8, 9))
            r0, stride, k0 = e.ints[1], e.ints[2], e.ints[10]
            n_rows = e.shape(out_a)[1]
            ws_width, us_width, n, n_lanes = (e.shape(a)[1] for a in (ws_a, us_a, xq_a, xc_a))
            n_blocks, n_tokens = e.shape(xd_a)
            rows, real = e.tile_rows(r0, stride, n_rows, n_w)
            tokens = [e.plus(k0, a) for a in range(n_act)]
            products = _BlockProducts(builder, lay)

            def spread(ptr, index, count, lanes):  # <count x float> at ptr[index] -> <n_w * n_act>
                v = e.vector(ptr, index, _vec(_F32, count))
                return builder.shuffle_vector(v, v, lanes)

            # pass 1: ps[blk, a, i] = d_w[i] * d_x[a]; mins: the _1 types' sums of m_w * s_x
            mins = cgutils.alloca_once_value(builder, ir.Constant(tile, None))
            with cgutils.for_range(builder, n_blocks) as loop:
                blk = loop.index
                here = e.at(k0, (blk, n_tokens))  # the tile's activation rows at [blk, k0:]
                dw = spread(ws_a.data, builder.mul(blk, ws_width), n_w, by_row)
                e.put(builder.fmul(dw, spread(xd_a.data, here, n_act, by_token)), ps_a.data,
                      builder.mul(blk, e.const(n_w * n_act)))
                if lay.m_at is not None:
                    # fma is exact here: m_w * s_x, a product of two halves, is a float32
                    mw = spread(ws_a.data, e.at(e.const(n_w), (blk, ws_width)), n_w, by_row)
                    sx = spread(xs_a.data, here, n_act, by_token)
                    fma = _call(builder, f"llvm.fma.v{n_w * n_act}f32", tile, [mw, sx, builder.load(mins)])
                    builder.store(fma, mins)

            # pass 2: the integer lanes of every pair, scaled and accumulated block by block
            accs = [[cgutils.alloca_once_value(builder, ir.Constant(_V8F, None)) for _ in tokens]
                    for _ in rows]
            with cgutils.for_range(builder, n_blocks) as loop:
                blk = loop.index
                weights = [products.weight(e.vector(us_a.data, e.at(e.const(32 * i), (blk, us_width)),
                                                    _vec(_I8, 32))) for i in range(n_w)]
                for a, token in enumerate(tokens):
                    x = _load(builder, xq_a.data, e.at(e.const(0), (token, n), (blk, BLOCK)), _I8, BLOCK)
                    correction = (_load(builder, xc_a.data, e.at(e.const(0), (token, n_lanes), (blk, 8)),
                                        _I32, 8) if products.shifted else None)
                    scales = builder.gep(ps_a.data, [e.at(e.const(n_w * a), (blk, n_w * n_act))])
                    for i, (weight, acc) in enumerate(zip(weights, (row[a] for row in accs))):
                        scale = _splat(builder, builder.load(builder.gep(scales, [e.const(i)])), _F32, 8)
                        lanes = builder.sitofp(products.lanes(weight, x, correction), _V8F)
                        fma = _call(builder, "llvm.fma.v8f32", _V8F, [scale, lanes, builder.load(acc)])
                        builder.store(fma, acc)

            for i, (row, acc_row) in enumerate(zip(rows, accs)):
                for a, (token, acc) in enumerate(zip(tokens, acc_row)):
                    _store_dot(e, lay, acc, mins, a * n_w + i, real[i],
                               builder.gep(out_a.data, [e.at(row, (token, n_rows))]))
            return context.get_dummy_value()

        return types.none(*args), codegen

    dot_tile.__name__ = f"dot_tile{n_w}x{n_act}_{qtype.name.lower()}"
    return intrinsic(dot_tile)


def _store_dot(e, lay, acc, mins, lane, real, ptr):
    """Store one finished dot product at ptr (when real): the 8 lanes of acc reduced in ggml's
    order, plus, for the _1 types, lane `lane` of the m_w * s_x sums in mins."""
    value = _reduce_lanes(e.b, e.b.load(acc))
    if lay.m_at is not None:
        value = e.b.fadd(value, e.b.extract_element(e.b.load(mins), ir.Constant(_I32, lane)))
    e.store_if(real, value, ptr)


def _dot_column_kernel(qtype, n_w: int):
    """dot_column(out f32[t, rows], r0, stride, w u8[rows, row_bytes], xq, xd, xs, xc, k) sets
    out[k, r] for the rows r = r0 + i * stride (i < n_w) that exist, with the activations' Q8
    parts as in _dot_tile_kernel: the matvec, and the matmul's activation rows left over from
    its tiles. One pass: each weight block is unpacked where it is used and its scale
    d_w * d_x splatted from a register (one activation row, so nothing to share through
    scratch)."""
    lay = LAYOUTS[qtype]
    pair = _vec(_F32, 2 * n_w)  # lanes 2i, 2i + 1: (d, m) of weight row i

    def dot_column(typingctx, out, r0, stride, w, xq, xd, xs, xc, k):
        args = (out, r0, stride, w, xq, xd, xs, xc, k)
        if not _typed(args, (F32_2D, None, None, U8_2D, I8_2D, F32_2D, F32_2D, I32_2D, None)):
            return None

        def codegen(context, builder, sig, args):
            e = _Emit(context, builder, sig, args)
            out_a, w_a, xq_a, xd_a, xs_a, xc_a = (e.arrays[i] for i in (0, 3, 4, 5, 6, 7))
            r0, stride, k = e.ints[1], e.ints[2], e.ints[8]
            n_out, n, n_lanes = (e.shape(a)[1] for a in (out_a, xq_a, xc_a))
            n_blocks, n_tokens = e.shape(xd_a)
            n_rows, row_bytes = e.shape(w_a)
            rows, real = e.tile_rows(r0, stride, n_rows, n_w)
            products = _BlockProducts(builder, lay)
            accs = [cgutils.alloca_once_value(builder, ir.Constant(_V8F, None)) for _ in rows]
            mins = cgutils.alloca_once_value(builder, ir.Constant(pair, None))  # odd lanes: sum m_w * s_x
            with cgutils.for_range(builder, n_blocks) as loop:
                blk = loop.index
                starts = [e.at(e.const(0), (row, row_bytes), (blk, lay.nbytes)) for row in rows]
                halves = _row_halves(builder, w_a.data, [e.plus(i, lay.d_at) for i in starts])
                dx = builder.load(builder.gep(xd_a.data, [e.at(k, (blk, n_tokens))]))
                scales = builder.fmul(halves, _splat(builder, dx, _F32, 2 * n_w))
                if lay.m_at is not None:
                    # fma is exact here: m_w * s_x, a product of two halves, is a float32
                    sx = builder.load(builder.gep(xs_a.data, [e.at(k, (blk, n_tokens))]))
                    fma = _call(builder, f"llvm.fma.v{2 * n_w}f32", pair,
                                [halves, _splat(builder, sx, _F32, 2 * n_w), builder.load(mins)])
                    builder.store(fma, mins)
                x = _load(builder, xq_a.data, e.at(e.const(0), (k, n), (blk, BLOCK)), _I8, BLOCK)
                correction = (_load(builder, xc_a.data, e.at(e.const(0), (k, n_lanes), (blk, 8)), _I32, 8)
                              if products.shifted else None)
                for i, (start, acc) in enumerate(zip(starts, accs)):
                    lanes = products.lanes(products.weight(products.quants(w_a.data, start)), x, correction)
                    scale = builder.shuffle_vector(scales, scales, _consts(_I32, [2 * i] * 8))
                    builder.store(_call(builder, "llvm.fma.v8f32", _V8F,
                                        [scale, builder.sitofp(lanes, _V8F), builder.load(acc)]), acc)
            for i, (row, acc) in enumerate(zip(rows, accs)):
                _store_dot(e, lay, acc, mins, 2 * i + 1, real[i], builder.gep(out_a.data, [e.at(row, (k, n_out))]))
            return context.get_dummy_value()

        return types.none(*args), codegen

    dot_column.__name__ = f"dot_column{n_w}_{qtype.name.lower()}"
    return intrinsic(dot_column)


# ---- kernel templates (specialised per type by kernel_kit.specialize) ------------------------

def _check_shapes(out_rows, out_cols, w, n, x_rows):
    """(out_rows, out_cols) must be (x_rows, w rows) and w's rows must hold n values."""
    if n % BLOCK or w.shape[1] != n // BLOCK * BYTES or out_cols != w.shape[0] or out_rows != x_rows:
        raise ValueError(SHAPE_ERROR)


def _quantize_rows(xd, xs, xq, xc, x):
    """Each row k of x f32[t, n] into its Q8 parts (Q8_1 when WITH_SUMS; offset lanes when
    SHIFT); the scales go to column k of xd and xs."""
    for k in prange(x.shape[0]):
        if WITH_SUMS:
            quantize_q8_1_parts(xd[:, k], xs[:, k], xq[k], x[k])
        else:
            quantize_q8_0_parts(xd[:, k], xq[k], x[k])
        if SHIFT:
            offset_lanes(xc[k], xq[k], SHIFT)


def _activation_parts(x):
    """The Q8 parts of x f32[t, n]: xq i8[t, n], the scales xd f32[n/32, t] and sums
    xs f32[n/32 or 0, t] (transposed: a tile's activation rows are adjacent) and the offset
    lanes xc i32[t, n/4 or 0]."""
    t, n = x.shape
    xq = np.empty((t, n), np.int8)
    xd = np.empty((n // BLOCK, t), np.float32)
    xs = np.empty((n // BLOCK if WITH_SUMS else 0, t), np.float32)
    xc = np.empty((t, n // 4 if SHIFT else 0), np.int32)
    quantize_rows(xd, xs, xq, xc, x)
    return xq, xd, xs, xc


def _scratch_size(n_blocks, with_quants):
    """float32 words of one group's scratch (see _scratch)."""
    return n_blocks * (2 * TILE_ROWS + TILE_ROWS * TILE_TOKENS + (8 * TILE_ROWS if with_quants else 0))


def _scratch(buffer, n_blocks, with_quants):
    """One group's scratch in buffer f32[scratch_size]: ws f32[n_blocks, 2 * TILE_ROWS] and
    us i8[n_blocks or 0, 32 * TILE_ROWS] (stage; us only when with_quants) and
    ps f32[n_blocks * TILE_ROWS * TILE_TOKENS] (dot_tile)."""
    ws_size = n_blocks * 2 * TILE_ROWS
    ps_size = n_blocks * TILE_ROWS * TILE_TOKENS
    ws = buffer[:ws_size].reshape((n_blocks, 2 * TILE_ROWS))
    ps = buffer[ws_size:ws_size + ps_size]
    us = buffer[ws_size + ps_size:].view(np.int8).reshape((n_blocks if with_quants else 0, 32 * TILE_ROWS))
    return ws, us, ps


def _matvec_int8(out, w, x):
    """out f32[rows] = W @ x, x f32[n] quantized to Q8 first; w u8[rows, n/32*BYTES] (C order)."""
    n = x.shape[0]
    rows = w.shape[0]
    _check_shapes(1, out.shape[0], w, n, 1)
    xq, xd, xs, xc = activation_parts(x.reshape((1, n)))
    out2 = out.reshape((1, rows))
    stride = (rows + TILE_ROWS - 1) // TILE_ROWS
    for tile in prange(stride):
        dot_column(out2, tile, stride, w, xq, xd, xs, xc, 0)


def _matmul_int8(out, w, x):
    """out f32[t, rows] = x @ W.T, x f32[t, n] quantized row by row; w u8[rows, n/32*BYTES]."""
    t, n = x.shape
    _check_shapes(out.shape[0], out.shape[1], w, n, t)
    xq, xd, xs, xc = activation_parts(x)
    t_full = t - t % TILE_TOKENS
    n_tiles = (w.shape[0] + TILE_ROWS - 1) // TILE_ROWS  # tile r: rows r, r + n_tiles, ...
    n_groups = min(n_tiles, TILE_GROUPS)
    size = scratch_size(n // BLOCK, t_full > 0)
    buffer = np.empty(n_groups * size, np.float32)
    for group in prange(n_groups):
        ws, us, ps = scratch(buffer[group * size:(group + 1) * size], n // BLOCK, t_full > 0)
        for tile in range(group * n_tiles // n_groups, (group + 1) * n_tiles // n_groups):
            if t_full:  # staged rows pay off in full tiles only
                stage(ws, us, tile, n_tiles, w)
            for k in range(0, t_full, TILE_TOKENS):
                dot_tile(out, tile, n_tiles, ws, us, xq, xd, xs, xc, ps, k)
            for k in range(t_full, t):
                dot_column(out, tile, n_tiles, w, xq, xd, xs, xc, k)


def tile_shape() -> tuple[int, int]:
    """(weight rows, activation rows) of a matmul tile for the flags in legacy_int8 now;
    the matvec takes the same weight rows per pass."""
    return TILE_VNNI if _base.X86_VNNI else TILE_PORTABLE


TILE_VNNI = (4, 4)
TILE_PORTABLE = (1, 4)
# Work items per matmul: groups of consecutive tiles, each with its own scratch. More groups
# than threads even out threads slowed by other work; this many serve up to 32 threads.
TILE_GROUPS = 32


def int8_kernels(qtype, shape=None, suffix=""):
    """(matvec, matmul) with int8 activations for one legacy type.

    shape: (weight rows, activation rows) of the matmul tile, tile_shape() by default;
    suffix: appended to the kernels' names (and cache files) when shape is not the default.
    """
    name = qtype.name.lower() + suffix
    lay = LAYOUTS[qtype]
    n_w, n_act = shape or tile_shape()
    with_sums = lay.m_at is not None  # the _1 types dot with Q8_1
    check = specialize(_check_shapes, f"check_shapes_int8_{name}", parallel=False,
                       BYTES=lay.nbytes,
                       SHAPE_ERROR=f"{qtype.name} int8 matvec/matmul: shapes of out, w and x do not agree")
    shift = dict(WITH_SUMS=with_sums, SHIFT=shift_of(qtype))
    quantize_rows = specialize(_quantize_rows, f"quantize_rows_int8_{name}", **shift)
    parts = specialize(_activation_parts, f"activation_parts_int8_{name}", parallel=False,
                       quantize_rows=quantize_rows, **shift)
    tile = dict(TILE_ROWS=n_w, TILE_TOKENS=n_act)
    common = dict(_check_shapes=check, activation_parts=parts, TILE_ROWS=n_w,
                  dot_column=_dot_column_kernel(qtype, n_w))
    matvec = specialize(_matvec_int8, f"matvec_int8_{name}", **common)
    scratch = specialize(_scratch, f"scratch_int8_{name}", parallel=False, **tile)
    scratch_size = specialize(_scratch_size, f"scratch_size_int8_{name}", parallel=False, **tile)
    matmul = specialize(_matmul_int8, f"matmul_int8_{name}", TILE_TOKENS=n_act, TILE_GROUPS=TILE_GROUPS,
                        scratch=scratch, scratch_size=scratch_size, stage=_stage_kernel(qtype, n_w),
                        dot_tile=_dot_tile_kernel(qtype, n_w, n_act), **common)
    return matvec, matmul


INT8_KERNELS = {qtype: int8_kernels(qtype) for qtype in LAYOUTS}  # type -> (matvec, matmul)
