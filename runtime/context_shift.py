"""Context shift: when generation fills the context, drop the middle of the cache instead of
stopping or prefilling everything again (llama.cpp's --context-shift).

The first `n_keep` cached tokens stay; the next `n_discard` are dropped; the rest move down by
n_discard positions. Keys are stored after their rotary embedding at their old position p, and
a rotation composes: R(p - n_discard) k = R(-n_discard) R(p) k, so each moved key is rotated
by -n_discard with its own layer's rope (base, scale, dimensions and layout: gemma3's sliding
and global layers differ), and values just move. Positions stay contiguous, so sliding-window
masks, which compare positions, keep working.

The keys are rotated in float32 and stored back in the cache's type (an f16 cache rounds them
again and a quantized one quantizes them again, as llama.cpp's does); a fresh evaluation of the
kept tokens differs only by that rounding (tests/test_context_shift.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from .backends.kv_rows import get_row, hadamard, hadamard_reference, put_row, row_width
from .backends.rope_table import NO_YARN, Yarn
from .graph import Graph, Op


@dataclass(frozen=True)
class KeyRope:
    """How one layer's keys were rotated: the ROPE node's parameters."""
    n_rot: int
    base: float
    freq_scale: float
    neox: bool
    freq_factors: str | None = None   # the weight of per-pair frequency divisors, if any
    yarn: Yarn = NO_YARN


def key_ropes(graph: Graph) -> dict[int, KeyRope]:
    """Each attention layer's key rope, read off the graph (the ROPE node that makes the
    ATTENTION node's keys); a layer whose keys are not rotated is missing from the result."""
    made_by = {node.out.name: node for node in graph.nodes}
    ropes = {}
    for node in graph.nodes:
        if node.op is not Op.ATTENTION:
            continue
        source = made_by.get(node.srcs[1].name)
        if source is not None and source.op is Op.ROPE:
            p = source.params
            ropes[node.params["layer"]] = KeyRope(p["n_rot"], p["base"], p["freq_scale"], p["neox"],
                                                  p["freq_factors"], p["yarn"])
    return ropes


@njit(cache=True)
def shift_cache(k_cache, v_cache, n_keep, n_discard, n_past, cos, sin, n_rot, neox, k_rotation):
    """Move entries [n_keep + n_discard, n_past) of one layer's cache down by n_discard, the
    keys rotated by -n_discard (cos, sin: the angles of position n_discard, f32 (n_rot // 2,)).

    k_cache, v_cache: (n_head_kv, n_ctx, row) of any cache type (kv_cache.py); a quantized key
    row is dequantized, rotated and quantized again (as llama.cpp does), and where the cache
    holds it Hadamard-rotated (k_rotation > 0) turned back first and rotated again after."""
    half = n_rot // 2
    row = np.empty(row_width(k_cache), dtype=np.float32)
    codes = np.empty(32, dtype=np.int64)
    for h in range(k_cache.shape[0]):
        for p in range(n_keep + n_discard, n_past):
            q = p - n_discard
            get_row(row, k_cache[h, p])
            hadamard(row, k_rotation)
            for i in range(half):
                if neox:
                    i0 = i
                    i1 = i + half
                else:
                    i0 = 2 * i
                    i1 = i0 + 1
                x0 = row[i0]
                x1 = row[i1]
                row[i0] = x0 * cos[i] + x1 * sin[i]     # rotation by -angle
                row[i1] = x1 * cos[i] - x0 * sin[i]
            hadamard(row, k_rotation)
            put_row(k_cache[h, q], row, codes)
            for d in range(v_cache.shape[2]):
                v_cache[h, q, d] = v_cache[h, p, d]


def shift_cache_reference(k_cache, v_cache, n_keep, n_discard, n_past, cos, sin, n_rot, neox, k_rotation,
                          to_f32, from_f32):
    """shift_cache's naive twin, in numpy: the same rotation written as a 2x2 matrix product,
    between the Hadamard matrix products where the cache is rotated."""
    k = to_f32(k_cache[:, n_keep + n_discard:n_past]).astype(np.float32)
    if k_rotation:
        k = hadamard_reference(k, k_rotation).astype(np.float32)
    half = n_rot // 2
    idx0 = np.arange(half) if neox else 2 * np.arange(half)
    idx1 = idx0 + half if neox else idx0 + 1
    x0, x1 = k[..., idx0].copy(), k[..., idx1].copy()
    k[..., idx0] = x0 * cos + x1 * sin
    k[..., idx1] = x1 * cos - x0 * sin
    if k_rotation:
        k = hadamard_reference(k, k_rotation).astype(np.float32)
    moved = n_past - n_keep - n_discard
    k_cache[:, n_keep:n_keep + moved] = from_f32(k)
    v_cache[:, n_keep:n_keep + moved] = v_cache[:, n_keep + n_discard:n_past].copy()
