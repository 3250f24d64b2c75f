"""Prompt-lookup drafts: guess the next tokens from what followed the same n-gram earlier.

When a reply copies from its prompt or from itself (editing code, answering from a document,
rewriting a text), the tokens after the history's last n tokens are often the ones that
followed those n tokens the last time they occurred. NgramDraft proposes up to k such tokens,
for the longest n from MAX_NGRAM down to MIN_NGRAM that occurred before, and the engine verifies
them in one multi-token pass whose rows are bit-identical to one-token decode
(`Engine.verify`, Graph.row_exact), so the output is exactly plain decode's (generate.py keeps
drafts while the sampler agrees with them). It needs no second model, and costs nothing where
nothing repeats: no proposal, plain decode.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from .draft_counts import DraftCounts, KeptRate, expected_tokens, moving_average

MAX_NGRAM = 4
MIN_NGRAM = 2          # single-token matches guessed right too rarely to pay for a verification
MAX_DRAFT = 8


def lookup(history: Sequence[int], k: int, max_n: int = MAX_NGRAM, min_n: int = MIN_NGRAM) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of history's last n tokens,
    for the longest n (max_n down to min_n) that has one; [] if none does."""
    h = np.asarray(history, dtype=np.int64)
    size = h.shape[0]
    for n in range(min(max_n, size - 1), min_n - 1, -1):
        tail = h[size - n:]
        # candidate starts: earlier positions whose first token matches, latest first
        starts = np.nonzero(h[:size - n] == tail[0])[0][::-1]
        for s in starts:
            if np.array_equal(h[s:s + n], tail):
                return h[s + n:s + n + k].tolist()
    return []


class NgramDraft(DraftCounts):
    """The engine's draft for prompt lookup (Engine(draft="ngram")): proposes, then verifies
    with Engine.verify.

    How many tokens to draft is chosen each round to maximise the expected tokens per second:

        k = 1 (plain decode):  1 token per plain step
        k >= 2:                (1 + a + ... + a^(k-1)) tokens per verify(k)

    from the measured seconds of a plain step and of verify(k) (moving averages; a k not yet
    measured is estimated as plain * (1 + VERIFY_SLOPE * (k - 1))) and the measured rate a at
    which a tested draft is kept. Where the text does not repeat, a falls and plain decode wins
    (every PROBE_EVERY-th round still drafts, to notice when repetition starts)."""

    PROBE_EVERY = 8
    # verify(k) / decode measured on qwen2.5-coder-0.5b, 2 cores: 1.03, 1.64, 2.47, 2.97 for
    # k = 1, 2, 4, 8 (benchmarks/bench_speculative.py): about 1 + 0.3 (k - 1)
    VERIFY_SLOPE = 0.3

    def __init__(self, max_draft: int = MAX_DRAFT):
        super().__init__()
        self.max_draft = max_draft
        self.plain = None                      # seconds of a plain step
        self.verify_seconds: dict[int, float] = {}
        self.rate = KeptRate()
        self._rounds = 0

    def _tokens_per_second(self, k: int) -> float:
        if k == 1:
            return 1.0 / self.plain
        a = self.rate.value if self.rate.value is not None else 1.0
        seconds = self.verify_seconds.get(k, self.plain * (1 + self.VERIFY_SLOPE * (k - 1)))
        return expected_tokens(a, k) / seconds

    def next_length(self) -> int:
        self._rounds += 1
        if self.plain is None:
            return self.max_draft
        k = max(range(1, self.max_draft + 1), key=self._tokens_per_second)
        if k == 1 and self._rounds % self.PROBE_EVERY == 0:
            return self.max_draft
        return k

    def speculate(self, engine, token: int, k: int, history: Sequence[int]):
        """(drafts, logits rows) after appending `token` and all but the last draft, or None
        (and nothing appended) when the history offers no proposal."""
        drafts = lookup(history, k)
        if not drafts:
            return None
        start = time.perf_counter()
        rows = engine.verify([token, *drafts[:-1]])
        m = len(drafts)
        self.verify_seconds[m] = moving_average(self.verify_seconds.get(m), time.perf_counter() - start)
        return drafts, rows

    def timed_plain(self, seconds: float) -> None:
        self.counted_plain()
        self.plain = moving_average(self.plain, seconds)

    def record(self, drafted: int, emitted: int, kept: int) -> None:
        super().record(drafted, emitted, kept)
        self.rate.add(emitted, kept)
