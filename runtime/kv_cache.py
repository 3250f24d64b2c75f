"""Keys and values of every token seen so far, one pair of arrays per layer.

Layout per layer: k (n_head_kv, n_ctx, head_dim), v (n_head_kv, n_ctx, head_dim_v), of the
element type the backend stores (the CPU backend: IEEE half bits as uint16 for an "f16" cache,
llama.cpp's default, or float32 for "f32"; see the backends' `kv_dtype`), so one head's keys are contiguous rows and attention streams through them in order. Entries
are written at their position by the ATTENTION op; `n_past` says how many are valid, so
truncating is just lowering it (later tokens overwrite the stale entries). Sliding-window
layers keep the full length too and mask by position: simpler than a ring buffer, and their
memory is what the global layers need anyway.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


class KVCache:
    def __init__(self, n_layer: int, n_ctx: int, n_head_kv: int, head_dim: int, head_dim_v: int,
                 zeros: Callable = np.zeros, dtype=np.float32):
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be at least 1, got {n_ctx}")
        self.n_ctx = n_ctx
        self.k = [zeros((n_head_kv, n_ctx, head_dim), dtype=dtype) for _ in range(n_layer)]
        self.v = [zeros((n_head_kv, n_ctx, head_dim_v), dtype=dtype) for _ in range(n_layer)]
        self.n_past = 0

    @classmethod
    def for_config(cls, cfg, n_ctx: int, zeros: Callable = np.zeros, dtype=np.float32) -> KVCache:
        return cls(cfg.n_layer, n_ctx, cfg.n_head_kv, cfg.head_dim, cfg.head_dim_v, zeros, dtype)

    @staticmethod
    def nbytes_for(cfg, n_ctx: int, dtype=np.float32) -> int:
        """What `for_config(cfg, n_ctx, dtype=dtype)` will allocate, in bytes."""
        per_token = cfg.n_layer * cfg.n_head_kv * (cfg.head_dim + cfg.head_dim_v)
        return per_token * n_ctx * np.dtype(dtype).itemsize

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k) + sum(a.nbytes for a in self.v)

    def truncate(self, n: int) -> None:
        """Keep the first `n` cached tokens."""
        if not 0 <= n <= self.n_past:
            raise ValueError(f"cannot truncate a cache of {self.n_past} tokens to {n}")
        self.n_past = n

    def reset(self) -> None:
        self.n_past = 0
