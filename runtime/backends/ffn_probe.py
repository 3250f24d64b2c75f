"""The CPU backend with its FFN blocks observed, and optionally thresholded (CATS-style).

Calibrating an offload plan needs, per layer, the magnitudes |act(gate)| of every FFN neuron
on real text, and the quality of the model when the neurons below a per-layer threshold are
switched off. This backend runs each FFN block with the ordinary kernels and two calls in
between:

    gate = x @ W_gate.T; up = x @ W_up.T
    observe(layer, gate)          -> |act(gate)| (T, n_ff): recorded, and compared with the
                                     layer's threshold into a mask of switched-off neurons
    h = act(gate) * up            (the ordinary SWIGLU/GEGLU kernel)
    h[mask] = 0                   (only while thresholds are set)
    out = h @ W_down.T

Zeroing h_i is exactly what a sparse FFN computes when it skips neuron i's up row and down
column, so the thresholded model's logits are the sparse model's (before any requantization
of the bundles).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..graph import Op
from . import activations as A
from .cpu import CpuBackend

def act_magnitude(op: Op, gate: np.ndarray) -> np.ndarray:
    """|act(gate)| (T, n_ff) float32, through the model's own activation kernels (as the sparse
    FFN of backends/cpu_sparse.py computes it), on an up of ones."""
    a = np.empty_like(gate)
    ones = np.ones_like(gate)
    if op is Op.SWIGLU:
        A.swiglu(a, gate, ones)
    else:
        A.geglu(a, gate, ones, A.GELU_TABLE)
    return np.abs(a, out=a)


class FFNProbeBackend(CpuBackend):
    """CpuBackend whose FFN blocks call `recorder(layer, |act(gate)|)` and, while `thresholds`
    (float32 (n_layer,)) is set, switch off neurons with |act(gate)| below their layer's value.
    `active` / `seen` count neurons kept / evaluated per layer since the last `reset_counts`."""

    def __init__(self, tensors, kv):
        super().__init__(tensors, kv)
        self.recorder: Callable[[int, np.ndarray], None] | None = None
        self.thresholds: np.ndarray | None = None
        n_layer = len(kv.k)
        self.active = np.zeros(n_layer, dtype=np.int64)
        self.seen = np.zeros(n_layer, dtype=np.int64)

    def reset_counts(self) -> None:
        self.active[:] = 0
        self.seen[:] = 0

    def bind_ffn(self, block, x, outs, t):
        gate, up, h, out = outs
        gate_node, up_node, act_node, down_node = block.nodes
        mask = [None]  # handed from _observe to _switch_off: (t, n_ff) bool, neurons switched off
        return [*self.bind(gate_node, gate, (x,), t),
                *self.bind(up_node, up, (x,), t),
                (self._observe, (block.layer, block.act, gate, mask)),   # before act: h may reuse gate
                *self.bind(act_node, h, (gate, up), t),
                (self._switch_off, (h, mask)),
                *self.bind(down_node, out, (h,), t)]

    def _observe(self, layer: int, op: Op, gate: np.ndarray, mask: list) -> None:
        mag = act_magnitude(op, gate)
        if self.recorder is not None:
            self.recorder(layer, mag)
        if self.thresholds is None:
            mask[0] = None
            return
        off = mag < self.thresholds[layer]
        mask[0] = off
        self.seen[layer] += off.size
        self.active[layer] += off.size - int(off.sum())

    @staticmethod
    def _switch_off(h: np.ndarray, mask: list) -> None:
        if mask[0] is not None:
            h[mask[0]] = 0.0
