"""Numba kernels for the non-matmul ops of the graph (matmuls are the quant registry's).

Conventions: output first, caller allocates; activations are float32 (rows, width) C-contiguous;
positions and token ids are int64 (T,). Kernels marked alias-safe may be called with `out` the
same array as their first input (the planner's in-place reuse, graph.INPLACE_OPS).

Decode runs these serially: they move a few KB per token, and on small machines a
parallel-region launch costs more than the op. Prefill (many rows) uses the `_rows` drivers,
parallel over rows; attention has a parallel driver over (token, head) pairs. The FFN gates
live in activations.py.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from ..kv_cache import row_width as row_width_of
from .activations import exp_f32
from .kv_rows import add_row, dot_row, hadamard, put_row, query_operand, row_width

# The running maximum starts from this instead of -inf so fastmath's no-infinities assumption holds.
_NEG_BIG = np.float32(-3.0e38)

_FAST = {"reassoc", "contract", "arcp", "nsz"}  # vectorizable sums; no nnan/ninf assumptions


@njit(cache=True, fastmath={"reassoc", "contract"})
def _sum_of_squares(x):
    """sum(x**2) of f32 (n,) in float64 (reassociation only lets it vectorize; not inlined, so
    the flag stays on this loop)."""
    s = 0.0
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        s += v * v
    return s


@njit(cache=True, inline="always")
def _rms_norm_row(out, x, w, eps):
    g = w.shape[0]
    for off in range(0, x.shape[0], g):
        s = _sum_of_squares(x[off:off + g])
        scale = np.float32(1.0 / math.sqrt(s / g + eps))
        for i in range(g):
            out[off + i] = (x[off + i] * scale) * w[i]


@njit(cache=True)
def rms_norm(out, x, w, eps):
    """out = x / rms(group) * w for every len(w)-wide group of every row. Alias-safe.

    out, x: f32 (rows, width); w: f32 (g,) with width % g == 0; eps: float.
    Sums of squares are taken in float64, the scale applied in float32 (as ggml).
    """
    for r in range(x.shape[0]):
        _rms_norm_row(out[r], x[r], w, eps)


@njit(cache=True, parallel=True)
def rms_norm_rows(out, x, w, eps):
    """As `rms_norm`, rows in parallel."""
    for r in prange(x.shape[0]):
        _rms_norm_row(out[r], x[r], w, eps)


@njit(cache=True)
def rope(out, x, pos, cos, sin, head_dim, n_rot, neox):
    """Rotary position embedding of every head of every row. Alias-safe.

    out, x: f32 (T, n_head * head_dim); pos: int64 (T,); cos, sin: f32 (n_ctx, n_rot // 2),
    the angle table (pos * base^(-2i/n_rot)); neox: pairs (x[i], x[i + n_rot/2]) if True,
    else adjacent pairs (x[2i], x[2i+1]). Dims past n_rot are copied unchanged.
    """
    half = n_rot // 2
    for t in range(x.shape[0]):
        p = pos[t]
        for base in range(0, x.shape[1], head_dim):
            for i in range(half):
                if neox:
                    i0 = base + i
                    i1 = i0 + half
                else:
                    i0 = base + 2 * i
                    i1 = i0 + 1
                c = cos[p, i]
                s = sin[p, i]
                x0 = x[t, i0]
                x1 = x[t, i1]
                out[t, i0] = x0 * c - x1 * s
                out[t, i1] = x0 * s + x1 * c
            for d in range(base + n_rot, base + head_dim):
                out[t, d] = x[t, d]


@njit(cache=True)
def add(out, a, b):
    """out = a + b. out, a, b: f32 (rows, width). Alias-safe."""
    for r in range(a.shape[0]):
        for i in range(a.shape[1]):
            out[r, i] = a[r, i] + b[r, i]


@njit(cache=True)
def add_bias(out, x, bias):
    """out = x + bias on every row. out, x: f32 (rows, width); bias: f32 (width,). Alias-safe."""
    for r in range(x.shape[0]):
        for i in range(x.shape[1]):
            out[r, i] = x[r, i] + bias[i]


@njit(cache=True)
def scale(out, x, s):
    """out = x * s. out, x: f32 (rows, width); s: float32. Alias-safe."""
    s32 = np.float32(s)
    for r in range(x.shape[0]):
        for i in range(x.shape[1]):
            out[r, i] = x[r, i] * s32


@njit(cache=True)
def softcap(out, x, cap):
    """out = cap * tanh(x / cap), as ggml's scale, tanh, scale. out, x: f32 (rows, width). Alias-safe."""
    c = np.float32(cap)
    inv = np.float32(1.0) / c
    for r in range(x.shape[0]):
        for i in range(x.shape[1]):
            out[r, i] = np.float32(np.tanh(x[r, i] * inv)) * c


@njit(cache=True)
def last_row(out, x):
    """out[0] = x[-1]. out: f32 (1, width); x: f32 (T, width)."""
    t = x.shape[0] - 1
    for i in range(x.shape[1]):
        out[0, i] = x[t, i]


# ---- KV cache and attention -----------------------------------------------------------------
# The cache's rows are written and read by backends/kv_rows.py, resolved at compile time from
# the cache's type (f32, f16, q8_0, q4_0), so one attention kernel serves them all. With a half
# cache it follows llama.cpp's non-flash path where that was measured to matter: keys and values
# rounded to f16 when stored, the query rounded to f16 for the K.Q dots (ggml converts it to the
# cache's type), products summed in float32. The softmax weights stay float32 for the V dots:
# rounding them to f16 as well (as ggml does) moved SmolLM2's greedy agreement with llama.cpp
# from 127/128 down to 125/128, so it is left out. With a float32 cache nothing is rounded.


@njit(cache=True)
def kv_store(k_cache, v_cache, k, v, slots, k_rot, v_rot):
    """Write each token's keys and values at its cache row, in the cache's type, each head row
    rotated first in blocks of k_rot / v_rot values (kv_rows.hadamard; 0: not rotated).

    k_cache: (n_head_kv, rows, row) of any cache type; v_cache: (n_head_kv, rows, row_v);
    k: f32 (T, n_head_kv * head_dim); v: f32 (T, n_head_kv * head_dim_v); slots: int64 (T,),
    each token's cache row (its position, in a cache holding one sequence in order).
    """
    dk = row_width(k_cache)
    dv = row_width(v_cache)
    codes = np.empty(32, dtype=np.int64)
    row = np.empty(max(dk, dv), dtype=np.float32)
    for t in range(k.shape[0]):
        p = slots[t]
        for h in range(k_cache.shape[0]):
            row[:dk] = k[t, h * dk:(h + 1) * dk]
            hadamard(row[:dk], k_rot)
            put_row(k_cache[h, p], row[:dk], codes)
            row[:dv] = v[t, h * dv:(h + 1) * dv]
            hadamard(row[:dv], v_rot)
            put_row(v_cache[h, p], row[:dv], codes)


def attention_scratch(k_cache, n_positions: int, threads: int = 0) -> np.ndarray:
    """The work rows `attention` needs for sequences of up to `n_positions` tokens, one per
    Numba thread (all of them by default), each holding one query head as the keys meet it and
    its scores while in use: f32 (threads, _work_size(head_dim) + n_positions)."""
    rows = threads or numba.config.NUMBA_NUM_THREADS
    return np.empty((rows, _work_size(row_width_of(k_cache)) + n_positions), dtype=np.float32)


@njit(cache=True)
def _work_size(dk):
    """float32 words before the scores in a work row: qh (dk), qd (dk / 32), qi (dk bytes)."""
    return dk + dk // 32 + (dk + 3) // 4


@njit(cache=True, inline="always")
def _slot(table, j, shift):
    """The cache row of position j in a sequence whose blocks of 2**shift rows are `table`."""
    return (np.int64(table[j >> shift]) << shift) | (j & ((np.int64(1) << shift) - 1))


@njit(cache=True, fastmath=_FAST)
def _attend(out, q, k_cache, v_cache, work, t, h, p, table, shift, scale, window, k_rot, v_rot, cap):
    """out[t, head h] = sum over visible keys j of softmax_j(c(q . k_j * scale)) * v_j, with
    c(s) = cap * tanh(s / cap) where cap > 0 (Gemma 2's soft-capped scores), else s.

    Visible: j <= p (causal) and p - j < window when window > 0. Position j's key and value are
    at cache row _slot(table, j, shift): the sequence's block table (kv_cache.py). work: f32,
    this thread's row of the scratch: the query head as the keys meet it (rotated like them,
    then kv_rows.query_operand), then the scores. A rotated value cache's output is rotated
    back. The softmax is taken over the stored scores (max, exp, sum in float64, scale by
    1/sum) as ggml's soft_max does.
    """
    dk = row_width(k_cache)
    dv = row_width(v_cache)
    kvh = h // (q.shape[1] // dk // k_cache.shape[0])  # GQA: consecutive query heads share a KV head
    lo = 0 if window <= 0 else max(0, p - window + 1)
    n = p + 1 - lo
    qh = work[:dk]
    qd = work[dk:dk + dk // 32]
    at = dk + dk // 32
    qi = work[at:at + (dk + 3) // 4].view(np.int8)[:dk]
    scores = work[_work_size(dk):_work_size(dk) + n]
    qh[:] = q[t, h * dk:(h + 1) * dk]
    hadamard(qh, k_rot)
    query_operand(k_cache, qh, qh, qd, qi)
    keys = k_cache[kvh]
    values = v_cache[kvh]
    m = _NEG_BIG
    for i in range(n):
        s = dot_row(qh, qd, qi, keys[_slot(table, lo + i, shift)]) * scale
        if cap > 0:
            s = np.float32(np.tanh(s / cap)) * cap
        scores[i] = s
        if s > m:
            m = s
    total = 0.0
    for i in range(n):
        e = exp_f32(scores[i] - m)
        scores[i] = e
        total += e
    inv = np.float32(1.0 / total)
    acc = out[t, h * dv:(h + 1) * dv]
    acc[:] = 0.0
    for i in range(n):
        add_row(acc, scores[i] * inv, values[_slot(table, lo + i, shift)])
    hadamard(acc, v_rot)


@njit(cache=True)
def attention(out, q, k_cache, v_cache, pos, seq, tables, shift, scale, window, scratch, k_rot, v_rot, cap):
    """Causal multi-head attention of T queries over the cache (serial driver).

    out: f32 (T, n_head * head_dim_v); q: f32 (T, n_head * head_dim);
    k_cache, v_cache: (n_head_kv, rows, row) of any cache type, already holding these tokens'
    keys; pos: int64 (T,) query positions in their sequences; seq: int64 (T,) each query's
    sequence, a row of tables: int32 (sequences, blocks), the cache blocks (of 2**shift rows)
    holding its positions in order (kv_cache.py); scale: f32; window: int (0 = unlimited);
    scratch: from `attention_scratch` (row 0 is used); k_rot, v_rot: the cache's rotation
    blocks (kv_cache.rotation_block; 0: none); cap: the scores' soft cap (0: none).
    """
    n_head = q.shape[1] // row_width(k_cache)
    s32 = np.float32(scale)
    for t in range(q.shape[0]):
        for h in range(n_head):
            _attend(out, q, k_cache, v_cache, scratch[0], t, h, pos[t], tables[seq[t]], shift, s32, window,
                    k_rot, v_rot, np.float32(cap))


@njit(cache=True, parallel=True)
def attention_parallel(out, q, k_cache, v_cache, pos, seq, tables, shift, scale, window, scratch, k_rot, v_rot,
                       cap):
    """As `attention`, one (token, head) pair per parallel task, each thread on its scratch row."""
    n_head = q.shape[1] // row_width(k_cache)
    s32 = np.float32(scale)
    for item in prange(q.shape[0] * n_head):
        t = item // n_head
        _attend(out, q, k_cache, v_cache, scratch[numba.get_thread_id()], t, item - t * n_head,
                pos[t], tables[seq[t]], shift, s32, window, k_rot, v_rot, np.float32(cap))
