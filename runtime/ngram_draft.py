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

from typing import Sequence

import numpy as np

from .draft_counts import DraftCounts

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
    with Engine.verify."""

    def __init__(self, max_draft: int = MAX_DRAFT):
        super().__init__()
        self.max_draft = max_draft

    def next_length(self) -> int:
        return self.max_draft

    def speculate(self, engine, token: int, k: int, history: Sequence[int]):
        """(drafts, logits rows) after appending `token` and all but the last draft, or None
        (and nothing appended) when the history offers no proposal."""
        drafts = lookup(history, k)
        if not drafts:
            return None
        return drafts, engine.verify([token, *drafts[:-1]])

    def timed_plain(self, seconds: float) -> None:
        self.counted_plain()
