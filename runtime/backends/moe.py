"""The mixture-of-experts FFN on the CPU (graph.Op.MOE_FFN), as llama.cpp's build_moe_ffn
computes it with softmax gating:

    p = softmax(router @ x)                     per token, over the experts (float32)
    E = the n_used largest p (ties: lower id)   w = p[E], divided by sum(w) where `norm`
    out = sum over e in E of w_e * down_e(silu(gate_e @ x) * (up_e @ x))

The experts' matrices are stacked in one 3-D tensor each (n_expert, rows, n): expert e's is
rows e * rows .. (e + 1) * rows of the (n_expert * rows, row_bytes) view, run by the type's
own matvec / matmul kernels. Rather than each token running its k experts, each expert runs
once over the tokens routed to it (a prefill of T tokens reads every used expert's weights
once). The routing and the weighted sum are numpy; the matrices are the registered kernels.

An expert is the unit a RAM budget streams (backends/cpu_streaming.py): the kernel asks each
projection for expert e's matrix through a fetch function, which slices the tensor in RAM or
reads just that expert's bytes from disk, so only the experts the router picks are read.
"""
from __future__ import annotations

import numpy as np

from . import activations as A


def route(logits: np.ndarray, n_used: int, norm: bool) -> tuple[np.ndarray, np.ndarray]:
    """(experts int64 (T, n_used), weights f32 (T, n_used)) of router logits f32 (T, n_expert):
    the softmax's n_used largest entries, most likely first, renormalized if `norm`."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted, dtype=np.float32)
    probs = (e / e.sum(axis=1, dtype=np.float64, keepdims=True)).astype(np.float32)
    experts = np.argsort(-probs, axis=1, kind="stable")[:, :n_used]
    weights = np.take_along_axis(probs, experts, axis=1)
    if norm:
        weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
    return experts, weights


def _product(qt, w: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """out = x @ w.T with the type's matvec for one row, its matmul for several."""
    if x.shape[0] == 1:
        qt.matvec(out[0], w, x[0])
    else:
        qt.matmul(out, w, x)


def expert_slices(w: np.ndarray, n_expert: int):
    """A fetch function over a stacked tensor in RAM, u8 (n_expert * rows, row_bytes):
    e -> expert e's rows, a view."""
    rows = w.shape[0] // n_expert
    return lambda e: w[e * rows:(e + 1) * rows]


def moe_ffn(out, x, router, router_qt, experts, qts, n_expert: int, n_ff: int, n_used: int, norm: bool) -> None:
    """out f32 (T, n) <- the MoE FFN of x f32 (T, n) (module docstring). router: u8 (n_expert,
    row_bytes) of type router_qt; experts: (gate, up, down) fetch functions, e -> expert e's
    u8 matrix ((n_ff, row_bytes) for gate and up, (n, row_bytes_ff) for down); qts: their
    QuantTypes."""
    t, n = x.shape
    gate, up, down = experts
    logits = np.empty((t, n_expert), np.float32)
    _product(router_qt, router, x, logits)
    experts, weights = route(logits, n_used, norm)
    out[:] = 0.0
    for e in np.unique(experts):
        tokens, slot = np.nonzero(experts == e)
        xs = np.ascontiguousarray(x[tokens])
        g = np.empty((len(tokens), n_ff), np.float32)
        u = np.empty_like(g)
        _product(qts[0], gate(e), xs, g)
        _product(qts[1], up(e), xs, u)
        A.swiglu_rows(g, g, u)
        y = np.empty((len(tokens), n), np.float32)
        _product(qts[2], down(e), g, y)
        out[tokens] += weights[tokens, slot][:, None] * y
