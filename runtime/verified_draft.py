"""Drafts verified by the target model in one exact multi-token pass (Engine.verify), whatever
proposes them: prompt lookup (ngram_draft.py) or a smaller model (model_draft.py).

A round proposes up to k tokens after `token`, then evaluates `token` and all but the last
draft in one pass whose rows are bit-identical to one-token decode (Graph.row_exact), so the
output is exactly plain decode's: generate.py samples each row in turn and keeps the drafts
while the samples agree. Drafts are the proposer's single best guesses, a point mass q; for
such a q the standard speculative-sampling rule (accept x with probability min(1, p(x)/q(x)) =
p(x), on a rejection sample from max(0, p - q) normalized = p without x) is exactly "sample from
p and keep the draft while they agree": the output distribution is the model's, and with a
seed the very same text as without drafts.

How many tokens to draft is chosen each round to maximise the expected tokens per second:

    k = 1 (plain decode):  1 token per plain step
    k >= 2:                (1 + a + ... + a^(k-1)) tokens per (proposing k + verify(k))

from the measured seconds of a plain step, of verify(k) (moving averages; a k not yet measured
is estimated as plain * (1 + VERIFY_SLOPE * (k - 1))) and of proposing one token, and the
measured rate a at which a tested draft is kept. Where drafts are not kept, a falls and plain
decode wins (every PROBE_EVERY-th round still drafts two tokens, to notice when that changes,
unless drafting could not pay even if every draft were kept).
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Sequence

from .draft_counts import DraftCounts, KeptRate, expected_tokens, moving_average

MAX_DRAFT = 8


class VerifiedDraft(DraftCounts, ABC):
    """The engine's draft (Engine.draft) for proposers checked by Engine.verify; subclasses
    give `propose(history, k)`."""

    PROBE_EVERY = 8
    # verify(k) / decode measured on qwen2.5-coder-0.5b, 2 cores: 1.0, 1.3, 2.0, 3.2 for
    # k = 1, 2, 4, 8 (benchmarks/bench_speculative.py): about 1 + 0.3 (k - 1)
    VERIFY_SLOPE = 0.3

    def __init__(self, max_draft: int = MAX_DRAFT):
        super().__init__()
        self.max_draft = max_draft
        self.plain = None                      # seconds of a plain step
        self.verify_seconds: dict[int, float] = {}
        self.propose_seconds = 0.0             # per proposed token
        self.rate = KeptRate()
        self._rounds = 0

    @abstractmethod
    def propose(self, history: Sequence[int], k: int) -> list[int]:
        """Up to k tokens to follow `history` (whose last token the target evaluates next)."""

    def _tokens_per_second(self, k: int, a: float | None = None) -> float:
        """Expected tokens per second drafting k (1: plain decode) at kept rate a (default:
        the measured one)."""
        if k == 1:
            return 1.0 / self.plain
        if a is None:
            a = self.rate.value if self.rate.value is not None else 1.0
        verify = self.verify_seconds.get(k, self.plain * (1 + self.VERIFY_SLOPE * (k - 1)))
        return expected_tokens(a, k) / (verify + k * self.propose_seconds)

    def next_length(self) -> int:
        self._rounds += 1
        if self.plain is None:      # a plain step first, to measure what drafting must beat
            return 1 if self._rounds == 1 else self.max_draft
        k = max(range(1, self.max_draft + 1), key=self._tokens_per_second)
        if k == 1 and self._rounds % self.PROBE_EVERY == 0 and self._could_pay():
            return 2                # the cheapest round that measures the kept rate again
        return k

    def _could_pay(self) -> bool:
        """Whether drafting would beat plain decode if every draft were kept: else probing
        cannot change the choice (a draft model about as slow as the model itself)."""
        return any(self._tokens_per_second(k, 1.0) > self._tokens_per_second(1) for k in range(2, self.max_draft + 1))

    def speculate(self, engine, token: int, k: int, history: Sequence[int]):
        """(drafts, logits rows) after appending `token` and all but the last draft, or None
        (and nothing appended) when there is no proposal."""
        start = time.perf_counter()
        drafts = self.propose(history, k)
        if not drafts:
            return None
        proposed = time.perf_counter()
        self.propose_seconds = moving_average(self.propose_seconds or None, (proposed - start) / len(drafts))
        rows = engine.verify([token, *drafts[:-1]])
        m = len(drafts)
        self.verify_seconds[m] = moving_average(self.verify_seconds.get(m), time.perf_counter() - proposed)
        return drafts, rows

    def timed_plain(self, seconds: float) -> None:
        self.counted_plain()
        self.plain = moving_average(self.plain, seconds)

    def record(self, drafted: int, emitted: int, kept: int) -> None:
        super().record(drafted, emitted, kept)
        self.rate.add(emitted, kept)
