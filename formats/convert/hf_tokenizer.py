"""The checkpoint's tokenizer as GGUF vocabulary metadata, the way llama.cpp's converter writes it.

Two sources, tried in llama.cpp's order for the llama, qwen2 and gemma3 families:

- `tokenizer.model` (SentencePiece), read with the `sentencepiece` library ->
  tokenizer.ggml.model "llama": every piece with its score and type (normal, unknown, control,
  unused, byte), then the added tokens of `added_tokens.json` and of tokenizer_config.json's
  `added_tokens_decoder` (control when marked special, else user-defined);
- `tokenizer.json` holding a byte-level BPE model -> tokenizer.ggml.model "gpt2": the vocabulary,
  merges and token types (added tokens: control when special or special-looking, else
  user-defined; ids the tokenizer does not use up to config.json's vocab_size: "[PAD<id>]",
  unused), and tokenizer.ggml.pre, the pre-tokenizer llama.cpp applies before merging.

Choosing tokenizer.ggml.pre: llama.cpp encodes a fixed test string with the HF tokenizer, hashes
the token ids and looks the hash up in a table of known models. That needs the HF tokenizer at
convert time and fails for any tokenizer not in its table (every freshly trained one). What the
hash stands for is the pre-tokenizer tokenizer.json declares, so we read that declaration: its
Split regexes, Digits and ByteLevel steps, reduced to a signature and looked up in
`PRE_TOKENIZER_SIGNATURES`. For the released models of these families this gives the name
llama.cpp's hash gives (Llama 3 -> llama-bpe, Qwen2/2.5 -> qwen2, SmolLM/SmolLM2 -> smollm,
GPT-2 -> gpt-2); an unknown signature is refused rather than guessed.

Special token ids, add_bos/add_eos, merges and the chat template come from gguf-py's
SpecialVocab, as in llama.cpp's converter. Not reproduced: llama.cpp's round trip of
non-normalized added tokens through the HF tokenizer, and the tokenizer.json normalizer.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gguf
from gguf import TokenType

from .checkpoint import ConvertError, read_json
from .metadata import MetadataBuilder

__all__ = ["Vocab", "load_vocab", "add_vocab", "PRE_TOKENIZER_SIGNATURES", "pre_tokenizer_name", "TOKENIZER_FILES"]

SPM_FILE = "tokenizer.model"
HF_TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
ADDED_TOKENS_FILE = "added_tokens.json"
# every file the vocabulary may be read from (the converter never writes over one of them)
TOKENIZER_FILES = (SPM_FILE, HF_TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, ADDED_TOKENS_FILE)
_SPM_SPACE = "\u2581"  # SentencePiece's visible space


@dataclass
class Vocab:
    model: str                       # tokenizer.ggml.model: "llama" (SentencePiece) or "gpt2"
    pre: str                         # tokenizer.ggml.pre
    tokens: list[str | bytes]
    token_types: list[int]
    scores: list[float] | None = None
    tokenizer_config: dict[str, Any] = field(default_factory=dict)


# ---- pre-tokenizer identification ------------------------------------------------------------

# The Split regexes of released tokenizer.json files, as HF tokenizers spells them.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# ByteLevel with use_regex=true splits words with GPT-2's own regex before mapping bytes
GPT2_WORDS = ("byte_level_words",)
SINGLE_DIGITS = ("digits", True)

# signature (pre-tokenizer steps, in order) -> tokenizer.ggml.pre
PRE_TOKENIZER_SIGNATURES: dict[tuple, str] = {
    (("split", LLAMA3_SPLIT),): "llama-bpe",
    (("split", QWEN2_SPLIT),): "qwen2",
    (SINGLE_DIGITS, GPT2_WORDS): "smollm",
    (GPT2_WORDS,): "gpt-2",
}


def _split_step(step: dict) -> tuple:
    pattern = step.get("pattern") or {}
    if "Regex" in pattern and step.get("behavior") == "Isolated" and not step.get("invert"):
        return ("split", pattern["Regex"])
    return ("split", json.dumps(step, sort_keys=True))


def _byte_level_step(step: dict) -> tuple | None:
    if step.get("add_prefix_space"):
        return ("byte_level_prefix_space",)
    return GPT2_WORDS if step.get("use_regex", True) else None  # without regex it only maps bytes


_STEP_SIGNATURES: dict[str, Callable[[dict], tuple | None]] = {
    "Split": _split_step,
    "ByteLevel": _byte_level_step,
    "Digits": lambda step: ("digits", bool(step.get("individual_digits"))),
}


def _steps(pre_tokenizer: dict | None) -> list[dict]:
    if not pre_tokenizer:
        return []
    if pre_tokenizer.get("type") == "Sequence":
        return [s for inner in pre_tokenizer.get("pretokenizers", []) for s in _steps(inner)]
    return [pre_tokenizer]


def pre_tokenizer_signature(tokenizer_json: dict) -> tuple:
    signature = []
    for step in _steps(tokenizer_json.get("pre_tokenizer")):
        describe = _STEP_SIGNATURES.get(step.get("type"), lambda s: (s.get("type"),))
        if (item := describe(step)) is not None:
            signature.append(item)
    return tuple(signature)


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """tokenizer.ggml.pre for a byte-level BPE tokenizer.json (see the module docstring)."""
    signature = pre_tokenizer_signature(tokenizer_json)
    try:
        return PRE_TOKENIZER_SIGNATURES[signature]
    except KeyError:
        raise ConvertError(f"{HF_TOKENIZER_FILE}: unrecognised BPE pre-tokenizer {list(signature)}; "
                           f"known: {', '.join(PRE_TOKENIZER_SIGNATURES.values())}") from None


# ---- vocabularies ------------------------------------------------------------------------------

def looks_special(text: str) -> bool:
    """Added tokens some checkpoints forget to mark special, though they are control tokens."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))  # fullwidth bars
            or (text.startswith("<unused") and text.endswith(">")))


def _added_token_type(text: str, special: bool) -> tuple[str, int]:
    """(text as stored, type) of an added token; user-defined ones are stored pre-normalized."""
    if special or looks_special(text):
        return text, TokenType.CONTROL
    return text.replace(_SPM_SPACE, " "), TokenType.USER_DEFINED


def _is_byte_level(tokenizer_json: dict) -> bool:
    steps = _steps(tokenizer_json.get("pre_tokenizer"))
    decoder = tokenizer_json.get("decoder") or {}
    decoders = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return any(s.get("type") == "ByteLevel" for s in steps + decoders)


def bpe_vocab(directory: Path, n_vocab: int) -> Vocab:
    tokenizer_json = read_json(directory / HF_TOKENIZER_FILE, what="tokenizer")
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE" or not _is_byte_level(tokenizer_json):
        raise ConvertError(f"{directory / HF_TOKENIZER_FILE}: holds a {model.get('type', 'unknown')} model "
                           f"that is not byte-level BPE, and there is no {SPM_FILE} to use instead")
    texts: dict[int, str] = {int(i): t for t, i in model.get("vocab", {}).items()}
    added = {int(tok["id"]): tok for tok in tokenizer_json.get("added_tokens", [])}
    texts.update((i, tok["content"]) for i, tok in added.items())
    if texts and max(texts) >= n_vocab:
        raise ConvertError(f"{HF_TOKENIZER_FILE}: token id {max(texts)} does not fit config.json's "
                           f"vocab_size {n_vocab}")
    tokens: list[str | bytes] = []
    types: list[int] = []
    for i in range(n_vocab):
        if i not in texts:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            text, kind = _added_token_type(texts[i], bool(added[i].get("special")))
            tokens.append(text)
            types.append(kind)
        else:
            tokens.append(texts[i])
            types.append(TokenType.NORMAL)
    return Vocab("gpt2", pre_tokenizer_name(tokenizer_json), tokens, types)


def _spm_piece_type(sp, i: int) -> int:
    for predicate, kind in ((sp.IsUnknown, TokenType.UNKNOWN), (sp.IsControl, TokenType.CONTROL),
                            (sp.IsUnused, TokenType.UNUSED), (sp.IsByte, TokenType.BYTE)):
        if predicate(i):
            return kind
    return TokenType.NORMAL


def spm_vocab(directory: Path, n_vocab: int | None, tokenizer_config: dict) -> Vocab:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(directory / SPM_FILE))
    except (OSError, RuntimeError) as err:
        raise ConvertError(f"{directory / SPM_FILE}: not a SentencePiece model ({err})") from None
    size = n_vocab or sp.vocab_size()
    # ids the model does not define stay unused padding, as in llama.cpp's converter
    tokens: list[str | bytes] = [f"[PAD{i}]".encode() for i in range(size)]
    scores = [-10000.0] * size
    types = [int(TokenType.UNUSED)] * size
    for i in range(min(size, sp.vocab_size())):
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = float(sp.GetScore(i))
        types[i] = _spm_piece_type(sp, i)

    def add(i: int, text: str, kind: int) -> None:
        if 0 <= i < size:
            tokens[i], scores[i], types[i] = text.encode("utf-8"), -1000.0, kind

    added_path = directory / ADDED_TOKENS_FILE
    if added_path.is_file():
        for text, i in read_json(added_path, what="added tokens").items():
            add(int(i), text, TokenType.USER_DEFINED)
    for i, entry in (tokenizer_config.get("added_tokens_decoder") or {}).items():
        add(int(i), *_added_token_type(entry["content"], bool(entry.get("special"))))
    return Vocab("llama", "default", tokens, types, scores)


def load_vocab(directory: Path, n_vocab: int) -> Vocab:
    """The checkpoint's vocabulary padded to `n_vocab` ids (config.json's vocab_size)."""
    config_path = directory / TOKENIZER_CONFIG_FILE
    tokenizer_config = read_json(config_path, what="tokenizer config") if config_path.is_file() else {}
    if (directory / SPM_FILE).is_file():
        vocab = spm_vocab(directory, n_vocab, tokenizer_config)
    elif (directory / HF_TOKENIZER_FILE).is_file():
        vocab = bpe_vocab(directory, n_vocab)
    else:
        raise ConvertError(f"{directory}: no tokenizer: neither {SPM_FILE} nor {HF_TOKENIZER_FILE}")
    vocab.tokenizer_config = tokenizer_config
    return vocab


def add_vocab(meta: MetadataBuilder, vocab: Vocab, directory: Path) -> None:
    """Write the vocabulary, merges, special tokens and chat template keys."""
    meta.add_tokenizer_model(vocab.model)
    meta.add_tokenizer_pre(vocab.pre)
    meta.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        meta.add_token_scores(vocab.scores)
    meta.add_token_types([int(t) for t in vocab.token_types])
    is_bpe = vocab.model == "gpt2"
    special = gguf.SpecialVocab(directory, load_merges=is_bpe, n_vocab=len(vocab.tokens))
    if is_bpe and not special.merges:
        raise ConvertError(f"{directory / HF_TOKENIZER_FILE}: BPE model without merges")
    special.add_to_gguf(meta, quiet=True)
