"""Tokenizers built from GGUF metadata alone; llama.cpp's tokenizer is the oracle.

    tok = load_tokenizer(gguf_file.kv)
    ids = tok.encode("Hello", add_special=True, parse_special=True)
    text = tok.decode(ids)

Encoding follows `llama_tokenize`: the text is first cut at special tokens (control and
user-defined token texts, longest first; with parse_special=False only user-defined ones;
tokens llama.cpp marks LSTRIP / RSTRIP swallow the whitespace before / after them, as Phi-3's
special tokens do, special_tokens._strip_rules), then each plain fragment goes through the vocabulary's engine — byte-level BPE for
`tokenizer.ggml.model == "gpt2"`, score-ordered SentencePiece merging for "llama". BOS/EOS are
added only where the metadata (or llama.cpp's default for the model) asks for them.
"""
from __future__ import annotations

import operator
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from .bpe import BPEModel, byte_decode
from .detokenize import IncrementalDecoder, clean_spaces
from .metadata import read
from .pretokenize import GEMMA4_LINES, pre_tokenizer
from .special_tokens import SpecialIds, TokenAttr, attrs_from_types, resolve_special_ids
from .spm import ESCAPED_SPACE, SPMModel
from .wordpiece import PHANTOM_SPACE, WordPieceModel

# plain ints: IntFlag arithmetic is slow in per-token loops
_RENDERED_AS_TEXT = int(TokenAttr.UNKNOWN | TokenAttr.CONTROL | TokenAttr.USER_DEFINED)
_HIDDEN_UNLESS_SPECIAL = int(TokenAttr.UNKNOWN | TokenAttr.CONTROL)
_MATCHABLE = _RENDERED_AS_TEXT
_USER_DEFINED = int(TokenAttr.USER_DEFINED)
_LSTRIP, _RSTRIP = int(TokenAttr.LSTRIP), int(TokenAttr.RSTRIP)
_C_SPACE = " \t\n\v\f\r"   # what C's isspace() takes, the test llama.cpp strips with
_NORMAL = int(TokenAttr.NORMAL)
_BYTE = int(TokenAttr.BYTE)


@dataclass(frozen=True)
class _Engine:
    """What differs between tokenizer models once the vocabulary is loaded."""
    encode_fragment: Callable[[str, bool], list[int]]   # (plain text, follows a special token)
    normal_piece: Callable[[str], bytes]                  # bytes of a NORMAL token's text
    special_defaults: dict[str, int | None]               # ids used when the metadata has none
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    clean_spaces: bool
    add_sep: bool = False                                 # encode(add_special=True) ends with SEP
    bos_always: bool = False                              # BOS added whatever add_bos_token says


def _bpe_engine(kv: dict, tokens: list[str], token_to_id: dict[str, int]) -> _Engine:
    merges = read(kv, "tokenizer.ggml.merges", None)
    if merges is None:
        raise ValueError("BPE vocabulary (tokenizer.ggml.model='gpt2') without "
                         "tokenizer.ggml.merges")
    pre = pre_tokenizer(read(kv, "tokenizer.ggml.pre", None))
    model = BPEModel(token_to_id, list(merges), pre)
    return _Engine(
        encode_fragment=lambda text, after_special: model.encode(text),
        normal_piece=byte_decode,
        special_defaults={"bos": 11, "eos": 11, "unk": None},
        add_bos=pre.add_bos, add_eos=False,
        # unused when encoding BPE, but llama_detokenize strips the first space when it is set
        add_space_prefix=read(kv, "tokenizer.ggml.add_space_prefix", False),
        clean_spaces=pre.clean_spaces)


def _spm_engine(kv: dict, tokens: list[str], token_to_id: dict[str, int]) -> _Engine:
    n = len(tokens)
    raw = read(kv, "tokenizer.ggml.scores", None)
    if raw is None:
        scores = [0.0] * n
    else:
        if raw.size < n:
            raise ValueError(f"tokenizer.ggml.scores has {raw.size} entries for {n} tokens")
        scores = raw[:n].astype(np.float32).tolist()
    model = SPMModel(token_to_id, scores)
    add_space_prefix = read(kv, "tokenizer.ggml.add_space_prefix", True)

    def encode_fragment(text: str, after_special: bool) -> list[int]:
        # llama.cpp prefixes a space to the first fragment and to each one after a special
        # token, then writes every space as '▁'
        if add_space_prefix and after_special:
            text = " " + text
        return model.encode(text.replace(" ", ESCAPED_SPACE))

    return _Engine(
        encode_fragment=encode_fragment,
        normal_piece=lambda text: text.replace(ESCAPED_SPACE, " ").encode("utf-8"),
        special_defaults={"bos": 1, "eos": 2, "unk": 0},
        add_bos=True, add_eos=False, add_space_prefix=add_space_prefix, clean_spaces=False)


def _gemma4_engine(kv: dict, tokens: list[str], token_to_id: dict[str, int]) -> _Engine:
    """Gemma 4: BPE over characters (bpe.py, byte_level=False) of text whose spaces are '▁',
    split only into runs of newlines and runs of the rest; BOS always added."""
    merges = read(kv, "tokenizer.ggml.merges", None)
    if merges is None:
        raise ValueError("gemma4 vocabulary (tokenizer.ggml.model='gemma4') without tokenizer.ggml.merges")
    model = BPEModel(token_to_id, list(merges), GEMMA4_LINES, byte_level=False)
    return _Engine(
        encode_fragment=lambda text, after_special: model.encode(text.replace(" ", ESCAPED_SPACE)),
        normal_piece=lambda text: text.replace(ESCAPED_SPACE, " ").encode("utf-8"),
        special_defaults={"bos": None, "eos": None, "unk": None},
        add_bos=True, add_eos=False, add_space_prefix=False, clean_spaces=True, bos_always=True)


def _wordpiece_engine(kv: dict, tokens: list[str], token_to_id: dict[str, int]) -> _Engine:
    unk = read(kv, "tokenizer.ggml.unknown_token_id", None)
    if unk is None or not 0 <= unk < len(tokens):
        unk = 100 if len(tokens) > 100 else None        # llama.cpp's default for BERT
    lowercase = read(kv, "tokenizer.ggml.normalizer.lowercase", False)
    model = WordPieceModel(token_to_id, unk, lowercase,
                           read(kv, "tokenizer.ggml.normalizer.strip_accents", lowercase))
    return _Engine(
        encode_fragment=lambda text, after_special: model.encode(text),
        normal_piece=lambda text: text.replace(PHANTOM_SPACE, " ").encode("utf-8"),
        special_defaults={"bos": 101, "eos": None, "unk": 100, "sep": 102, "pad": 0, "mask": 103},
        add_bos=True, add_eos=False, add_space_prefix=False, clean_spaces=True, add_sep=True)


# tokenizer.ggml.model -> engine factory
TOKENIZER_MODELS: dict[str, Callable[[dict, list[str], dict[str, int]], _Engine]] = {
    "gpt2": _bpe_engine,
    "llama": _spm_engine,
    "bert": _wordpiece_engine,
    "gemma4": _gemma4_engine,
}


class _SpecialMatcher:
    """Finds which special-token texts occur in a text, in llama.cpp's matching order."""

    def __init__(self, entries: list[tuple[str, int]]):
        self.entries = entries                     # (text, id), longest text first
        self.by_head: dict[str, list[int]] = defaultdict(list)
        for i, (text, _) in enumerate(entries):
            self.by_head[text[:2]].append(i)

    def present(self, text: str) -> list[tuple[str, int]]:
        # Index by the first two characters so that thousands of special tokens cost one pass
        # over the text instead of one substring search each.
        heads = set(text)
        heads.update(map(operator.add, text, text[1:]))
        found = sorted(i for h in heads for i in self.by_head.get(h, ()))
        return [self.entries[i] for i in found if self.entries[i][0] in text]


def _checked_tokens(kv: dict) -> list[str]:
    tokens = read(kv, "tokenizer.ggml.tokens")
    if "" in tokens:
        # llama.cpp renames empty tokens so that every text maps back to one id
        tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    return tokens


class Tokenizer:
    """Text <-> token ids for one GGUF vocabulary (see module docstring).

    Attributes: n_vocab; tokens (id -> text) and token_to_id; longest_token_chars (no token
    decodes to more characters than its text has); attrs (TokenAttr per id);
    bos_id / eos_id / eot_id (None where llama.cpp has none: the metadata's id, else its
    default for the model -- 1/2 for "llama", 11/11 for "gpt2" -- if inside the vocabulary);
    eot_ids, every id that ends generation (llama.cpp's EOG set); add_bos / add_eos, whether
    encode(add_special=True) adds them; add_space_prefix and clean_spaces (decoding rules).
    """

    def __init__(self, kv: dict):
        model = read(kv, "tokenizer.ggml.model", None)
        if model not in TOKENIZER_MODELS:
            raise ValueError(f"unsupported tokenizer.ggml.model={model!r}; "
                             f"supported: {', '.join(TOKENIZER_MODELS)}")
        self.model: str = model
        self.pre: str | None = read(kv, "tokenizer.ggml.pre", None)
        self.tokens = _checked_tokens(kv)
        self.n_vocab = len(self.tokens)
        self.longest_token_chars = max(map(len, self.tokens))
        self.token_to_id: dict[str, int] = dict(zip(self.tokens, range(self.n_vocab)))

        engine = TOKENIZER_MODELS[model](kv, self.tokens, self.token_to_id)
        self._engine = engine
        self.add_space_prefix = engine.add_space_prefix
        self.clean_spaces = engine.clean_spaces
        self.add_bos = engine.bos_always or read(kv, "tokenizer.ggml.add_bos_token", engine.add_bos)
        self.add_eos = read(kv, "tokenizer.ggml.add_eos_token", engine.add_eos)
        self.add_sep = read(kv, "tokenizer.ggml.add_sep_token", engine.add_sep)

        attrs = attrs_from_types(read(kv, "tokenizer.ggml.token_type", None), self.n_vocab)
        self.special: SpecialIds = resolve_special_ids(
            kv, self.tokens, self.token_to_id, attrs, engine.special_defaults)
        self.attrs = attrs
        self._attr_list: list[int] = attrs.tolist()
        self.bos_id: int | None = self.special.ids["bos"]
        self.eos_id: int | None = self.special.ids["eos"]
        self.eot_id: int | None = self.special.ids["eot"]
        self.eot_ids: frozenset[int] = self.special.eog

        matchable = np.nonzero(attrs & _MATCHABLE)[0].tolist()
        entries = sorted([(self.tokens[i], i) for i in matchable], key=lambda e: -len(e[0]))
        self._special_all = _SpecialMatcher(entries)
        # without parse_special only user-defined texts are matched (never control/unknown)
        self._special_user = _SpecialMatcher(
            [e for e in entries if (self._attr_list[e[1]] & _MATCHABLE) == _USER_DEFINED])
        self._pieces: list[bytes | None] = [None] * self.n_vocab

    def __repr__(self) -> str:
        return (f"Tokenizer(model={self.model!r}, pre={self.pre!r}, n_vocab={self.n_vocab}, "
                f"bos={self.bos_id}, eos={self.eos_id}, add_bos={self.add_bos})")

    # -- encoding ---------------------------------------------------------------------------

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text` (llama_tokenize semantics, see module docstring)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes str, not {type(text).__name__}")
        out: list[int] = []
        if add_special and self.add_bos:
            out.append(self._required("bos"))
        after_special = True
        for fragment in self._partition(text, parse_special):
            if isinstance(fragment, int):
                out.append(fragment)
                after_special = True
            else:
                out.extend(self._engine.encode_fragment(fragment, after_special))
                after_special = False
        if add_special and self.add_eos:
            out.append(self._required("eos"))
        if add_special and self.add_sep:
            out.append(self._required("sep"))
        return out

    def _required(self, role: str) -> int:
        tid = self.special.ids[role]
        if tid is None:
            raise ValueError(f"the vocabulary asks for a {role.upper()} token but has none")
        return tid

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Cut `text` at special-token texts: each special token in turn (longest first) splits
        every plain fragment at all its non-overlapping occurrences, as llama.cpp does."""
        if not text:
            return []
        matcher = self._special_all if parse_special else self._special_user
        pieces: list[str | int] = [text]
        for special_text, tid in matcher.present(text):
            lstrip = self._attr_list[tid] & _LSTRIP
            rstrip = self._attr_list[tid] & _RSTRIP
            cut: list[str | int] = []
            for piece in pieces:
                if isinstance(piece, int) or special_text not in piece:
                    cut.append(piece)
                    continue
                parts = piece.split(special_text)
                for j, part in enumerate(parts):
                    if j:
                        cut.append(tid)
                        if rstrip:
                            part = part.lstrip(_C_SPACE)
                    if lstrip and j < len(parts) - 1:
                        part = part.rstrip(_C_SPACE)
                    if part:
                        cut.append(part)
            pieces = cut
        return pieces

    # -- decoding ---------------------------------------------------------------------------

    def token_to_piece(self, token_id: int, special: bool = True) -> bytes:
        """Bytes a token stands for (llama_token_to_piece). Control and unknown tokens render
        as their text, or as nothing when `special` is False; byte tokens <0xNN> are one byte."""
        if not 0 <= token_id < self.n_vocab:
            raise ValueError(f"token id {token_id} outside the vocabulary (0..{self.n_vocab - 1})")
        attr = self._attr_list[token_id]
        if not special and attr & _HIDDEN_UNLESS_SPECIAL:
            return b""
        piece = self._pieces[token_id]
        if piece is None:
            piece = self._pieces[token_id] = self._make_piece(token_id, attr)
        return piece

    def _make_piece(self, token_id: int, attr: int) -> bytes:
        text = self.tokens[token_id]
        if attr & _RENDERED_AS_TEXT:
            return text.encode("utf-8")
        if attr & _NORMAL:
            return self._engine.normal_piece(text)
        if attr & _BYTE:
            try:
                return bytes([int(text[3:5], 16)])
            except ValueError:
                raise ValueError(f"byte token {token_id} has text {text!r}, not <0xNN>") from None
        return b""   # unused and undefined tokens render as nothing

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of `ids` (llama_detokenize with remove_special = unparse_special negated =
        skip_special). Invalid UTF-8 becomes U+FFFD."""
        ids = [int(i) for i in ids]
        strip_space = self.add_space_prefix
        if skip_special and self.add_bos and ids and ids[0] == self.bos_id:
            ids = ids[1:]
            strip_space = False
        if skip_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        pieces = [self.token_to_piece(i, special=not skip_special) for i in ids]
        if strip_space and pieces and pieces[0].startswith(b" "):
            pieces[0] = pieces[0][1:]
        data = b"".join(pieces)
        if self.clean_spaces:
            data = clean_spaces(data)
        return data.decode("utf-8", errors="replace")

    def decoder(self, skip_special: bool = False) -> IncrementalDecoder:
        """A streaming decoder: `.add(id)` -> complete characters so far, `.flush()` -> rest."""
        return IncrementalDecoder(self, skip_special=skip_special)


def load_tokenizer(kv: dict) -> Tokenizer:
    """Tokenizer of a GGUF file's metadata (`GGUFFile.kv`)."""
    return Tokenizer(kv)
