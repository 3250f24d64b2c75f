"""Keys and values of every token seen so far, one pair of arrays per layer.

Layout per layer: k (n_head_kv, n_ctx, row), v (n_head_kv, n_ctx, row_v), so one head's keys
are contiguous rows and attention streams through them in order. A row holds head_dim values
in the cache type's elements (CACHE_TYPES, llama.cpp's --cache-type-k/-v):

  f32   float32, as computed
  f16   IEEE half bits as uint16 (llama.cpp's default: half the memory of f32)
  q8_0  ggml's block_q8_0 as a record (f16 scale, 32 int8): 34 bytes per 32 values
  q4_0  ggml's block_q4_0 as a record (f16 scale, 32 4-bit codes): 18 bytes per 32 values

so a quantized row is head_dim / 32 records whose bytes are exactly the GGML blocks. How each
type is written and read is backends/kv_rows.py. Keys and values may have different types.

A quantized cache holds its rows rotated, as llama.cpp's does by default (since its PR 21038):
an orthonormal Walsh-Hadamard transform of each block of `rotation` values spreads a head's
outlier channels over the block before it is quantized (SmolLM2 with q4_0 keys: mean logit
error against an f16 cache 1.17 unrotated, 0.50 rotated). The query is rotated the same way,
which leaves each q.k unchanged, and the attention output by the values' transform, which
undoes it (H is its own inverse). Keys rotate in the largest power-of-two block dividing the
head size, values in blocks of 64 (llama.cpp's choices); a head size not a multiple of 64 is
not rotated.

The rows are a pool of blocks of BLOCK_SIZE rows (vLLM's paged attention): a sequence's
positions live in the blocks its row of `tables` lists, in order, so position j is row
tables[s, j // BLOCK_SIZE] * BLOCK_SIZE + j % BLOCK_SIZE. The attention kernels always read
through a block table. The engine's cache holds one sequence whose table is the identity
(position j is row j), which the rest of the runtime relies on (truncation, context shift,
drafts); the server's pool holds many sequences and shares blocks between them
(runtime/paged_kv.py).

Entries are written at their row by the ATTENTION op; `n_past` says how many are valid,
so truncating is just lowering it (later tokens overwrite the stale entries). Sliding-window
layers keep the full length too and mask by position: simpler than a ring buffer, and their
memory is what the global layers need anyway.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType

Q8_0_BLOCK = np.dtype([("d", "<u2"), ("qs", "i1", (32,))])
Q4_0_BLOCK = np.dtype([("d", "<u2"), ("qs", "u1", (16,))])  # value j: low nibble of qs[j % 16] (j < 16) or high


@dataclass(frozen=True)
class CacheType:
    """A KV cache element type: its name (llama.cpp's), the array dtype, values per element."""
    name: str
    dtype: np.dtype
    block: int = 1

    def elements(self, width: int) -> int:
        """Array elements per row of `width` values, or ValueError if blocks do not divide it."""
        if width % self.block:
            raise ValueError(f"a {self.name} KV cache needs head sizes that are a multiple of "
                             f"{self.block}; this model's is {width}")
        return width // self.block

    @property
    def ggml_type(self) -> GGMLQuantizationType:
        return GGMLQuantizationType[self.name.upper()]

    def row_bytes(self, width: int) -> int:
        return self.elements(width) * np.dtype(self.dtype).itemsize


CACHE_TYPES = {t.name: t for t in (CacheType("f32", np.dtype(np.float32)), CacheType("f16", np.dtype(np.uint16)),
                                   CacheType("q8_0", Q8_0_BLOCK, 32), CacheType("q4_0", Q4_0_BLOCK, 32))}


def cache_type(name: str | int) -> CacheType:
    """The CacheType named `name` (f32, f16, q8_0, q4_0; any case) or numbered by its GGML type
    (llama-cpp-python's type_k / type_v: 0, 1, 8, 2), or ValueError listing them."""
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        try:
            name = GGMLQuantizationType(int(name)).name
        except ValueError:
            raise ValueError(f"unknown KV cache type {name!r} (not a GGML type number); expected one of "
                             f"{', '.join(CACHE_TYPES)}") from None
    found = CACHE_TYPES.get(str(name).lower())
    if found is None:
        raise ValueError(f"unknown KV cache type {name!r}; expected one of {', '.join(CACHE_TYPES)}")
    return found


def row_width(cache) -> int:
    """Values per row of a layer's cache array (numpy, or a backend's float tensor)."""
    blocked = getattr(cache.dtype, "names", None) is not None  # the quantized types are records
    return int(cache.shape[2]) * (32 if blocked else 1)


BLOCK_SHIFT = 5
BLOCK_SIZE = 1 << BLOCK_SHIFT   # rows per block: 32, as vLLM's largest CPU default


def blocks_for(n_tokens: int) -> int:
    """Blocks that hold n_tokens rows."""
    return -(-n_tokens // BLOCK_SIZE)


def rotation_block(kind: CacheType, width: int, keys: bool) -> int:
    """The Walsh-Hadamard block a cache of `kind` rotates its `width`-value rows in; 0: none."""
    if kind.block == 1 or width % 64:
        return 0
    if not keys:
        return 64
    block = 64
    while width % (2 * block) == 0:
        block *= 2
    return block


class KVCache:
    """Per layer k (n_head_kv, rows, row) and v (n_head_kv, rows, row_v) arrays, rows = n_blocks
    blocks of BLOCK_SIZE, and `tables`: int32 (n_seqs, blocks_for(n_ctx)) block tables.

    n_ctx: the positions one sequence may hold (the rope tables and the attention scratch are
    sized by it); n_blocks: the pool (default: one sequence of n_ctx, with the identity table
    in row 0); n_seqs: the table rows (sequences in one batch)."""

    def __init__(self, n_layer: int, n_ctx: int, n_head_kv: int, head_dim: int, head_dim_v: int,
                 zeros: Callable = np.zeros, k_type: CacheType = CACHE_TYPES["f32"],
                 v_type: CacheType | None = None, n_blocks: int | None = None, n_seqs: int = 1):
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be at least 1, got {n_ctx}")
        v_type = v_type or k_type
        self.n_ctx = n_ctx
        self.k_type, self.v_type = k_type, v_type
        self.k_rotation = rotation_block(k_type, head_dim, keys=True)
        self.v_rotation = rotation_block(v_type, head_dim_v, keys=False)
        per_seq = blocks_for(n_ctx)
        self.n_blocks = per_seq if n_blocks is None else n_blocks
        if self.n_blocks < 1:
            raise ValueError(f"a KV pool needs at least one block, got {self.n_blocks}")
        rows = self.n_blocks * BLOCK_SIZE
        k_shape = (n_head_kv, rows, k_type.elements(head_dim))
        v_shape = (n_head_kv, rows, v_type.elements(head_dim_v))
        self.k = [zeros(k_shape, dtype=k_type.dtype) for _ in range(n_layer)]
        self.v = [zeros(v_shape, dtype=v_type.dtype) for _ in range(n_layer)]
        self.tables = np.zeros((n_seqs, per_seq), dtype=np.int32)
        if n_blocks is None:
            self.tables[0] = np.arange(per_seq, dtype=np.int32)
        self.n_past = 0

    @classmethod
    def for_config(cls, cfg, n_ctx: int, zeros: Callable = np.zeros, k_type: CacheType = CACHE_TYPES["f32"],
                   v_type: CacheType | None = None, n_blocks: int | None = None, n_seqs: int = 1) -> KVCache:
        return cls(cfg.n_layer, n_ctx, cfg.n_head_kv, cfg.head_dim, cfg.head_dim_v, zeros, k_type, v_type,
                   n_blocks, n_seqs)

    @staticmethod
    def bytes_per_token(cfg, k_type: CacheType = CACHE_TYPES["f32"], v_type: CacheType | None = None) -> int:
        v_type = v_type or k_type
        return cfg.n_layer * cfg.n_head_kv * (k_type.row_bytes(cfg.head_dim) + v_type.row_bytes(cfg.head_dim_v))

    @classmethod
    def nbytes_for(cls, cfg, n_ctx: int, k_type: CacheType = CACHE_TYPES["f32"], v_type: CacheType | None = None) -> int:
        """What `for_config(cfg, n_ctx, k_type=..., v_type=...)` will allocate, in bytes."""
        return cls.bytes_per_token(cfg, k_type, v_type) * blocks_for(n_ctx) * BLOCK_SIZE

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
