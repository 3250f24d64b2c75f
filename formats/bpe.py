"""Byte-level BPE (`tokenizer.ggml.model == "gpt2"`): pre-tokenize, then merge by rank.

Each word's UTF-8 bytes are first written in GPT-2's printable byte alphabet (so that every
byte is one visible character and a space is 'Ġ'), then adjacent symbols are merged, lowest
merge rank first (rank = index in `tokenizer.ggml.merges`), ties going to the leftmost pair,
exactly as llama.cpp's `llm_tokenizer_bpe_session` does with its priority queue. Results are
cached per word: natural text repeats its words a lot.

Gemma 4's vocabulary (`tokenizer.ggml.model == "gemma4"`) is BPE over the text's own
characters instead (`byte_level=False`): spaces are written '▁' beforehand, a symbol missing
from the vocabulary falls back to one <0xXX> token per UTF-8 byte, and a word of newlines
only that is a token of its own is taken whole, as llama.cpp does.
"""
from __future__ import annotations


from .pair_merge import encode_pieces, merge_pairs
from .pretokenize import PreTokenizer


def _gpt2_byte_alphabet() -> str:
    """256 characters: the printable stand-in for each byte value (GPT-2's bytes_to_unicode)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return "".join(table[b] for b in range(256))


BYTE_ALPHABET = _gpt2_byte_alphabet()
# latin-1 decoding turns bytes into code points 0..255; translate then maps them to the alphabet.
_LATIN1_TO_ALPHABET = {b: ch for b, ch in enumerate(BYTE_ALPHABET)}
_ALPHABET_TO_BYTE = {ch: b for b, ch in enumerate(BYTE_ALPHABET)}



def byte_encode(text: str) -> str:
    """`text`'s UTF-8 bytes spelled in the GPT-2 byte alphabet."""
    return text.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_ALPHABET)


def byte_decode(token_text: str) -> bytes:
    """Bytes of a byte-level token. A character outside the alphabet becomes the marker llama.cpp
    writes for it: '[UNK_BYTE_0x<hex of its UTF-8>' followed by the whole token text and ']'."""
    try:
        return bytes([_ALPHABET_TO_BYTE[ch] for ch in token_text])
    except KeyError:
        out = bytearray()
        for ch in token_text:
            b = _ALPHABET_TO_BYTE.get(ch)
            if b is not None:
                out.append(b)
            else:
                out += f"[UNK_BYTE_0x{ch.encode('utf-8').hex()}{token_text}]".encode("utf-8")
        return bytes(out)


class BPEModel:
    """Merging engine for one vocabulary: text fragment -> token ids (no special tokens)."""

    def __init__(self, token_to_id: dict[str, int], merges: list[str], pre: PreTokenizer,
                 byte_level: bool = True):
        self.token_to_id = token_to_id
        self.pre = pre
        self.byte_level = byte_level
        # Key "left right": llama.cpp splits each merge at its first space after position 0;
        # byte-level symbols never contain a raw space (it is 'Ġ'), so the joined string is an
        # unambiguous key. Later duplicates must not override the first rank (reversed build).
        n = len(merges)
        self.ranks: dict[str, int] = dict(zip(reversed(merges), range(n - 1, -1, -1)))
        self._cache: dict[str, tuple[int, ...]] = {}

    def encode(self, text: str) -> list[int]:
        return encode_pieces(self.pre.split(text), self._cache, self._word_ids)

    def _word_ids(self, word: str) -> tuple[int, ...]:
        encoded = byte_encode(word) if self.byte_level else word
        whole = None
        if self.pre.ignore_merges or (not self.byte_level and not word.strip("\n")):
            whole = self.token_to_id.get(encoded)
        if whole is not None:
            return (whole,)
        ids: list[int] = []
        for symbol in self._merge(list(encoded)):
            tid = self.token_to_id.get(symbol)
            if tid is not None:
                ids.append(tid)
                continue
            # A symbol missing from the vocabulary falls back to one token per byte of its
            # UTF-8 text, keeping only bytes that are tokens on their own: ASCII characters
            # (byte-level), or <0xXX> byte tokens (character-level)
            for b in symbol.encode("utf-8"):
                if self.byte_level:
                    tid = self.token_to_id.get(chr(b)) if b < 0x80 else None
                else:
                    tid = self.token_to_id.get(f"<0x{b:02X}>")
                if tid is not None:
                    ids.append(tid)
        return tuple(ids)

    def _merge(self, text: list[str]) -> list[str]:
        """Merge adjacent symbols of one word in rank order (lowest rank first)."""
        ranks = self.ranks
        return merge_pairs(text, lambda left, right: ranks.get(left + " " + right))
