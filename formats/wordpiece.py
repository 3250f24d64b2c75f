"""BERT's WordPiece (`tokenizer.ggml.model == "bert"`), as llama.cpp's WPM tokenizer runs it.

A GGUF WordPiece vocabulary is stored the way llama.cpp's converter writes it: a word-initial
piece carries the phantom space "▁" ("▁hello"), a continuation has lost its "##" ("lo").

Encoding a plain fragment:
  1. normalize: where accents are stripped (tokenizer.ggml.normalizer.strip_accents, by default
     when lowercasing), replace each character by the first of its canonical decomposition
     (llama.cpp's one-code-point "NFD": é -> e, and a Hangul syllable -> its leading jamo) and
     drop combining marks; lowercase where
     tokenizer.ggml.normalizer.lowercase says so; drop NUL, U+FFFD and control characters;
  2. split into words at whitespace, and make every punctuation mark, ASCII symbol and CJK
     ideograph a word of its own;
  3. each word, prefixed with "▁", is cut greedily into the longest vocabulary pieces from the
     left (on its UTF-8 bytes, as llama.cpp compares them); a word that cannot be cut
     entirely becomes the unknown token.
"""
from __future__ import annotations

import functools
import unicodedata

PHANTOM_SPACE = "\u2581"

# llama.cpp's is_chinese_char ranges (the CJK ideograph blocks BERT isolates)
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
# Unicode White_Space, llama.cpp's whitespace set
_WHITE_SPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                         + "".join(chr(c) for c in range(0x2000, 0x200B)))


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CJK)


@functools.lru_cache(maxsize=None)
def _first_of_decomposition(ch: str) -> str:
    """The first code point of ch's full canonical decomposition (ch itself if it has none)."""
    cp = ord(ch)
    if 0xAC00 <= cp <= 0xD7A3:                    # Hangul syllables decompose by formula
        return chr(0x1100 + (cp - 0xAC00) // 588)
    decomposition = unicodedata.decomposition(ch)
    if not decomposition or decomposition.startswith("<"):   # none, or a compatibility one
        return ch
    return _first_of_decomposition(chr(int(decomposition.split()[0], 16)))


def _lower(ch: str) -> str:
    """Simple (one code point) lowercase, as llama.cpp's table maps: İ -> i, not i + dot."""
    low = ch.lower()
    return low if len(low) == 1 else low[0]


class WordPieceModel:
    def __init__(self, token_to_id: dict[str, int], unk_id: int | None, lowercase: bool, strip_accents: bool):
        self.pieces = {text.encode("utf-8"): tid for text, tid in token_to_id.items()}
        self.longest = max(map(len, self.pieces))
        self.unk_id = unk_id
        self.lowercase = lowercase
        self.strip_accents = strip_accents

    def words(self, text: str) -> list[str]:
        """Step 1 and 2 of the module docstring."""
        if self.strip_accents:
            text = "".join(map(_first_of_decomposition, text))
        words, current = [], []
        for ch in text:
            if ch in _WHITE_SPACE:
                if current:
                    words.append("".join(current))
                    current = []
                continue
            category = unicodedata.category(ch)
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (category[0] == "C" and category != "Cn"):
                continue
            if self.strip_accents and category[0] == "M":
                continue
            if self.lowercase:
                ch = _lower(ch)
            if category[0] == "P" or (cp < 0x7F and category[0] == "S") or _is_cjk(cp):
                if current:
                    words.append("".join(current))
                    current = []
                words.append(ch)
            else:
                current.append(ch)
        if current:
            words.append("".join(current))
        return words

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for word in self.words(text):
            data = (PHANTOM_SPACE + word).encode("utf-8")
            start = len(out)
            i = 0
            while i < len(data):
                for j in range(min(len(data), i + self.longest), i, -1):
                    tid = self.pieces.get(data[i:j])
                    if tid is not None:
                        out.append(tid)
                        i = j
                        break
                else:                  # no piece starts here: the whole word is unknown
                    del out[start:]
                    break
            if len(out) == start and self.unk_id is not None:
                out.append(self.unk_id)
        return out
