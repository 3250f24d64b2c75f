"""SentencePiece-style vocabulary (`tokenizer.ggml.model == "llama"`), merged the llama.cpp way.

This is llama.cpp's `llm_tokenizer_spm`, not the sentencepiece library's unigram search: the
text (spaces already escaped to '▁') starts as one symbol per character; any adjacent pair
whose concatenation is a vocabulary token is a candidate, and the candidate with the highest
token score merges first (ties: leftmost). Symbols that end up outside the vocabulary are
spelled with byte tokens <0xNN>.

Speed: merges never cross a point where no vocabulary token spans the two characters around
it, so the text is cut before each '▁' that follows a character c with no token containing
"c▁" (for most vocabularies: any c but '▁'). The pieces merge independently — identical result,
tie order included, since ties only compare positions inside one piece — and are cached.
"""
from __future__ import annotations

import functools
import re
from typing import Iterable

from .pair_merge import encode_pieces, merge_pairs

ESCAPED_SPACE = "\u2581"   # '▁'


def _cut_pattern(tokens: Iterable[str]) -> re.Pattern:
    """Zero-width matches where the escaped text may be cut into independent pieces."""
    crossing = set(ESCAPED_SPACE)
    for t in [t for t in tokens if ESCAPED_SPACE in t[1:]]:   # few tokens; one C-level test each
        pos = t.find(ESCAPED_SPACE, 1)
        while pos > 0:
            crossing.add(t[pos - 1])
            pos = t.find(ESCAPED_SPACE, pos + 1)
    no_cut_before = "".join(sorted(re.escape(c) for c in crossing))
    return re.compile(f"(?<=[^{no_cut_before}])(?={ESCAPED_SPACE})")


class SPMModel:
    """Merging engine for one vocabulary: escaped text fragment -> token ids."""

    def __init__(self, token_to_id: dict[str, int], scores: list[float]):
        self.token_to_id = token_to_id
        self.scores = scores
        self.byte_ids = [self._byte_token(token_to_id, b) for b in range(256)]
        self._cache: dict[str, tuple[int, ...]] = {}

    @functools.cached_property
    def _cut(self) -> re.Pattern:
        # built on first use: a scan of the whole vocabulary, not needed to load the model
        return _cut_pattern(self.token_to_id)

    @staticmethod
    def _byte_token(token_to_id: dict[str, int], b: int) -> int | None:
        tid = token_to_id.get(f"<0x{b:02X}>")
        if tid is None and b < 0x80:
            tid = token_to_id.get(chr(b))   # llama.cpp's fallback: the byte as a one-char token
        return tid

    def encode(self, escaped: str) -> list[int]:
        return encode_pieces(self._cut.split(escaped), self._cache, self._piece_ids)

    def _piece_ids(self, piece: str) -> tuple[int, ...]:
        ids: list[int] = []
        for symbol in self._merge(piece):
            tid = self.token_to_id.get(symbol)
            if tid is not None:
                ids.append(tid)
                continue
            for b in symbol.encode("utf-8"):
                bid = self.byte_ids[b]
                if bid is None:
                    raise ValueError(f"the vocabulary (tokenizer.ggml.tokens) has no byte token "
                                     f"<0x{b:02X}> to spell {symbol!r}")
                ids.append(bid)
        return tuple(ids)

    def _merge(self, piece: str) -> list[str]:
        """Merge adjacent symbols, highest vocabulary score first (then leftmost)."""
        token_to_id, scores = self.token_to_id, self.scores

        def priority(left: str, right: str):
            tid = token_to_id.get(left + right)
            return None if tid is None else -scores[tid]
        return merge_pairs(list(piece), priority)
