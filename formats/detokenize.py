"""Token ids back to text: whole sequences, and streamed one token at a time.

Follows llama.cpp's `llama_detokenize`: every token contributes its piece (bytes); the first
piece loses one leading space where the vocabulary adds a space prefix when encoding; BPE
vocabularies flagged `clean_spaces` then drop the spaces HF's clean_up_tokenization drops
(" ." -> ".", " 's" -> "'s", " ' " -> "'"). The streaming decoder produces the same text in
pieces and only ever hands out complete UTF-8 characters.
"""
from __future__ import annotations

import codecs


def clean_spaces(text: bytes) -> bytes:
    """llama.cpp's three clean-up passes, each reading the previous pass's output."""
    # pass 1: " ?", " !", " .", " ," lose the space
    out = bytearray(text[:1])
    for i in range(1, len(text)):
        if text[i - 1] == 0x20 and text[i] in b"?!.,":
            out.pop()
        out.append(text[i])
    # pass 2: a lone apostrophe between spaces loses both spaces; llama.cpp blanks the skipped
    # space in place, so it no longer counts as the space before the next character
    src, out = bytes(out), bytearray(out[:1])
    i, skipped = 1, -1
    while i < len(src):
        x = src[i]
        if (x == 0x27 and i + 1 < len(src) and src[i - 1] == 0x20 and i - 1 != skipped
                and src[i + 1] == 0x20):
            out.pop()
            out.append(x)
            skipped = i + 1
            i += 2
            continue
        out.append(x)
        i += 1
    # pass 3: " 's", " 'm", " 're", " 've" lose the space (" 't", " 'd", " 'll" keep it)
    src, out = bytes(out), bytearray(out[:1])
    for i in range(1, len(src)):
        x = src[i]
        if src[i - 1] == 0x20 and x == 0x27 and i + 1 < len(src):
            nxt = src[i + 1]
            if nxt in b"sm" or (i + 2 < len(src) and src[i + 1:i + 3] in (b"re", b"ve")):
                out.pop()
        out.append(x)
    return bytes(out)


def _clean_cut(pending: bytearray) -> int:
    """Largest k such that cleaning pending[:k] and pending[k:] separately equals cleaning the
    whole: every clean-up rule starts at a space and spans at most four bytes, so a cut
    preceded by three non-space bytes is safe. 0 when there is none."""
    k = len(pending)
    while k >= 3:
        window = pending[k - 3:k]
        if 0x20 not in window:
            return k
        k = k - 3 + window.rfind(b" ")   # the cut must move left of that space
    return 0


class IncrementalDecoder:
    """Streams `decode(ids)` token by token: `add(id)` returns the text that became final,
    `flush()` the rest. The concatenation of all returns equals `Tokenizer.decode(ids)`."""

    def __init__(self, tokenizer, skip_special: bool = False):
        self._tok = tokenizer
        self._skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = True
        self._strip_space = tokenizer.add_space_prefix
        self._pending = bytearray()     # bytes not yet cleaned (clean_spaces vocabularies)
        self._held_eos = False          # a trailing EOS that decode() would drop

    def add(self, token_id: int) -> str:
        tok = self._tok
        released = ""
        if self._held_eos:   # it was not the last token after all
            self._held_eos = False
            released = self._emit_piece(tok.eos_id)
        if self._first:
            self._first = False
            if self._skip_special and tok.add_bos and token_id == tok.bos_id:
                self._strip_space = False
                return ""
        if self._skip_special and tok.add_eos and token_id == tok.eos_id:
            self._held_eos = True
            return released
        return released + self._emit_piece(token_id)

    def flush(self) -> str:
        self._held_eos = False
        out = self._pending
        self._pending = bytearray()
        if self._tok.clean_spaces:
            out = clean_spaces(bytes(out))
        return self._utf8.decode(bytes(out), final=True)

    def _emit_piece(self, token_id: int) -> str:
        piece = self._tok.token_to_piece(token_id, special=not self._skip_special)
        if self._strip_space:
            self._strip_space = False
            if piece.startswith(b" "):
                piece = piece[1:]
        if not self._tok.clean_spaces:
            return self._utf8.decode(piece)
        self._pending += piece
        cut = _clean_cut(self._pending)
        if cut == 0:
            return ""
        ready = clean_spaces(bytes(self._pending[:cut]))
        del self._pending[:cut]
        return self._utf8.decode(ready)
