"""The sparse FFN of one layer, on neuron bundles that are pinned, cached or read from the plan.

Given the activations a = act(gate) (t, n_ff), already zero for every neuron below the layer's
threshold, the FFN output is

    out[t] = sum over neurons i of  a[t, i] * (up_i . x[t]) * down_i

and only neurons with some a[t, i] != 0 need their up row and down column. A layer keeps its
hottest `n_pinned` bundles (the plan's first positions) in `pinned`, and a `NeuronCache` of
recently used ones; active neurons in neither are read from the plan file first (runs of
adjacent plan positions coalesced into one read) and take the least recently used slots.

Compute runs on the two contiguous row sets, pinned and cached, as they are (no gathering):
the up products through the up type's registered matvec/matmul kernel (the very bytes and
kernel of the dense model, so u_i is the dense model's value), then the down columns (Q8_0)
scaled by h = a * u, skipping zeros (`accumulate_q8_0_columns`). Rows whose neuron is inactive
cost an up product each, which is cheap next to the read it avoids.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..quant import QTYPES
from ..quant.float_bits import f16_at
from .direct_io import DirectReader, aligned_empty
from .plan_file import bundle_bytes

Q8_0_BLOCK, Q8_0_BYTES = 32, 34
MAX_RUN_GAP = 4          # read up to this many unneeded bundles to join two runs into one read


@njit(cache=True, parallel=True)
def accumulate_q8_0_columns(out, cols, h):
    """out (t, n) f32 += h (t, k) @ dequant(cols) (k, n): cols uint8 (k, n/32 * 34), Q8_0 rows.

    Parallel over the 32-value blocks of n; rows with h == 0 are skipped."""
    n_blocks = out.shape[1] // Q8_0_BLOCK
    for b in prange(n_blocks):
        base = b * Q8_0_BYTES
        for r in range(out.shape[0]):
            acc = np.zeros(Q8_0_BLOCK, dtype=np.float32)
            for j in range(cols.shape[0]):
                hj = h[r, j]
                if hj == 0.0:
                    continue
                s = hj * f16_at(cols[j], base)
                for i in range(Q8_0_BLOCK):
                    acc[i] += s * np.float32(np.int8(cols[j, base + 2 + i]))
            for i in range(Q8_0_BLOCK):
                out[r, b * Q8_0_BLOCK + i] += acc[i]


def accumulate_q8_0_columns_reference(out, cols, h):
    """The plain twin of accumulate_q8_0_columns, in float64 numpy."""
    k, n = cols.shape[0], out.shape[1]
    blocks = cols.reshape(k, n // Q8_0_BLOCK, Q8_0_BYTES)
    d = blocks[:, :, :2].copy().view(np.float16).astype(np.float64)            # (k, blocks, 1)
    q = blocks[:, :, 2:].view(np.int8).astype(np.float64)                       # (k, blocks, 32)
    out += (h.astype(np.float64) @ (d * q).reshape(k, n)).astype(np.float32)


@njit(cache=True)
def switch_off(a, threshold):
    """a (t, n) f32: zero every value with |a| < threshold, in place."""
    for r in range(a.shape[0]):
        for i in range(a.shape[1]):
            if abs(a[r, i]) < threshold:
                a[r, i] = 0.0


class NeuronCache:
    """Slots holding bundles of one layer: up rows (slots, up bytes) and down columns (slots,
    Q8_0 bytes) as contiguous arrays the kernels read, which neuron each slot holds (-1: empty),
    and when each slot was last used (for least-recently-used replacement)."""

    def __init__(self, n_slots: int, up_bytes: int, down_bytes: int, n_ff: int):
        self.up = np.zeros((n_slots, up_bytes), dtype=np.uint8)
        self.down = np.zeros((n_slots, down_bytes), dtype=np.uint8)
        self.neuron = np.full(n_slots, -1, dtype=np.int64)   # -1: empty
        self.index = np.zeros(n_slots, dtype=np.int64)        # neuron for the kernels: an empty
                                                              # slot's zero bytes give 0 for any
        self.last_used = np.full(n_slots, -1, dtype=np.int64)
        self.slot_of = np.full(n_ff, -1, dtype=np.int64)
        self.hits = 0
        self.misses = 0

    @property
    def n_slots(self) -> int:
        return self.neuron.shape[0]

    @property
    def nbytes(self) -> int:
        return self.up.nbytes + self.down.nbytes

    def victims(self, step: int) -> np.ndarray:
        """Slots that may be refilled, best first: empty ones, then the least recently used;
        never one used at `step` (the current evaluation)."""
        order = np.argsort(self.last_used, kind="stable")
        return order[self.last_used[order] < step]

    def put(self, slots: np.ndarray, neurons: np.ndarray, up: np.ndarray, down: np.ndarray, step: int) -> None:
        old = self.neuron[slots]
        self.slot_of[old[old >= 0]] = -1
        self.neuron[slots] = neurons
        self.index[slots] = neurons
        self.slot_of[neurons] = slots
        self.up[slots] = up
        self.down[slots] = down
        self.last_used[slots] = step


class SparseFFN:
    """One layer's FFN from a plan: `pinned` bundles in RAM, a cache, reads from the plan file.

    layer: offload.plan_file.LayerPlan; n_pinned: how many of its hottest bundles stay in RAM;
    n_slots: cache slots (0 for none); offset: the file offset of the layer's first bundle."""

    def __init__(self, layer, n_embd: int, n_pinned: int, n_slots: int, reader: DirectReader,
                 offset: int, max_tokens: int):
        self.up_type = layer.up_type
        self.up_kernels = QTYPES[layer.up_type]
        self.up_bytes, self.down_bytes = bundle_bytes(layer.up_type, n_embd)
        self.bundle = self.up_bytes + self.down_bytes
        n_ff = layer.order.shape[0]
        self.n_ff = n_ff
        self.order = np.asarray(layer.order, dtype=np.int64)   # plan position -> neuron
        self.position = np.empty(n_ff, dtype=np.int64)          # neuron -> plan position
        self.position[self.order] = np.arange(n_ff)
        self.reader, self.offset = reader, offset
        n_pinned = min(n_pinned, n_ff)
        pinned = (reader.read_copy(offset, n_pinned * self.bundle) if n_pinned
                  else np.zeros(0, np.uint8)).reshape(n_pinned, self.bundle)
        self.pinned_up = np.ascontiguousarray(pinned[:, :self.up_bytes])
        self.pinned_down = np.ascontiguousarray(pinned[:, self.up_bytes:])
        self.pinned_neuron = self.order[:n_pinned]
        self.n_pinned = n_pinned
        self.cache = NeuronCache(n_slots, self.up_bytes, self.down_bytes, n_ff) if n_pinned < n_ff else None
        if self.cache is not None and n_slots == 0:
            raise ValueError("a layer with unpinned neurons needs cache slots")
        width = max(n_pinned, n_slots, MAX_RUN_GAP + 64)
        self._u = np.zeros(max_tokens * width, dtype=np.float32)   # up products of a row set
        self._h = np.zeros(max_tokens * width, dtype=np.float32)   # a * u of a row set
        self._staging = aligned_empty((MAX_RUN_GAP + 64) * self.bundle + 2 * 4096)
        self.step = 0
        self.read_bundles = 0

    @property
    def resident_bytes(self) -> int:
        return self.pinned_up.nbytes + self.pinned_down.nbytes + (self.cache.nbytes if self.cache else 0)

    # ---- fetching missing bundles -----------------------------------------------------------
    def _runs(self, positions: np.ndarray):
        """Sorted plan positions -> (first, count) reads, joining runs less than MAX_RUN_GAP apart
        and splitting at the staging buffer's size."""
        limit = (self._staging.size - 2 * 4096) // self.bundle
        start = prev = int(positions[0])
        for p in positions[1:]:
            p = int(p)
            if p - prev > MAX_RUN_GAP + 1 or p - start + 1 > limit:
                yield start, prev - start + 1
                start = p
            prev = p
        yield start, prev - start + 1

    def _fetch(self, neurons: np.ndarray, out, x, a) -> None:
        """Read the bundles of `neurons` (none pinned or cached). They take the cache's free and
        least recently used slots; past the slots this evaluation can spare (a prefill whose
        active neurons outnumber them), the rest are computed straight from the read buffer."""
        cache = self.cache
        positions = np.sort(self.position[neurons])
        wanted = np.zeros(self.n_ff, dtype=bool)
        wanted[positions] = True
        slots = cache.victims(self.step)
        filled = 0
        for first, count in self._runs(positions):
            raw = self.reader.read_into(self._staging, self.offset + first * self.bundle, count * self.bundle)
            rows = raw.reshape(count, self.bundle)
            keep = np.flatnonzero(wanted[first:first + count])
            n_cached = min(keep.size, slots.size - filled)
            into, keep_cached, keep_over = slots[filled:filled + n_cached], keep[:n_cached], keep[n_cached:]
            cache.put(into, self.order[first + keep_cached], rows[keep_cached, :self.up_bytes],
                      rows[keep_cached, self.up_bytes:], self.step)
            filled += n_cached
            if keep_over.size:
                self._rows(out, x, a, np.ascontiguousarray(rows[keep_over, :self.up_bytes]),
                           np.ascontiguousarray(rows[keep_over, self.up_bytes:]), self.order[first + keep_over],
                           x.shape[0])
        self.read_bundles += positions.size

    # ---- the FFN ----------------------------------------------------------------------------
    def run(self, out: np.ndarray, x: np.ndarray, a: np.ndarray) -> None:
        """out (t, n_embd) = the FFN of x (t, n_embd) given activations a (t, n_ff), zero for
        neurons switched off."""
        self.step += 1
        t = x.shape[0]
        out[...] = 0.0
        if self.cache is not None:
            active = np.flatnonzero((a != 0).any(axis=0))
            active = active[self.position[active] >= self.n_pinned]
            cached = self.cache.slot_of[active]
            hit = cached >= 0
            self.cache.last_used[cached[hit]] = self.step
            self.cache.hits += int(hit.sum())
            self.cache.misses += int((~hit).sum())
            if not hit.all():
                self._fetch(active[~hit], out, x, a)
            self._rows(out, x, a, self.cache.up, self.cache.down, self.cache.index, t)
        if self.n_pinned:
            self._rows(out, x, a, self.pinned_up, self.pinned_down, self.pinned_neuron, t)

    def _rows(self, out, x, a, up, down, neurons, t) -> None:
        k = up.shape[0]
        u, h = self._u[:t * k].reshape(t, k), self._h[:t * k].reshape(t, k)
        if t == 1:
            self.up_kernels.matvec(u[0], up, x[0])
        else:
            self.up_kernels.matmul(u, up, x)
        np.take(a, neurons, axis=1, out=h)
        np.multiply(h, u, out=h)
        accumulate_q8_0_columns(out, down, h)
