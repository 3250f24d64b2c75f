"""Pre-tokenizers of byte-level BPE vocabularies: split text into words before merging.

A GGUF vocabulary names its pre-tokenizer in `tokenizer.ggml.pre`. llama.cpp applies a short
list of regular expressions in sequence: each expression splits every piece the previous ones
produced, and the text between two matches stays a piece of its own. The expressions use the
Unicode classes \\p{L}, \\p{N} and \\p{P}, which Python's `re` lacks, so those classes are built
here from `unicodedata` (lazily, once per process, ~0.1 s) and spliced into `re` patterns.

Whitespace is Unicode's White_Space property, as llama.cpp defines it; Python's `\\s` would also
match U+001C..U+001F. Apostrophe contractions are spelled with explicit `[sS]` pairs rather than
`(?i:...)`, because Python's case folding would let 'ſ' (long s) and 'K' (Kelvin) match too.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

# Unicode White_Space (llama.cpp's `unicode_set_whitespace`), as an `re` class body.
_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

# Planes 4..13 hold no assigned characters and plane 14 only tags and variation selectors, so
# scanning these code point ranges finds every letter, number and punctuation mark.
_SCANNED_RANGES = ((0x0, 0x40000), (0xE0000, 0xE1000))


@functools.cache
def _scanned_text() -> tuple[str, np.ndarray]:
    """All code points of the scanned ranges as one string, and their values (uint32)."""
    points = np.concatenate([np.arange(a, b, dtype=np.uint32) for a, b in _SCANNED_RANGES])
    text = points.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")
    return text, points


@functools.cache
def _mask(predicate) -> np.ndarray:
    text, _ = _scanned_text()
    return np.frombuffer(bytes(map(predicate, text)), dtype=np.uint8).astype(bool)


def _is_punctuation(ch: str) -> bool:
    return unicodedata.category(ch)[0] == "P"


def _is_mark(ch: str) -> bool:
    return unicodedata.category(ch)[0] == "M"


def _class_body(selected: np.ndarray) -> str:
    """`re` character-class body (no brackets) covering exactly the given sorted code points."""
    if selected.size == 0:
        raise ValueError("empty Unicode class")
    breaks = np.nonzero(np.diff(selected.astype(np.int64)) != 1)[0]
    starts = np.concatenate([selected[:1], selected[breaks + 1]])
    ends = np.concatenate([selected[breaks], selected[-1:]])
    parts = []
    for a, b in zip(starts.tolist(), ends.tolist()):
        parts.append(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}")
    return "".join(parts)


@functools.cache
def unicode_class(name: str) -> str:
    """Class body for a general category: 'L' (letters), 'N' (numbers), 'P' (punctuation),
    'M' (marks)."""
    _, points = _scanned_text()
    if name == "L":
        selected = _mask(str.isalpha)            # isalpha == categories Lu Ll Lt Lm Lo
    elif name == "N":
        # isnumeric also holds for CJK numeral letters (category Lo); removing letters leaves
        # exactly the N categories (Nd Nl No).
        selected = _mask(str.isnumeric) & ~_mask(str.isalpha)
    elif name == "P":
        selected = _mask(_is_punctuation)
    elif name == "M":
        selected = _mask(_is_mark)
    else:
        raise ValueError(f"unknown Unicode class {name!r}")
    return _class_body(points[selected])


def _expand(template: str) -> str:
    """Replace {L} {N} {P} {M} {S} in a pattern template by class bodies ({S}: White_Space)."""
    out = template.replace("{S}", _WHITE_SPACE)
    for name in ("L", "N", "P", "M"):
        key = "{" + name + "}"
        if key in out:
            out = out.replace(key, unicode_class(name))
    return out


# Pattern templates, one per splitting rule llama.cpp uses.
_CONTRACTIONS_ANY_CASE = "'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]"
GPT2_WORDS = (r"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+"
              r"|[{S}]+(?![^{S}])|[{S}]+")
LLAMA3_WORDS = (_CONTRACTIONS_ANY_CASE + r"|[^\r\n{L}{N}]?[{L}]+|[{N}]{1,3}"
                r"| ?[^{S}{L}{N}]+[\r\n]*|[{S}]*[\r\n]+|[{S}]+(?![^{S}])|[{S}]+")
QWEN2_WORDS = (_CONTRACTIONS_ANY_CASE + r"|[^\r\n{L}{N}]?[{L}]+|[{N}]"
               r"| ?[^{S}{L}{N}]+[\r\n]*|[{S}]*[\r\n]+|[{S}]+(?![^{S}])|[{S}]+")
# Qwen 3.5: Qwen2's words with combining marks as part of letters
QWEN35_WORDS = (_CONTRACTIONS_ANY_CASE + r"|[^\r\n{L}{N}]?[{L}{M}]+|[{N}]"
                r"| ?[^{S}{L}{M}{N}]+[\r\n]*|[{S}]*[\r\n]+|[{S}]+(?![^{S}])|[{S}]+")
# DeepSeek LLM / Coder: line breaks alone, then letters, punctuation, CJK runs and digits each
# taking an optional leading space. The LLM's letters are an explicit list of ranges (its
# tokenizer.json's); `$` there is ECMAScript's, the end of the piece, so \Z here.
LINE_BREAK = r"[\r\n]"
DEEPSEEK_LLM_LETTERS = "[{S}]?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+"
DEEPSEEK_LLM_SYMBOLS = "[{S}]?[!-/:-~！-／：-～‘-‟　-。]+"
TRAILING_SPACE = r"[{S}]+\Z"
CJK_RUNS = "[一-龥ࠀ-一가-퟿]+"
SPACED_LETTERS = r"[{S}]?[{L}]+"
SPACED_PUNCTUATION = r"[{S}]?[{P}]+"
SINGLE_NUMBER = r"[{N}]"
NUMBER_RUNS = r"[{N}]+"
PUNCTUATION_RUNS = r"[{P}$+<=>^~|]+"
FALCON_PUNCTUATION_RUNS = r"[{P}$+<=>^~|`]+"
THREE_ASCII_DIGITS = r"[0-9][0-9][0-9]"


@dataclass(frozen=True)
class PreTokenizer:
    """How one `tokenizer.ggml.pre` value splits text, and the vocabulary flags it implies."""
    patterns: tuple[str, ...]     # templates, applied in sequence
    clean_spaces: bool = True     # detokenizer removes " ?" style spaces (clean_up_tokenization)
    ignore_merges: bool = False   # a word found whole in the vocabulary skips BPE merging
    add_bos: bool = False         # default for tokenizer.ggml.add_bos_token

    @functools.cached_property
    def compiled(self) -> tuple[re.Pattern, ...]:
        return tuple(re.compile(_expand(t)) for t in self.patterns)

    def split(self, text: str) -> list[str]:
        """Words of `text`, in order; their concatenation is `text`."""
        pieces = [text]
        for pattern in self.compiled:
            out: list[str] = []
            for piece in pieces:
                pos = 0
                for m in pattern.finditer(piece):
                    start, end = m.span()
                    if start > pos:
                        out.append(piece[pos:start])
                    if end > start:
                        out.append(piece[start:end])
                    pos = end
                if pos < len(piece):
                    out.append(piece[pos:])
            pieces = out
        return pieces


_DEFAULT = PreTokenizer((PUNCTUATION_RUNS, GPT2_WORDS, NUMBER_RUNS, THREE_ASCII_DIGITS))
_GPT2 = PreTokenizer((GPT2_WORDS,))
_GPT2_KEEP_SPACES = PreTokenizer((GPT2_WORDS,), clean_spaces=False)
_SMOLLM = PreTokenizer((SINGLE_NUMBER, GPT2_WORDS))
_SMOLLM_KEEP_SPACES = PreTokenizer((SINGLE_NUMBER, GPT2_WORDS), clean_spaces=False)
_LLAMA3 = PreTokenizer((LLAMA3_WORDS,), ignore_merges=True, add_bos=True)
_LLAMA3_PLAIN = PreTokenizer((LLAMA3_WORDS,))
_QWEN2 = PreTokenizer((QWEN2_WORDS,), clean_spaces=False)
_QWEN2_CLEAN = PreTokenizer((QWEN2_WORDS,))
_QWEN35 = PreTokenizer((QWEN35_WORDS,), clean_spaces=False)
_FALCON = PreTokenizer((FALCON_PUNCTUATION_RUNS, GPT2_WORDS, THREE_ASCII_DIGITS))
_DEEPSEEK_LLM = PreTokenizer((LINE_BREAK, DEEPSEEK_LLM_LETTERS, DEEPSEEK_LLM_SYMBOLS, TRAILING_SPACE, CJK_RUNS,
                              NUMBER_RUNS), clean_spaces=False)
_DEEPSEEK_CODER = PreTokenizer((LINE_BREAK, SPACED_LETTERS, SPACED_PUNCTUATION, CJK_RUNS, SINGLE_NUMBER),
                               clean_spaces=False)

# `tokenizer.ggml.pre` -> pre-tokenizer; names grouped as llama.cpp groups them.
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": _DEFAULT,
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                     "midm-2.0", "lfm2", "jina-v5-nano"), _LLAMA3),
    **dict.fromkeys(("dbrx", "smaug-bpe"), _LLAMA3_PLAIN),
    **dict.fromkeys(("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es",
                     "jina-v2-de", "a.x-4.0", "mellum", "modern-bert", "mpt", "olmo", "jais",
                     "exaone4"), _GPT2),
    **dict.fromkeys(("trillion", "granite-docling"), _GPT2_KEEP_SPACES),
    **dict.fromkeys(("starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2"),
                    _SMOLLM),
    **dict.fromkeys(("smollm", "command-r"), _SMOLLM_KEEP_SPACES),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open"),
                    _QWEN2),
    **dict.fromkeys(("stablelm2", "megrez"), _QWEN2_CLEAN),
    "qwen35": _QWEN35,
    "falcon": _FALCON,
    "deepseek-llm": _DEEPSEEK_LLM,
    "deepseek-coder": _DEEPSEEK_CODER,
}


# Gemma 4's character-level BPE splits only into runs of newlines and runs of the rest
GEMMA4_LINES = PreTokenizer((r"[^\n]+|[\n]+",))


def pre_tokenizer(name: str | None) -> PreTokenizer:
    """The pre-tokenizer for a `tokenizer.ggml.pre` value (missing or empty: 'default')."""
    if not name:
        return _DEFAULT
    try:
        return PRE_TOKENIZERS[name]
    except KeyError:
        raise ValueError(f"unsupported BPE pre-tokenizer tokenizer.ggml.pre={name!r}; "
                         f"supported: {', '.join(sorted(PRE_TOKENIZERS))}") from None
