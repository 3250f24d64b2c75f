"""GGUF metadata values, read with their type and range checked: the one place where a value from
a model file becomes an int, a float, a string or a list for the rest of the code.

Model files come from strangers. A value of the wrong type, or an absurd one, would otherwise
surface far from where it was read: a TypeError deep in the tokenizer, a MemoryError when
`block_count = 2**32 - 1` sizes a tuple, a 32 TiB array from `key_length`. So every reader of
`GGUFFile.kv` (the model config, the tokenizer, special token ids, `lantern info`, the quantizer's
mix rules) calls `read(kv, key, default)`, which checks the value against the key's rule in
RULES (or ARCH_RULES for `<architecture>.<name>` keys) and raises MetadataError, a ValueError
naming the key, the value and what was expected.

Ranges are where the value stops making sense for any model, not tuned to the models we run:
layers up to llama.cpp's LLAMA_MAX_LAYERS (512), widths and vocabulary sizes up to 2**24,
floats finite as float32. Whether a value fits the file's tensors is checked where the graph is
built; whether its caches fit in memory, before they are allocated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

MAX_LAYERS = 512            # llama.cpp's LLAMA_MAX_LAYERS
MAX_WIDTH = 1 << 24         # embedding, feed-forward, head and vocabulary sizes
MAX_COUNT = (1 << 31) - 1   # token counts (context lengths, windows): an int32, as in llama.cpp
FLOAT32_MAX = float(np.finfo(np.float32).max)

REQUIRED = object()   # read()'s default: the key must be present
_ABSENT = object()


class MetadataError(ValueError):
    """A GGUF metadata value is missing, of the wrong type, or out of range."""


def _shown(value: Any) -> str:
    """A value as an error message shows it: its kind, and the value itself when it is short."""
    if isinstance(value, (bool, np.bool_)):
        return f"a bool ({bool(value)})"
    if isinstance(value, (int, np.integer)):
        return f"an integer ({int(value)})"
    if isinstance(value, (float, np.floating)):
        return f"a float ({float(value):g})"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({text!r})"
    if isinstance(value, np.ndarray):
        return f"an array of {value.size} {value.dtype} values"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} values"
    return f"a {type(value).__name__}"


def _integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class Int:
    low: int
    high: int
    per_layer: bool = False   # may be an array, one value per layer (read as a tuple)

    def check(self, key: str, value: Any):
        if self.per_layer and isinstance(value, (np.ndarray, list, tuple)):
            items = list(value)
            if not items or not all(_integer(v) and self.low <= v <= self.high for v in items):
                raise MetadataError(f"GGUF metadata {key} is {_shown(value)}; expected one integer "
                                    f"in {self.low}..{self.high} per layer")
            return tuple(int(v) for v in items)
        if not _integer(value) or not self.low <= value <= self.high:
            raise MetadataError(f"GGUF metadata {key} is {_shown(value)}; expected an integer in "
                                f"{self.low}..{self.high}")
        return int(value)


@dataclass(frozen=True)
class TokenId:
    """Any integer: the reader compares it with the vocabulary (llama.cpp ignores one outside)."""

    def check(self, key: str, value: Any) -> int:
        if not _integer(value):
            raise MetadataError(f"GGUF metadata {key} is {_shown(value)}; expected an integer "
                                f"(a token id)")
        return int(value)


@dataclass(frozen=True)
class Float:
    low: float
    high: float
    low_included: bool = True

    def check(self, key: str, value: Any) -> float:
        number = float(value) if _integer(value) or isinstance(value, (float, np.floating)) else None
        if number is None or not (self.low <= number if self.low_included else self.low < number) \
                or not number <= self.high:
            low = f"[{self.low:g}" if self.low_included else f"({self.low:g}"
            raise MetadataError(f"GGUF metadata {key} is {_shown(value)}; expected a number in "
                                f"{low}, {self.high:g}]")
        return number


@dataclass(frozen=True)
class Str:
    def check(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise MetadataError(f"GGUF metadata {key} is {_shown(value)}; expected a string")
        return value


@dataclass(frozen=True)
class Bool:
    def check(self, key: str, value: Any) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise MetadataError(f"GGUF metadata {key} is {_shown(value)}; expected a bool")
        return bool(value)


@dataclass(frozen=True)
class StrList:
    non_empty: bool = False

    def check(self, key: str, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value) \
                or (self.non_empty and not value):
            expected = "a non-empty list of strings" if self.non_empty else "a list of strings"
            raise MetadataError(f"GGUF metadata {key} is {_shown(value)}; expected {expected}")
        return value


@dataclass(frozen=True)
class NumberArray:
    kinds: str            # numpy dtype kinds accepted: "iu" integers, "iuf" numbers

    def check(self, key: str, value: Any) -> np.ndarray:
        array = None
        if isinstance(value, (np.ndarray, list, tuple)):
            try:
                array = np.asarray(value)
            except ValueError:  # ragged nested lists
                array = None
        if array is None or array.ndim != 1 or (array.size and array.dtype.kind not in self.kinds):
            what = "integers" if self.kinds == "iu" else "numbers"
            raise MetadataError(f"GGUF metadata {key} is {_shown(value)}; expected a list of {what}")
        return array


@dataclass(frozen=True)
class LayerPattern:
    """Gemma's sliding-window layer pattern: a period (every n-th layer is global) or one flag
    per layer (True: the layer uses the window)."""

    def check(self, key: str, value: Any):
        if isinstance(value, np.ndarray) and value.ndim == 1 and value.size and value.dtype.kind == "b":
            return tuple(bool(v) for v in value)
        if isinstance(value, list) and value and all(isinstance(v, (bool, np.bool_)) for v in value):
            return tuple(bool(v) for v in value)
        return Int(0, MAX_LAYERS).check(key, value)


WIDTH = Int(1, MAX_WIDTH)
TOKEN_ID = TokenId()

# `<architecture>.<name>` keys, by name
ARCH_RULES: dict[str, Any] = {
    "context_length": Int(1, MAX_COUNT),
    "embedding_length": WIDTH,
    "block_count": Int(1, MAX_LAYERS),
    "feed_forward_length": Int(1, MAX_WIDTH, per_layer=True),
    "attention.head_count": Int(1, MAX_WIDTH, per_layer=True),
    "attention.head_count_kv": Int(1, MAX_WIDTH, per_layer=True),
    "attention.key_length": WIDTH,
    "attention.value_length": WIDTH,
    "attention.layer_norm_rms_epsilon": Float(0.0, 1.0),
    "attention.sliding_window": Int(0, MAX_COUNT),
    "attention.sliding_window_pattern": LayerPattern(),
    "rope.dimension_count": Int(2, MAX_WIDTH),
    "rope.freq_base": Float(0.0, FLOAT32_MAX, low_included=False),
    "rope.freq_base_swa": Float(0.0, FLOAT32_MAX, low_included=False),
    "rope.scaling.type": Str(),
    "rope.scaling.factor": Float(0.0, FLOAT32_MAX),
    "rope.scaling.original_context_length": Int(1, MAX_COUNT),
    "rope.scaling.yarn_ext_factor": Float(0.0, FLOAT32_MAX),
    "rope.scaling.yarn_attn_factor": Float(0.0, FLOAT32_MAX, low_included=False),
    "rope.scaling.attn_factor": Float(0.0, FLOAT32_MAX, low_included=False),   # phi3's LongRoPE
    "rope.scaling.yarn_beta_fast": Float(0.0, FLOAT32_MAX, low_included=False),
    "rope.scaling.yarn_beta_slow": Float(0.0, FLOAT32_MAX, low_included=False),
    "final_logit_softcapping": Float(0.0, FLOAT32_MAX),
    "attn_logit_softcapping": Float(0.0, FLOAT32_MAX),
    "vocab_size": WIDTH,
    "expert_count": Int(0, MAX_WIDTH),
    "expert_used_count": Int(0, MAX_WIDTH),
    "expert_feed_forward_length": Int(0, MAX_WIDTH),
    "pooling_type": Int(0, 4),          # llama.cpp's enum llama_pooling_type: none, mean, cls, last, rank
}

RULES: dict[str, Any] = {
    "general.architecture": Str(),
    "general.name": Str(),
    "tokenizer.ggml.model": Str(),
    "tokenizer.ggml.pre": Str(),
    "tokenizer.ggml.tokens": StrList(non_empty=True),
    "tokenizer.ggml.merges": StrList(),
    "tokenizer.ggml.scores": NumberArray("iuf"),
    "tokenizer.ggml.token_type": NumberArray("iu"),
    "tokenizer.ggml.add_bos_token": Bool(),
    "tokenizer.ggml.add_eos_token": Bool(),
    "tokenizer.ggml.add_space_prefix": Bool(),
    "tokenizer.ggml.add_sep_token": Bool(),
    "tokenizer.ggml.normalizer.lowercase": Bool(),       # WordPiece (bert) vocabularies
    "tokenizer.ggml.normalizer.strip_accents": Bool(),
    "tokenizer.chat_template": Str(),
    **{f"tokenizer.ggml.{role}_token_id": TOKEN_ID
       for role in ("bos", "eos", "eot", "eom", "unknown", "seperator", "padding", "mask",
                    "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep",
                    "prefix", "suffix", "middle")},
}


def rule_for(key: str):
    rule = RULES.get(key)
    parts = key.split(".")
    for start in range(1, len(parts)):  # `<architecture>.<name>`, the architecture may hold dots
        if rule is None:
            rule = ARCH_RULES.get(".".join(parts[start:]))
    if rule is None:
        # a programming error, not a bad file: every key the code reads has a rule
        raise LookupError(f"no metadata rule for {key!r}; add one to formats/metadata.py")
    return rule


def read(kv: Mapping[str, Any], key: str, default: Any = REQUIRED) -> Any:
    """The value of `key`, checked against its rule; `default` (returned unchecked) when the key
    is absent, or MetadataError when there is no default."""
    rule = rule_for(key)
    value = kv.get(key, _ABSENT)
    if value is _ABSENT:
        if default is REQUIRED:
            raise MetadataError(f"GGUF metadata lacks {key}")
        return default
    return rule.check(key, value)
