"""Token attributes and special token ids of a GGUF vocabulary, decided as llama.cpp decides them.

GGUF stores a type per token (`tokenizer.ggml.token_type`) and a few ids (BOS, EOS, ...).
llama.cpp completes that with text heuristics: tokens spelled like an end-of-turn marker
("<|im_end|>", "<end_of_turn>", ...) end generation and are forced to CONTROL type even where
the converter left them NORMAL; FIM tokens found by name end generation too. The result is the
attribute array (which text the tokenizer may match as a special token, how a token renders)
and the end-of-generation set a sampler stops on.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from .metadata import read


class TokenAttr(enum.IntFlag):
    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    NORMALIZED = 1 << 6
    LSTRIP = 1 << 7       # matched as a special token, it swallows the whitespace before it
    RSTRIP = 1 << 8       # ... or after it


# GGUF token_type value (gguf.TokenType) -> attribute; anything else is UNDEFINED.
_ATTR_OF_TYPE = np.zeros(256, dtype=np.uint16)
for _type, _attr in {1: TokenAttr.NORMAL, 2: TokenAttr.UNKNOWN, 3: TokenAttr.CONTROL,
                     4: TokenAttr.USER_DEFINED, 5: TokenAttr.UNUSED, 6: TokenAttr.BYTE}.items():
    _ATTR_OF_TYPE[_type] = _attr


def attrs_from_types(token_type: np.ndarray | None, n_vocab: int) -> np.ndarray:
    """uint16 attribute per token from `tokenizer.ggml.token_type` (a 1-D integer array, or None)."""
    if token_type is None:
        return np.full(n_vocab, TokenAttr.NORMAL, dtype=np.uint16)
    types = token_type
    if types.size < n_vocab:
        raise ValueError(f"tokenizer.ggml.token_type has {types.size} entries for "
                         f"{n_vocab} tokens")
    types = types[:n_vocab].astype(np.int64)
    known = (types >= 0) & (types < 256)
    return np.where(known, _ATTR_OF_TYPE[np.clip(types, 0, 255)], 0).astype(np.uint16)


# Token texts that llama.cpp recognises by name when the metadata does not give the id.
EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
             "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
             "<end_of_utterance>")
EOM_TEXTS = ("<|eom_id|>",)
FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>",
                "▁<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>",
                "▁<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
                "▁<MID>", "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
# Texts of tokens that end generation whatever the metadata says.
EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
))
# gpt-oss markers that must always render, so llama.cpp retypes them USER_DEFINED.
ALWAYS_RENDERED_TEXTS = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")

# role -> metadata keys (later keys override earlier ones, as the deprecated aliases do)
_ID_KEYS = {
    "bos": ("tokenizer.ggml.bos_token_id",),
    "eos": ("tokenizer.ggml.eos_token_id",),
    "eot": ("tokenizer.ggml.eot_token_id",),
    "eom": ("tokenizer.ggml.eom_token_id",),
    "unk": ("tokenizer.ggml.unknown_token_id",),
    "sep": ("tokenizer.ggml.seperator_token_id",),
    "pad": ("tokenizer.ggml.padding_token_id",),
    "mask": ("tokenizer.ggml.mask_token_id",),
    "fim_pre": ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"),
    "fim_suf": ("tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"),
    "fim_mid": ("tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id"),
    "fim_pad": ("tokenizer.ggml.fim_pad_token_id",),
    "fim_rep": ("tokenizer.ggml.fim_rep_token_id",),
    "fim_sep": ("tokenizer.ggml.fim_sep_token_id",),
}


@dataclass(frozen=True)
class SpecialIds:
    ids: dict[str, int | None]   # role ("bos", "eos", "eot", "fim_pre", ...) -> id or None
    eog: frozenset[int]           # every token that ends generation


def _first_present(token_to_id: dict[str, int], texts) -> int | None:
    # llama.cpp takes the first hit in hash-map order; the order of the name list is the
    # deterministic stand-in (only matters when a vocabulary holds two of the names).
    for t in texts:
        tid = token_to_id.get(t)
        if tid is not None:
            return tid
    return None


def resolve_special_ids(kv: dict, tokens: list[str], token_to_id: dict[str, int],
                        attrs: np.ndarray, defaults: dict[str, int | None]) -> SpecialIds:
    """Special ids from metadata, model defaults and name heuristics; updates `attrs` in place
    where llama.cpp retypes a token (end-of-generation names become CONTROL, and so on)."""
    n = len(tokens)
    ids: dict[str, int | None] = {}
    for role, keys in _ID_KEYS.items():
        tid = defaults.get(role)
        if tid is not None and not 0 <= tid < n:
            tid = None
        for key in keys:
            # like llama.cpp, an id outside the vocabulary leaves the default in place
            value = read(kv, key, None)
            if value is not None and 0 <= value < n:
                tid = value
        ids[role] = tid

    def force_control(tid: int) -> None:
        attrs[tid] |= TokenAttr.CONTROL

    if ids["eot"] is None:
        ids["eot"] = _first_present(token_to_id, EOT_TEXTS)
        if ids["eot"] is not None:
            force_control(ids["eot"])
    if ids["eom"] is None:
        ids["eom"] = _first_present(token_to_id, EOM_TEXTS)
        if ids["eom"] is not None:
            force_control(ids["eom"])
    for role, texts in FIM_TEXTS.items():
        if ids[role] is None:
            ids[role] = _first_present(token_to_id, texts)
            if ids[role] is not None:
                force_control(ids[role])

    eog = {ids[r] for r in ("fim_pad", "fim_rep", "fim_sep") if ids[r] is not None}
    for text in EOG_TEXTS:
        tid = token_to_id.get(text)
        if tid is not None:
            eog.add(tid)
            force_control(tid)
    for text in ALWAYS_RENDERED_TEXTS:
        tid = token_to_id.get(text)
        if tid is not None:
            attrs[tid] = TokenAttr.USER_DEFINED
    eog.update(ids[r] for r in ("eos", "eot", "eom") if ids[r] is not None)
    _drop_false_end_markers(tokens, attrs, eog)
    _strip_rules(kv, token_to_id, attrs)
    return SpecialIds(ids=ids, eog=frozenset(eog))


def _strip_rules(kv: dict, token_to_id: dict[str, int], attrs: np.ndarray) -> None:
    """llama.cpp's whitespace attributes, which no GGUF stores: it sets them from the model's
    name (general.name, any case), its pre-tokenizer and its architecture.

    Phi-3 (a name containing "phi-3" or "phi3"): every special token (control, user-defined,
    unknown) and "</s>" drop the whitespace after them, except "<unk>", "<s>" and
    "<|endoftext|>"; so "<|user|>\nHi" tokenizes as "<|user|>" + "Hi". Jina v2 (pre-tokenizer
    jina-v2-de/es/code), nomic-bert-moe and jina-bert-v3: "<mask>" drops the whitespace before
    it; modern-bert (by name): "[MASK]" does."""
    name = str(read(kv, "general.name", "") or "").lower()
    pre = str(read(kv, "tokenizer.ggml.pre", "") or "")
    arch = str(read(kv, "general.architecture", "") or "")

    def set_attr(text: str, attr: TokenAttr, on: bool) -> None:
        tid = token_to_id.get(text)
        if tid is not None:
            attrs[tid] = (int(attrs[tid]) | int(attr)) if on else (int(attrs[tid]) & ~int(attr))

    if any(p in pre for p in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
            any(a in arch for a in ("nomic-bert-moe", "jina-bert-v3")):
        set_attr("<mask>", TokenAttr.LSTRIP, True)
    elif "phi-3" in name or "phi3" in name:
        special = (attrs & (TokenAttr.CONTROL | TokenAttr.USER_DEFINED | TokenAttr.UNKNOWN)) != 0
        attrs[special] |= int(TokenAttr.RSTRIP)
        set_attr("</s>", TokenAttr.RSTRIP, True)
        for text in ("<unk>", "<s>", "<|endoftext|>"):
            set_attr(text, TokenAttr.RSTRIP, False)
    elif "modern-bert" in name:
        set_attr("[MASK]", TokenAttr.LSTRIP, True)


def _drop_false_end_markers(tokens: list[str], attrs: np.ndarray, eog: set[int]) -> None:
    """Vocabularies where a usual end marker is an ordinary token (llama.cpp's exceptions)."""
    by_text = {tokens[t]: t for t in eog}
    # o200k_harmony / solar-open: "<|end|>" closes a message, not the generation.
    has_call = "<|call|>" in by_text or "<|calls|>" in by_text
    if "<|end|>" in by_text and has_call and ("<|return|>" in by_text or "<|flush|>" in by_text):
        tid = by_text["<|end|>"]
        eog.discard(tid)
        attrs[tid] = TokenAttr.USER_DEFINED
    # gemma4 / plamo2: "</s>" is a normal token.
    if "</s>" in by_text and ("<|tool_response>" in by_text or "<|plamo:eos|>" in by_text):
        tid = by_text["</s>"]
        eog.discard(tid)
        attrs[tid] = TokenAttr.NORMAL
