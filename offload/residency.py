"""Which weights stay in RAM under a budget, and which are streamed from disk.

Dense streaming reads every non-resident matrix once per forward pass, so every streamed byte
costs the same and the budget should simply be filled. The order in which matrices claim it:

1. vectors (norms, biases): tiny, and read as a whole every layer;
2. attention matrices: small and many (per-read overhead), and needed for every token;
3. FFN matrices, layer by layer;
4. the output head last: one large matrix streams at the disk's best rate.

Tables only gathered by row (a token embedding that is not also the head) never need to be
resident: each token reads its own row. A table that is also the head (tied embeddings) claims
its place as the head, and while streamed its rows are read per token too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from .budget import format_bytes

_CLASS_ORDER = (("attn_", 0), ("ffn_", 1))
_LAYER = re.compile(r"^blk\.(\d+)\.")


def _claim_order(name: str) -> tuple:
    """Sort key: attention before FFN before everything else (the head); then by layer."""
    cls = next((rank for tag, rank in _CLASS_ORDER if tag in name), len(_CLASS_ORDER))
    m = _LAYER.match(name)
    return cls, int(m.group(1)) if m else 0, name


@dataclass(frozen=True)
class Residency:
    budget: int                    # bytes of weights allowed in RAM
    resident: frozenset[str]       # tensors copied into RAM at load
    streamed: tuple[str, ...]      # matrices read from disk at every use
    gathered: tuple[str, ...]      # tables (GET_ROWS) not resident: read a row per token
    resident_bytes: int            # resident tensors plus the fixed streaming buffers


def plan_residency(nbytes: Mapping[str, int], matrices: set[str], tables: set[str],
                   budget: int, buffer_bytes: int) -> Residency:
    """Fill `budget` bytes: every tensor that is neither a matrix nor a table (vectors), then
    matrices in claim order.

    nbytes: every tensor's size; matrices: tensors used as MUL_MAT weights; tables: tensors
    gathered by GET_ROWS (a table that is only gathered never becomes resident); buffer_bytes:
    the streaming buffers, charged first."""
    vectors = [n for n in nbytes if n not in matrices and n not in tables]
    used = buffer_bytes + sum(nbytes[n] for n in vectors)
    if used > budget:
        raise ValueError(f"a RAM budget of {format_bytes(budget)} is too small for this model: its "
                         f"norms, biases and streaming buffers alone need {format_bytes(used)}")
    resident, streamed = set(vectors), []
    for name in sorted(matrices, key=_claim_order):
        if used + nbytes[name] <= budget:
            resident.add(name)
            used += nbytes[name]
        else:
            streamed.append(name)
    gathered = tuple(sorted(t for t in tables if t not in resident))
    return Residency(budget, frozenset(resident), tuple(streamed), gathered, used)
