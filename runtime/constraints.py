"""Constrained output through llguidance: JSON schemas, any JSON object, llama.cpp's GBNF
grammars, regular expressions and Lark grammars.

    g = Grammar.from_json_schema({"type": "object", ...})   # or from_gbnf / from_regex / from_lark,
                                                            # Grammar.json_object()
    sampler = constrain(make_sampler(...), g, tokenizer)    # a sampler like any other

At each step the constrained sampler asks llguidance which tokens the grammar allows next,
sets every other token's logit to -inf, lets the wrapped sampler choose among the rest, and
advances the grammar by the chosen token. Once the grammar is complete only the
end-of-generation tokens are allowed, so generation ends there. The grammar engine is
llguidance's (MIT, used by llama.cpp and vLLM); lanternlm only hands it the vocabulary: each
token's bytes (control tokens as 0xFF followed by their text, which llguidance reads as a
special token) and our tokenizer for text, built once per tokenizer.

Because it is a sampler, it works wherever one does (run, chat, the library, drafts under a
RAM budget: a draft's tokens are sampled, and so checked, one by one in order).
"""
from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from numba import njit

from ..formats.special_tokens import TokenAttr


# JSON is written on one line, separated as Python's json.dumps does. With llguidance's default,
# any whitespace between tokens, SmolLM2 indented a recursive schema's reply until it ran out of
# tokens. A schema's own "x-guidance" options override this.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(ValueError):
    """A grammar or schema llguidance rejects, or output it cannot continue."""


def _llguidance():
    import llguidance

    return llguidance


@dataclass(frozen=True)
class Grammar:
    """A grammar in llguidance's form (`source`), checked when made; `kind` names what it was
    made from, for messages."""

    source: str
    kind: str

    @classmethod
    def _checked(cls, source: str, kind: str) -> Grammar:
        error = _llguidance().LLMatcher.validate_grammar(source)
        if error:
            raise GrammarError(f"invalid {kind}: {error}")
        return cls(source, kind)

    @classmethod
    def from_json_schema(cls, schema: Mapping[str, Any] | str) -> Grammar:
        """Output that is JSON valid against `schema` (a dict, or its JSON text)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise GrammarError(f"invalid JSON schema: not JSON ({exc})") from None
        if not isinstance(schema, Mapping):
            raise GrammarError(f"invalid JSON schema: expected a JSON object, got {type(schema).__name__}")
        try:
            source = _llguidance().LLMatcher.grammar_from_json_schema(dict(schema), defaults=JSON_LAYOUT)
        except ValueError as exc:
            raise GrammarError(f"invalid JSON schema: {exc}") from None
        return cls._checked(source, "JSON schema")

    @classmethod
    def json_object(cls) -> Grammar:
        """Any JSON object (OpenAI's response_format {"type": "json_object"})."""
        return cls.from_json_schema({"type": "object"})

    @classmethod
    def from_gbnf(cls, text: str) -> Grammar:
        """A llama.cpp GBNF grammar (root rule `root`)."""
        from llguidance.gbnf_to_lark import gbnf_to_lark

        try:
            lark = gbnf_to_lark(text)
        except Exception as exc:    # the converter raises plain Exceptions for undefined rules
            raise GrammarError(f"invalid GBNF grammar: {exc}") from None
        return cls._checked(_llguidance().LLMatcher.grammar_from_lark(lark), "GBNF grammar")

    @classmethod
    def from_regex(cls, pattern: str) -> Grammar:
        """Output matching the regular expression `pattern` in full."""
        return cls._checked(_llguidance().LLMatcher.grammar_from_regex(pattern), "regular expression")

    @classmethod
    def from_lark(cls, text: str) -> Grammar:
        """An llguidance Lark grammar (start rule `start`)."""
        return cls._checked(_llguidance().LLMatcher.grammar_from_lark(text), "Lark grammar")


def grammar_argument(grammar: Grammar | str | None) -> Grammar | None:
    """The library's `grammar=`: a Grammar, a GBNF text (as llama.cpp's --grammar), or None."""
    if grammar is None or isinstance(grammar, Grammar):
        return grammar
    if isinstance(grammar, str):
        return Grammar.from_gbnf(grammar)
    raise TypeError(f"grammar must be a Grammar or a GBNF string, got {type(grammar).__name__}")


def response_format_grammar(response_format: Mapping[str, Any] | None) -> Grammar | None:
    """OpenAI's response_format: {"type": "text"}, {"type": "json_object"} (with llama-cpp-python's
    optional "schema"), or {"type": "json_schema", "json_schema": {"schema": {...}, ...}}."""
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise ValueError(f"response_format must be an object, got {type(response_format).__name__}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema")
        return Grammar.from_json_schema(schema) if schema is not None else Grammar.json_object()
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping) or "schema" not in spec:
            raise ValueError('response_format {"type": "json_schema"} needs "json_schema": {"schema": {...}}')
        return Grammar.from_json_schema(spec["schema"])
    raise ValueError(f"response_format type must be text, json_object or json_schema, got {kind!r}")


class _Vocabulary:
    """What llguidance's TokenizerWrapper reads from a tokenizer: token bytes, special ids,
    BOS/EOS, and a call that tokenizes bytes."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        special = TokenAttr.CONTROL | TokenAttr.UNKNOWN | TokenAttr.UNUSED
        attrs = tokenizer.attrs.tolist()       # UNDEFINED is 0: no flag to test, compared instead
        self.special_token_ids = [i for i, a in enumerate(attrs) if a & special or a == TokenAttr.UNDEFINED]
        marked = set(self.special_token_ids)
        self.tokens = [b"\xff" + tokenizer.tokens[i].encode("utf-8") if i in marked
                       else tokenizer.token_to_piece(i) for i in range(tokenizer.n_vocab)]
        eos = tokenizer.eos_id if tokenizer.eos_id is not None else min(tokenizer.eot_ids, default=0)
        self.eos_token_id = eos
        self.bos_token_id = tokenizer.bos_id

    def __call__(self, data: bytes) -> list[int]:
        return self._tokenizer.encode(data.decode("utf-8", errors="replace"), add_special=False,
                                      parse_special=False)


_LL_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def ll_tokenizer(tokenizer):
    """llguidance's LLTokenizer for `tokenizer` (formats.tokenizer.Tokenizer), built once."""
    ll = _llguidance()
    built = _LL_TOKENIZERS.get(tokenizer)
    if built is None:
        eog = sorted(tokenizer.eot_ids) or None
        built = ll.LLTokenizer(ll.TokenizerWrapper(_Vocabulary(tokenizer)), n_vocab=tokenizer.n_vocab,
                               eos_token=eog)
        _LL_TOKENIZERS[tokenizer] = built
    return built


@njit(cache=True)
def apply_bitmask(out, logits, mask):
    """out[i] = logits[i] where bit i of `mask` (int32 words, bit 0 first) is set, else -inf.
    numpy's unpackbits and where took 0.3 ms for SmolLM2's 49k tokens, 4% of its decode step."""
    for i in range(out.shape[0]):
        out[i] = logits[i] if (mask[i >> 5] >> (i & 31)) & 1 else -np.inf


def apply_bitmask_reference(logits, mask) -> np.ndarray:
    """apply_bitmask's naive twin: the bits unpacked by numpy."""
    allowed = np.unpackbits(mask.view(np.uint8), bitorder="little")[:logits.shape[0]].view(bool)
    return np.where(allowed, logits, np.float32(-np.inf)).astype(np.float32)


class ConstrainedSampler:
    """A sampler restricted to the tokens `grammar` allows (see the module docstring)."""

    def __init__(self, sampler, grammar: Grammar, tokenizer):
        ll = _llguidance()
        self.sampler = sampler
        self.grammar = grammar
        self.matcher = ll.LLMatcher(ll_tokenizer(tokenizer), grammar.source, log_level=0)
        if self.matcher.is_error():
            raise GrammarError(f"invalid {grammar.kind}: {self.matcher.get_error()}")
        self.n_vocab = tokenizer.n_vocab
        self._mask = np.zeros((self.n_vocab + 31) // 32, dtype=np.int32)

    def allowed(self) -> np.ndarray:
        """bool (n_vocab,): the tokens the grammar allows next."""
        return np.isfinite(self.masked(np.zeros(self.n_vocab, dtype=np.float32)))

    def masked(self, logits) -> np.ndarray:
        """A float32 copy of `logits` with every token the grammar forbids at -inf.

        The mask is computed here, not on a thread while the forward pass runs: on 2 cores such
        a thread took CPU from the kernels, and SmolLM2's constrained decode got 4-12% slower
        per token instead of 2% (the mask itself is 0.21 ms, its application 0.07 ms)."""
        from .openai_shapes import _host

        self.matcher.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        out = np.empty(self.n_vocab, dtype=np.float32)
        apply_bitmask(out, np.ascontiguousarray(_host(logits)[:self.n_vocab], dtype=np.float32), self._mask)
        return out

    def advance(self, token: int) -> None:
        """The grammar takes `token`."""
        self.matcher.consume_token(token)
        if self.matcher.is_error():
            raise GrammarError(f"the {self.grammar.kind} cannot continue: {self.matcher.get_error()}")

    def __call__(self, logits, history) -> int:
        token = self.sampler(self.masked(logits), history)
        self.advance(token)
        return token


def constrain(sampler, grammar: Grammar | None, tokenizer):
    """`sampler` restricted to `grammar` (a new ConstrainedSampler per generation), or itself."""
    return sampler if grammar is None else ConstrainedSampler(sampler, grammar, tokenizer)
