"""Backends implement the graph's ops; the graph, planner and executor are shared by all.

A backend is a class constructed as `Backend(tensors, kv_cache)` (tensors: GGUF name ->
TensorRef) that offers:

- `zeros(shape, dtype)`: an array in its memory (arena, inputs, KV cache);
- `available_memory()`: how much of that memory is left (runtime.memory_limits.AvailableMemory,
  or None where unknown), so the engine refuses a KV cache that cannot fit before allocating it;
- `bind(node, out, srcs, t) -> [(fn, args), ...]`: the calls computing one graph node for
  `t` tokens into the array `out` from the arrays `srcs` (graph.Node documents each op).

`BACKENDS` maps each name to a factory `(device=None, weights=None) -> backend class`, so a
backend's module (and its dependencies) is imported only when it is chosen: `cpu` is the
Numba backend over quantized blocks; `torch` (torch_backend.py, the optional extra) runs the
same graph on torch tensors, on a GPU when there is one.
"""
from __future__ import annotations

from typing import Callable

from .cpu import BackendError, CpuBackend


class BackendUnavailableError(ImportError, RuntimeError):
    """A backend whose optional dependency is not installed."""


def _cpu(device: str | None = None, weights: str | None = None) -> type:
    if device not in (None, "auto", "cpu"):
        raise BackendError(f"the cpu backend runs on the CPU only; device {device!r} needs backend='torch'")
    if weights not in (None, "quantized"):
        raise BackendError(f"the cpu backend computes on the quantized blocks; weights={weights!r} "
                           f"needs backend='torch'")
    return CpuBackend


def _torch(device: str | None = None, weights: str | None = None) -> type:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise BackendUnavailableError("the torch backend needs PyTorch, which is not installed: "
                                      "pip install 'lanternlm[torch]'") from None
    from .torch_backend import backend_class

    return backend_class(device, weights)


BACKENDS: dict[str, Callable[..., type]] = {"cpu": _cpu, "torch": _torch}


def get_backend(name: str, device: str | None = None, weights: str | None = None) -> type:
    """The backend class `name`, for `device` ("auto", "cuda", "cuda:N", "mps", "cpu"; torch
    only) keeping `weights` "dequantized" or "quantized" (torch; cpu is always quantized)."""
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(sorted(BACKENDS))}") from None
    return factory(device=device, weights=weights)


__all__ = ["BACKENDS", "BackendError", "BackendUnavailableError", "CpuBackend", "get_backend"]
