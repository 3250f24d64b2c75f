"""Which weights stay in RAM under a budget, and which are streamed from disk.

Dense streaming reads every non-resident matrix once per forward pass, so every streamed byte
costs the same and the budget should simply be filled. The order in which matrices claim it:

1. vectors (norms, biases): tiny, and read as a whole every layer;
2. attention matrices: small and many (per-read overhead), and needed for every token;
3. FFN matrices, a layer's together, the layers in bit-reversed order (0, 8, 4, 12, 2, ... of 16),
   so that those left to stream are spread evenly through the forward pass: the I/O thread then
   reads each one while the layers before it compute, instead of all of them at the end;
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


def _layer(name: str) -> int:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else 0


def spread_rank(layer: int, n_layers: int) -> int:
    """`layer`'s place in an order of 0..n_layers-1 whose every suffix is spread evenly: its
    number with the bits reversed (a van der Corput sequence)."""
    bits = max(1, (n_layers - 1).bit_length())
    return int(format(layer, f"0{bits}b")[::-1], 2)


def _claim_order(name: str, n_layers: int) -> tuple:
    """Sort key: attention by layer, then FFN in spread order, then everything else (the head)."""
    cls = next((rank for tag, rank in _CLASS_ORDER if tag in name), len(_CLASS_ORDER))
    layer = _layer(name)
    return cls, spread_rank(layer, n_layers) if cls == 1 else layer, name


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
    n_layers = 1 + max((_layer(n) for n in matrices), default=0)
    for name in sorted(matrices, key=lambda n: _claim_order(n, n_layers)):
        if used + nbytes[name] <= budget:
            resident.add(name)
            used += nbytes[name]
        else:
            streamed.append(name)
    gathered = tuple(sorted(t for t in tables if t not in resident))
    return Residency(budget, frozenset(resident), tuple(streamed), gathered, used)
