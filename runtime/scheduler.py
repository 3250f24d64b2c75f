"""Continuous batching: which tokens of which sequences the next step computes (Orca, vLLM).

A sequence's `tokens` are its prompt and what it generated; the first `n_cached` have keys
and values in its blocks of the pool (paged_kv.py). A step feeds each scheduled sequence the
next tokens it has not computed, and samples a new token for those whose feed reached their
last token. A decoding sequence has exactly one such token (the one sampled last step), so
decode and prefill are one kind of work, and one step mixes them:

  1. every running sequence that is decoding gets its one token (oldest first);
  2. sequences part-way through their prompt get the next chunk, within the step's token
     budget (so a long prompt delays the streams by at most one chunk per step);
  3. waiting sequences are admitted, oldest first, while the budget, the running limit and
     the pool allow; an admitted prompt first takes what the prefix cache holds of it.

When the pool has no block for a running sequence, the youngest running sequence is
preempted: its blocks are released (its full ones stay in the prefix cache) and it waits at
the front of the queue to be recomputed from its tokens. A sequence alone in the pool that
still finds no block has used the whole pool: it ends with "length".

Nothing here touches the model: the engine loop (serving_engine.py) runs the `Step` and
hands back the sampled tokens.
"""
from __future__ import annotations

import bisect
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .kv_cache import BLOCK_SIZE, blocks_for
from .paged_kv import BlockPool

_arrivals = itertools.count()


@dataclass(eq=False)
class Sequence:
    """One generation: prompt + output tokens and where their keys and values are."""

    tokens: list[int]                   # prompt, then sampled tokens (the last one not computed yet)
    n_prompt: int
    max_new: int                        # tokens it may sample, at most
    owner: Any = None                   # the engine's per-request state
    blocks: list[int] = field(default_factory=list)
    n_cached: int = 0                   # tokens whose keys and values are in `blocks`
    n_registered: int = 0               # full blocks offered to the prefix cache
    reused: int = 0                     # prompt tokens the prefix cache supplied (first admission)
    arrival: int = field(default_factory=lambda: next(_arrivals))
    admitted: bool = False

    @property
    def n_generated(self) -> int:
        return len(self.tokens) - self.n_prompt

    @property
    def pending(self) -> int:
        """Tokens to compute before the next sample."""
        return len(self.tokens) - self.n_cached


@dataclass
class Work:
    seq: Sequence
    start: int          # first position fed
    count: int          # tokens fed

    @property
    def samples(self) -> bool:
        """The feed reaches the sequence's last token: its logits row is sampled."""
        return self.start + self.count == len(self.seq.tokens)


@dataclass
class Step:
    work: list[Work]
    ended: list[Sequence]           # sequences that could not go on (pool exhausted): "length"

    @property
    def n_tokens(self) -> int:
        return sum(w.count for w in self.work)


class Scheduler:
    def __init__(self, pool: BlockPool, max_running: int, token_budget: int, n_ctx: int):
        if max_running < 1 or token_budget < max_running:
            raise ValueError(f"need 1 <= max_running <= token_budget, got {max_running}, {token_budget}")
        self.pool = pool
        self.max_running = max_running
        self.token_budget = token_budget
        self.n_ctx = n_ctx
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []        # arrival order: the last is the one to preempt
        self.preemptions = 0

    # ---- queue -------------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Drop a sequence (finished, cancelled, failed) and release its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.pool.release(seq.blocks)
        seq.blocks = []
        seq.n_cached = 0

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting

    # ---- a step ------------------------------------------------------------------------------
    def schedule(self) -> Step:
        work: list[Work] = []
        ended: list[Sequence] = []
        budget = self.token_budget
        scheduled: set[Sequence] = set()      # never preempted: their work is in this step
        # 1. decoding sequences, oldest first; out of blocks, the youngest gives its up
        for seq in list(self.running):
            if seq not in self.running or seq.pending != 1:
                continue
            if not self._grow(seq, 1, ended, scheduled):
                continue
            work.append(Work(seq, seq.n_cached, 1))
            scheduled.add(seq)
            budget -= 1
        # 2. prompts part-way through, oldest first, preempting younger ones unscheduled
        for seq in list(self.running):
            if budget <= 0:
                break
            if seq not in self.running or seq.pending <= 1:
                continue
            count = min(seq.pending, budget)
            if not self._grow(seq, count, ended, scheduled):
                continue
            work.append(Work(seq, seq.n_cached, count))
            scheduled.add(seq)
            budget -= count
        # 3. admissions
        while self.waiting and budget > 0 and len(self.running) < self.max_running:
            seq = self.waiting[0]
            # what the prefix cache holds of it (of a preempted sequence: what is left of its own)
            seq.blocks = self.pool.lookup(seq.tokens)
            found = len(seq.blocks)
            seq.n_cached, seq.n_registered = found * BLOCK_SIZE, found
            if not seq.admitted:
                seq.reused = seq.n_cached
            count = min(seq.pending, budget)
            if not self._grow(seq, count, ended, scheduled, preempt=False):
                self.pool.release(seq.blocks)
                seq.blocks, seq.n_cached = [], 0
                break
            self.pool.count_hits(found, (len(seq.tokens) - 1) // BLOCK_SIZE)
            self.waiting.popleft()
            seq.admitted = True
            bisect.insort(self.running, seq, key=lambda s: s.arrival)
            work.append(Work(seq, seq.n_cached, count))
            budget -= count
        return Step(work, ended)

    def _grow(self, seq: Sequence, count: int, ended: list[Sequence], scheduled: set[Sequence],
              preempt: bool = True) -> bool:
        """Give `seq` blocks for `count` more tokens. Without `preempt`, False if the pool has
        too few (nothing taken); with it, the youngest running sequences not `scheduled` in
        this step are preempted for them, and False once `seq` itself had to go (preempted, or
        ended if it is alone) or nothing is left to preempt."""
        need = blocks_for(seq.n_cached + count) - len(seq.blocks)
        while need > self.pool.available:
            if not preempt:
                return False
            victims = [s for s in self.running if s not in scheduled]
            if not victims:
                return False
            victim = victims[-1]
            if victim is seq and len(self.running) == 1:
                self.remove(seq)
                ended.append(seq)
                return False
            self._preempt(victim)
            if victim is seq:
                return False
        for _ in range(need):
            seq.blocks.append(self.pool.allocate())
        return True

    def _preempt(self, seq: Sequence) -> None:
        """Recompute later: release the blocks, wait at the front of the queue."""
        self.running.remove(seq)
        self.pool.release(seq.blocks)
        seq.blocks, seq.n_cached, seq.n_registered = [], 0, 0
        self.waiting.appendleft(seq)
        self.preemptions += 1

    def computed(self, step: Step) -> None:
        """The step ran: its tokens are cached; full blocks are offered to the prefix cache."""
        for w in step.work:
            seq = w.seq
            seq.n_cached = w.start + w.count
            full = seq.n_cached // BLOCK_SIZE
            for b in range(seq.n_registered, full):
                parent = seq.blocks[b - 1] if b else None
                self.pool.register(parent, seq.blocks[b], seq.tokens[b * BLOCK_SIZE:(b + 1) * BLOCK_SIZE])
            seq.n_registered = max(seq.n_registered, full)
