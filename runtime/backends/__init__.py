"""Backends implement the graph's ops; the graph, planner and executor are shared by all.

A backend is a class constructed as `Backend(tensors, kv_cache)` (tensors: GGUF name ->
TensorRef) that offers:

- `zeros(shape, dtype)`: an array in its memory (arena, inputs, KV cache);
- `bind(node, out, srcs, t) -> [(fn, args), ...]`: the calls computing one graph node for
  `t` tokens into the array `out` from the arrays `srcs` (graph.Node documents each op).

`cpu` is the Numba backend; a torch backend registers here as a second implementation of the
same ops.
"""
from __future__ import annotations

from .cpu import BackendError, CpuBackend

BACKENDS = {"cpu": CpuBackend}


def get_backend(name: str):
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(sorted(BACKENDS))}") from None


__all__ = ["BACKENDS", "BackendError", "CpuBackend", "get_backend"]
