"""Numba kernels for the non-matmul ops of the graph (matmuls are the quant registry's).

Conventions: output first, caller allocates; activations are float32 (rows, width) C-contiguous;
positions and token ids are int64 (T,). Kernels marked alias-safe may be called with `out` the
same array as their first input (the planner's in-place reuse, graph.INPLACE_OPS).

Everything here is serial: these ops move a few KB per token, and on small machines a
parallel-region launch costs more than the op. Attention, whose work grows with the context,
has a parallel driver over (token, head) pairs as well.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# Online softmax starts from this instead of -inf so fastmath's no-infinities assumption holds.
_NEG_BIG = np.float32(-3.0e38)
_GELU_C = np.float32(math.sqrt(2.0 / math.pi))  # tanh approximation of GELU, as ggml
_GELU_A = np.float32(0.044715)

_FAST = {"reassoc", "contract", "arcp", "nsz"}  # vectorizable sums; no nnan/ninf assumptions


@njit(cache=True)
def rms_norm(out, x, w, eps):
    """out = x / rms(group) * w for every len(w)-wide group of every row. Alias-safe.

    out, x: f32 (rows, width); w: f32 (g,) with width % g == 0; eps: float.
    Sums of squares are taken in float64, the scale applied in float32 (as ggml).
    """
    g = w.shape[0]
    for r in range(x.shape[0]):
        for off in range(0, x.shape[1], g):
            s = 0.0
            for i in range(g):
                v = np.float64(x[r, off + i])
                s += v * v
            scale = np.float32(1.0 / math.sqrt(s / g + eps))
            for i in range(g):
                out[r, off + i] = (x[r, off + i] * scale) * w[i]


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
def swiglu(out, gate, up):
    """out = silu(gate) * up, silu(x) = x / (1 + exp(-x)). f32 (rows, width). Alias-safe."""
    one = np.float32(1.0)
    for r in range(gate.shape[0]):
        for i in range(gate.shape[1]):
            g = gate[r, i]
            out[r, i] = g / (one + np.exp(-g)) * up[r, i]


@njit(cache=True)
def geglu(out, gate, up):
    """out = gelu(gate) * up with GELU's tanh approximation. f32 (rows, width). Alias-safe."""
    half = np.float32(0.5)
    one = np.float32(1.0)
    for r in range(gate.shape[0]):
        for i in range(gate.shape[1]):
            g = gate[r, i]
            out[r, i] = half * g * (one + np.tanh(_GELU_C * g * (one + _GELU_A * g * g))) * up[r, i]


@njit(cache=True)
def last_row(out, x):
    """out[0] = x[-1]. out: f32 (1, width); x: f32 (T, width)."""
    t = x.shape[0] - 1
    for i in range(x.shape[1]):
        out[0, i] = x[t, i]


@njit(cache=True)
def kv_store(k_cache, v_cache, k, v, pos):
    """Write each token's keys and values at its position.

    k_cache: f32 (n_head_kv, n_ctx, head_dim); v_cache: f32 (n_head_kv, n_ctx, head_dim_v);
    k: f32 (T, n_head_kv * head_dim); v: f32 (T, n_head_kv * head_dim_v); pos: int64 (T,).
    """
    dk = k_cache.shape[2]
    dv = v_cache.shape[2]
    for t in range(k.shape[0]):
        p = pos[t]
        for h in range(k_cache.shape[0]):
            for d in range(dk):
                k_cache[h, p, d] = k[t, h * dk + d]
            for d in range(dv):
                v_cache[h, p, d] = v[t, h * dv + d]


@njit(cache=True, fastmath=_FAST)
def _attend(out, q, k_cache, v_cache, t, h, p, scale, window):
    """out[t, head h] = sum over visible keys j of softmax_j(q . k_j * scale) * v_j.

    Visible: j <= p (causal) and p - j < window when window > 0. One pass over the keys with a
    running maximum (online softmax): the accumulator is rescaled whenever the maximum grows,
    so no score buffer is needed.
    """
    dk = k_cache.shape[2]
    dv = v_cache.shape[2]
    kvh = h // (q.shape[1] // dk // k_cache.shape[0])  # GQA: consecutive query heads share a KV head
    lo = 0 if window <= 0 else max(0, p - window + 1)
    qh = q[t, h * dk:(h + 1) * dk]
    acc = out[t, h * dv:(h + 1) * dv]
    keys = k_cache[kvh]
    values = v_cache[kvh]
    acc[:] = 0.0
    m = _NEG_BIG
    l = np.float32(0.0)
    for j in range(lo, p + 1):
        kj = keys[j]
        s = np.float32(0.0)
        for d in range(dk):
            s += qh[d] * kj[d]
        s *= scale
        if s > m:
            c = np.exp(m - s)
            l *= c
            for d in range(dv):
                acc[d] *= c
            m = s
        e = np.exp(s - m)
        l += e
        vj = values[j]
        for d in range(dv):
            acc[d] += e * vj[d]
    inv = np.float32(1.0) / l
    for d in range(dv):
        acc[d] *= inv


@njit(cache=True)
def attention(out, q, k_cache, v_cache, pos, scale, window):
    """Causal multi-head attention of T queries over the cache (serial driver).

    out: f32 (T, n_head * head_dim_v); q: f32 (T, n_head * head_dim);
    k_cache, v_cache: f32 (n_head_kv, n_ctx, head_dim[_v]), already holding these tokens' keys;
    pos: int64 (T,) query positions; scale: f32; window: int (0 = unlimited).
    """
    n_head = q.shape[1] // k_cache.shape[2]
    s32 = np.float32(scale)
    for t in range(q.shape[0]):
        for h in range(n_head):
            _attend(out, q, k_cache, v_cache, t, h, pos[t], s32, window)


@njit(cache=True, parallel=True)
def attention_parallel(out, q, k_cache, v_cache, pos, scale, window):
    """As `attention`, one (token, head) pair per parallel task."""
    n_head = q.shape[1] // k_cache.shape[2]
    s32 = np.float32(scale)
    for item in prange(q.shape[0] * n_head):
        t = item // n_head
        _attend(out, q, k_cache, v_cache, t, item - t * n_head, pos[t], s32, window)
