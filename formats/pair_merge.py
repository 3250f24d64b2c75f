"""What the BPE and SentencePiece-style tokenizers share: greedy merging of adjacent symbols,
and a memo of the ids of each word (or piece) already encoded.

The symbols of one word sit in a doubly linked list; every adjacent pair the vocabulary knows
is queued with its priority, and the best pair (smallest priority, then leftmost) is merged
until none is left. A queued pair goes stale when either side is merged away or grows first;
it is recognised by comparing the two texts it was queued with, and skipped.
"""
from __future__ import annotations

import heapq
from typing import Callable, Iterable, Optional

MEMO_LIMIT = 1 << 16   # entries; the memo is cleared wholesale when full (cheap, rarely reached)


def encode_pieces(pieces: Iterable[str], memo: dict[str, tuple[int, ...]],
                  piece_ids: Callable[[str], tuple[int, ...]]) -> list[int]:
    """The ids of each non-empty piece in turn, computing each distinct piece once."""
    out: list[int] = []
    for piece in pieces:
        if not piece:
            continue
        ids = memo.get(piece)
        if ids is None:
            if len(memo) >= MEMO_LIMIT:
                memo.clear()
            ids = memo[piece] = piece_ids(piece)
        out.extend(ids)
    return out


def merge_pairs(symbols: list[str], priority: Callable[[str, str], Optional[float]]) -> list[str]:
    """`symbols` merged pairwise; `priority(left, right)` is None where a pair cannot merge."""
    n = len(symbols)
    if n < 2:
        return list(symbols)
    text = list(symbols)
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))

    def entry(left: int, right: int):
        p = priority(text[left], text[right])
        return None if p is None else (p, left, right, text[left], text[right])

    heap = [e for e in (entry(i, i + 1) for i in range(n - 1)) if e is not None]
    heapq.heapify(heap)
    while heap:
        _, left, right, lt, rt = heapq.heappop(heap)
        if text[left] != lt or text[right] != rt:
            continue   # stale: a side was merged since this pair was queued
        text[left] = lt + rt
        text[right] = ""
        after = nxt[right]
        nxt[left] = after
        if after >= 0:
            prv[after] = left
        for pair in ((prv[left], left), (left, after)):
            if pair[0] >= 0 and pair[1] >= 0 and (e := entry(*pair)) is not None:
                heapq.heappush(heap, e)
    return [t for t in text if t]
