"""The CPU backend with an offload plan: every FFN block served sparsely from neuron bundles.

Each layer's FFN (Graph.ffn) is bound whole (`bind_ffn`): the gate product runs as any matrix
does here (resident or streamed, see cpu_streaming.py), then

    a = act(gate)                      the model's own SWIGLU/GEGLU kernel, on an up of ones
    a[|a| < plan.thresholds[layer]] = 0
    out = offload.SparseFFN.run(x, a)  up rows and down columns of the active neurons only,
                                       from pinned bundles, the neuron cache or the plan file

The model's ffn_up and ffn_down are never touched: the plan holds them (bundles).
"""
from __future__ import annotations

import numpy as np

from ...offload.direct_io import DirectReader
from ...offload.sparse_ffn import SparseFFN, switch_off
from ..graph import Op
from . import activations as A
from .cpu_streaming import StreamingCpuBackend


def _sparse_ffn(ffn, act, gate, ones, acts, threshold, x, x_copy, out):
    """One layer's FFN after its gate product: activations, threshold, sparse up and down.

    The planner may give `out` the input's buffer (x's last planned reader is the up product,
    which this replaces), so x is copied first."""
    t, n_ff = gate.shape
    xc = x_copy[:x.size].reshape(x.shape)
    np.copyto(xc, x)
    a = acts[:t * n_ff].reshape(t, n_ff)
    if act is Op.SWIGLU:
        A.swiglu(a, gate, ones[:t])
    else:
        A.geglu(a, gate, ones[:t], A.GELU_TABLE)
    switch_off(a, threshold)
    ffn.run(out, xc, a)


class SparseCpuBackend(StreamingCpuBackend):
    def __init__(self, tensors, kv, path, residency, schedules, max_tokens, plan, neurons: list[tuple[int, int]]):
        """plan: offload.plan_file.OffloadPlan; neurons: (pinned, cache slots) per layer."""
        super().__init__(tensors, kv, path, residency, schedules, max_tokens)
        self.plan = plan
        self.plan_reader = DirectReader(plan.path)
        self.ffns = [SparseFFN(layer, plan.n_embd, pinned, slots, self.plan_reader, offset, max_tokens)
                     for layer, (pinned, slots), offset in zip(plan.layers, neurons, plan.bundle_offsets)]
        self._ones = np.ones((max_tokens, plan.n_ff), dtype=np.float32)
        self._acts = np.zeros(max_tokens * plan.n_ff, dtype=np.float32)
        self._x = np.zeros(max_tokens * plan.n_embd, dtype=np.float32)
        self.resident_bytes += sum(f.resident_bytes for f in self.ffns)

    def bind_ffn(self, block, x, outs, t):
        gate, _, _, out = outs
        ffn = self.ffns[block.layer]
        return [*self.bind(block.nodes[0], gate, (x,), t),
                (_sparse_ffn, (ffn, block.act, gate, self._ones, self._acts,
                               np.float32(self.plan.thresholds[block.layer]), x, self._x, out))]

    def close(self) -> None:
        super().close()
        self.plan_reader.close()

    # ---- counters ------------------------------------------------------------------------
    @property
    def cache_hit_rate(self) -> float | None:
        hits = sum(f.cache.hits for f in self.ffns if f.cache is not None)
        misses = sum(f.cache.misses for f in self.ffns if f.cache is not None)
        return hits / (hits + misses) if hits + misses else None

    @property
    def bytes_read(self) -> int:
        return self.reader.bytes_read + self.plan_reader.bytes_read

    @property
    def read_seconds(self) -> float:
        return self.reader.seconds + self.plan_reader.seconds
