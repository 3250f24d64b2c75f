"""Place every activation of a graph in one scratch arena, once, reusing memory by liveness.

Walking the nodes in execution order, each output gets a block of the arena that no live
tensor occupies; a tensor's block returns to the free list after its last reader. An op in
`INPLACE_OPS` whose first source dies at that op writes over the source's block instead
(ggml-alloc does the same). The plan is a table of offsets: the executor turns it into array
views once, so running the graph never allocates.
"""
from __future__ import annotations

from dataclasses import dataclass

from .graph import INPLACE_OPS, Graph, Kind, Tensor

ALIGN = 16  # float32 elements: 64-byte aligned blocks, one cache line, full SIMD vectors


@dataclass(frozen=True)
class Plan:
    offsets: dict[str, int]  # activation name -> start in the arena (float32 elements)
    size: int                # arena length (float32 elements) this graph needs
    naive_size: int          # what one buffer per activation would take (for reports)


def tensor_size(t: Tensor, n_tokens: int) -> int:
    """Float32 elements tensor `t` occupies in a graph of `n_tokens` tokens, rounded to ALIGN."""
    n = t.rows(n_tokens) * t.width
    return -(-n // ALIGN) * ALIGN


class _FreeList:
    """First-fit allocator over [0, end) with coalescing of adjacent free blocks."""

    def __init__(self):
        self.free: list[tuple[int, int]] = []  # (offset, size), sorted by offset, never adjacent
        self.end = 0

    def alloc(self, size: int) -> int:
        best = None
        for i, (off, sz) in enumerate(self.free):  # best fit keeps large holes for large tensors
            if sz >= size and (best is None or sz < self.free[best][1]):
                best = i
        if best is None:
            if self.free and self.free[-1][0] + self.free[-1][1] == self.end:
                off = self.free.pop()[0]  # grow the trailing hole rather than leaving it
            else:
                off = self.end
            self.end = off + size
            return off
        off, sz = self.free[best]
        if sz == size:
            del self.free[best]
        else:
            self.free[best] = (off + size, sz - size)
        return off

    def release(self, off: int, size: int) -> None:
        blocks = self.free + [(off, size)]
        blocks.sort()
        merged: list[tuple[int, int]] = []
        for o, s in blocks:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((o, s))
        self.free = merged


def plan(graph: Graph) -> Plan:
    n = graph.n_tokens
    last_use: dict[Tensor, int] = {}
    for i, node in enumerate(graph.nodes):
        for src in node.srcs:
            last_use[src] = i
    if graph.output is not None:
        last_use[graph.output] = len(graph.nodes)  # the output outlives the run

    heap = _FreeList()
    offsets: dict[str, int] = {}
    owner: dict[Tensor, Tensor] = {}  # tensor -> the tensor whose block it lives in
    holders: dict[Tensor, int] = {}   # block owner -> live tensors in that block
    naive = 0
    for i, node in enumerate(graph.nodes):
        out = node.out
        if out.kind is Kind.ACTIVATION:
            size = tensor_size(out, n)
            naive += size
            src = node.srcs[0] if node.srcs else None
            if (node.op in INPLACE_OPS and src is not None and src.kind is Kind.ACTIVATION
                    and last_use.get(src) == i and tensor_size(src, n) == size):
                block = owner[src]
                offsets[out.name] = offsets[src.name]
            else:
                block = out
                offsets[out.name] = heap.alloc(size)
            owner[out] = block
            holders[block] = holders.get(block, 0) + 1
        for src in set(node.srcs):
            if src.kind is Kind.ACTIVATION and last_use[src] == i:
                block = owner[src]
                holders[block] -= 1
                if holders[block] == 0:
                    heap.release(offsets[block.name], tensor_size(block, n))
        if out.kind is Kind.ACTIVATION and last_use.get(out) is None:
            raise ValueError(f"graph tensor {out.name!r} is computed but never used")
    return Plan(offsets, heap.end, naive)
