"""Prompt-lookup drafts: guess the next tokens from what followed the same n-gram earlier.

When a reply copies from its prompt or from itself (editing code, answering from a document,
rewriting a text), the tokens after the history's last n tokens are often the ones that
followed those n tokens the last time they occurred. NgramDraft proposes up to k such tokens,
for the longest n from MAX_NGRAM down to MIN_NGRAM that occurred before, and the engine verifies
them exactly (verified_draft.py), so the output is exactly plain decode's. It needs no second
model, and costs nothing where nothing repeats: no proposal, plain decode.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .verified_draft import VerifiedDraft

MAX_NGRAM = 4
MIN_NGRAM = 2          # single-token matches guessed right too rarely to pay for a verification


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


class NgramDraft(VerifiedDraft):
    """The engine's draft for prompt lookup (Engine(draft="ngram")); see verified_draft.py for
    how its drafts are verified and how many are drafted."""

    kind = "ngram"

    def propose(self, history: Sequence[int], k: int) -> list[int]:
        return lookup(history, k)
