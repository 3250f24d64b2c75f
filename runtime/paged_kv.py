"""The server's KV pool bookkeeping: which block belongs to whom, and which hold a known prefix.

The pool's memory is one KVCache (kv_cache.py) of n_blocks blocks of BLOCK_SIZE rows; this
module only tracks block ids. A block is in one of three states:

  referenced  in the block table of one or more running sequences (refs > 0)
  cached      unreferenced, but holding a full block of known tokens: kept for a later prompt
              that starts the same way, and evicted least recently released first
  free        holding nothing anyone can find

Prefix caching follows vLLM's design. A full block is identified by its tokens and by what
precedes them: the key of block i is (the identity of block i - 1's content, its tokens), so
a lookup walks a new prompt's full blocks from the start and stops at the first one not held.
Keys are compared exactly (a dict of tuples), so two different prefixes never share a block.
Blocks being written are never shared: a sequence registers a block only once every row of it
is computed, and a prompt reuses at most the blocks before its last token (whose logits must
be computed anyway).
"""
from __future__ import annotations

from collections import OrderedDict, deque
from typing import Sequence

from .kv_cache import BLOCK_SIZE

NO_PARENT = -1


class BlockPool:
    def __init__(self, n_blocks: int):
        if n_blocks < 1:
            raise ValueError(f"a KV pool needs at least one block, got {n_blocks}")
        self.n_blocks = n_blocks
        self.refs = [0] * n_blocks
        self._free: deque[int] = deque(range(n_blocks))
        self._cached: OrderedDict[int, None] = OrderedDict()   # unreferenced known blocks, LRU first
        self._by_key: dict[tuple, int] = {}                     # content key -> block
        self._key_of: dict[int, tuple] = {}                     # block -> its content key
        self._content_id: dict[int, int] = {}                   # block -> id of its content (for children's keys)
        self._next_content = 0
        self.hit_blocks = 0        # prompt blocks found in the cache (for /metrics)
        self.queried_blocks = 0    # prompt blocks looked up

    # ---- counts ------------------------------------------------------------------------------
    @property
    def available(self) -> int:
        """Blocks a sequence can get now: free ones and cached ones (evicted on demand)."""
        return len(self._free) + len(self._cached)

    @property
    def in_use(self) -> int:
        return self.n_blocks - self.available

    @property
    def cached(self) -> int:
        return len(self._cached)

    # ---- allocation --------------------------------------------------------------------------
    def allocate(self) -> int | None:
        """A block for a sequence to write (refs 1), or None if every block is referenced. A free
        block first; else the least recently released cached one, whose content is forgotten."""
        if self._free:
            block = self._free.popleft()
        elif self._cached:
            block, _ = self._cached.popitem(last=False)
            self._forget(block)
        else:
            return None
        self.refs[block] = 1
        return block

    def release(self, blocks: Sequence[int]) -> None:
        """A sequence lets go of its blocks: unreferenced known blocks stay findable (cached),
        the rest are free."""
        for block in blocks:
            self.refs[block] -= 1
            if self.refs[block] == 0:
                if block in self._key_of:
                    self._cached[block] = None
                else:
                    self._free.append(block)

    # ---- prefix cache ------------------------------------------------------------------------
    def key(self, parent: int | None, tokens: Sequence[int]) -> tuple:
        """The content key of a full block of `tokens` after block `parent` (None: the first)."""
        parent_id = NO_PARENT if parent is None else self._content_id.get(parent)
        return (parent_id, tuple(tokens))

    def register(self, parent: int | None, block: int, tokens: Sequence[int]) -> None:
        """Block `block` now holds the full block `tokens`, following block `parent`. If another
        block already holds that content, this one stays private (it is freed when released)."""
        if (parent is not None and parent not in self._content_id) or block in self._key_of:
            return      # the parent's content is not known (it was private): neither is ours
        k = self.key(parent, tokens)
        if k in self._by_key:
            return
        self._by_key[k] = block
        self._key_of[block] = k
        self._content_id[block] = self._next_content
        self._next_content += 1

    def count_hits(self, found: int, queried: int) -> None:
        """Prefix-cache statistics of an admitted prompt: `found` of its `queried` full blocks
        (short of its last token) were in the cache."""
        self.hit_blocks += found
        self.queried_blocks += queried

    def lookup(self, tokens: Sequence[int]) -> list[int]:
        """The cached blocks holding the longest run of full blocks at the start of `tokens`,
        short of its last token, each now referenced once more by the caller."""
        found: list[int] = []
        parent = None
        n_full = (len(tokens) - 1) // BLOCK_SIZE
        for i in range(n_full):
            k = self.key(parent, tokens[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE])
            block = self._by_key.get(k)
            if block is None:
                break
            if self.refs[block] == 0:
                del self._cached[block]
            self.refs[block] += 1
            found.append(block)
            parent = block
        return found

    def _forget(self, block: int) -> None:
        k = self._key_of.pop(block, None)
        if k is not None:
            del self._by_key[k]
        self._content_id.pop(block, None)
