"""What the per-family kernel modules share: per-type kernels made from one template,
and the matmul that decodes each weight row once for a whole batch of activations.

Why templates are specialised by copying: a family writes each kernel once (say "matvec
over blocks, calling `dot_block`") and needs one compiled kernel per type. A closure over
the type's helpers would do, but Numba cannot cache closures over jitted functions (its
cache key pickles the captured dispatchers, whose ids change with every process), so every
process would recompile. `specialize` instead copies the template function with its global
names (`dot_block`, `BLOCK`, ...) bound to one type's helpers and a name of its own, which
Numba caches like any top-level function (one cache file per name).

Numba's cache notices edits only in the file a function is defined in; after changing a
helper that a template here calls into, clear quant/__pycache__ before measuring.

How block loops are written (measured on a 4096x4096 Q4_0 matvec, 10x apart): the helpers
that decode or dot one block take *slices* (`w_row[i*BYTES:(i+1)*BYTES]`) and are inlined
at Numba level (inline="always"), so LLVM sees plain non-negative loop indices instead of
offset arithmetic that Numba's negative-index wraparound turns into gathers; and the loop
over a block's 16 or 32 values runs `range(opaque(16))`: with a constant count LLVM unrolls
it completely and then vectorises across blocks (strided byte loads, int64 lanes), while
with a count it cannot see it vectorises the loop itself.
"""
from __future__ import annotations

import types

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba import types as nbtypes
from numba.extending import intrinsic

# Reassociation lets LLVM vectorise the float reductions of the dot-product kernels; their
# tests compare against numpy with tolerances. Decoders and quantizers never use it: they
# must reproduce gguf-py's float32 operations bit for bit (no fused multiply-add either).
DOT_FASTMATH = {"reassoc", "contract"}

# Weight rows decoded per matmul work item: 8 rows x 4096 f32 = 128 KiB stays in L2 while
# every activation row streams past it.
MATMUL_TILE_ROWS = 8


@intrinsic
def opaque(typingctx, value):
    """The integer `value`, which the optimiser may not treat as a known constant."""
    if not isinstance(value, nbtypes.Integer):
        return None

    def codegen(context, builder, signature, args):
        ty = context.get_value_type(value)
        # an empty inline-asm statement that "computes" its output from its input register
        return builder.asm(ir.FunctionType(ty, [ty]), "", "=r,0", [args[0]], side_effect=False)

    return value(value), codegen


def specialize(template, name: str, *, parallel: bool = True, fastmath=False, **bindings):
    """A cached Numba kernel named `name`: `template` with the given global names rebound.

    template: plain Python function (not jitted) whose free globals include `bindings`' keys.
    """
    missing = set(bindings) - set(template.__code__.co_names)
    if missing:
        raise ValueError(f"{template.__name__} does not use {sorted(missing)}")
    fn = types.FunctionType(template.__code__, dict(template.__globals__, **bindings), name,
                            template.__defaults__, template.__closure__)
    fn.__qualname__ = name  # Numba names the cache file after it: one file per type
    fn.__doc__ = template.__doc__
    return njit(cache=True, parallel=parallel, fastmath=fastmath)(fn)


@njit(cache=True, fastmath=DOT_FASTMATH)
def dot_tile(out, tile, n_rows, x, r0):
    """out[t, r0 + i] = tile[i] . x[t] for i < n_rows and every t.

    out: f32[t, rows]; tile: f32[>= n_rows, n] decoded weight rows; x: f32[t, n].
    Four weight rows share each pass over x[t] (five loads per four multiply-adds).
    """
    n = x.shape[1]
    for t in range(x.shape[0]):
        xt = x[t]
        i = 0
        while i + 4 <= n_rows:
            w0, w1, w2, w3 = tile[i], tile[i + 1], tile[i + 2], tile[i + 3]
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for j in range(n):
                v = xt[j]
                a0 += w0[j] * v
                a1 += w1[j] * v
                a2 += w2[j] * v
                a3 += w3[j] * v
            out[t, r0 + i] = a0
            out[t, r0 + i + 1] = a1
            out[t, r0 + i + 2] = a2
            out[t, r0 + i + 3] = a3
            i += 4
        while i < n_rows:
            wi = tile[i]
            acc = np.float32(0.0)
            for j in range(n):
                acc += wi[j] * xt[j]
            out[t, r0 + i] = acc
            i += 1


def _matmul_by_row_tiles(out, w, x):
    """out[i, r] = dequantize(w[r]) . x[i], decoding each weight row once for all i.

    out: f32[t, rows]; w: u8[rows, row_bytes]; x: f32[t, n] (the prefill path).
    """
    rows = w.shape[0]
    n = x.shape[1]
    if out.shape[0] != x.shape[0] or out.shape[1] != rows or not row_fits(w.shape[1], n):
        raise ValueError("matmul: shapes of out, w and x do not agree")
    n_tiles = (rows + MATMUL_TILE_ROWS - 1) // MATMUL_TILE_ROWS
    for k in prange(n_tiles):
        r0 = k * MATMUL_TILE_ROWS
        n_rows = min(MATMUL_TILE_ROWS, rows - r0)
        tile = np.empty((MATMUL_TILE_ROWS, n), dtype=np.float32)
        for i in range(n_rows):
            decode_row(tile[i], w[r0 + i])
        dot_tile(out, tile, n_rows, x, r0)


def make_matmul(name: str, decode_row, row_fits):
    """The batched kernel for one type.

    decode_row(out f32[n], w_row u8[row_bytes]): njit, writes one dequantized row.
    row_fits(row_bytes, n) -> bool: njit, whether a row of that many bytes holds n values.
    """
    return specialize(_matmul_by_row_tiles, name, decode_row=decode_row, row_fits=row_fits)
