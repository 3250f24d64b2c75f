"""Regenerate tests/data/tokenizer_reference_<model>.json from llama.cpp (run by hand).

Needs llama-cpp-python (not a lanternlm dependency) and the catalog models in the cache
(`lantern pull <name>` or the test fixtures fetch them):

    python tests/data/make_tokenizer_fixtures.py [--cache ~/.cache/lanternlm]

For each model it records, from llama.cpp's vocabulary alone (vocab_only=True): the special
ids, the end-of-generation set, token ids of every text below in the four add_special x
parse_special modes, llama_detokenize of those ids, and token_to_piece of a sample of ids.

Behaviour none of the catalog models exercises is covered by variants: a catalog model's
metadata in a tensor-less GGUF with a few keys replaced or removed -- SmolLM2's vocabulary
under the gpt-2, llama-bpe, default and starcoder pre-tokenizers (add_bos_token removed, so
llama.cpp's default for the pre-tokenizer applies), and Gemma's and SmolLM2's with
add_space_prefix on.
Each fixture records its variant ({"of", "set", "drop"}); tests rebuild the same metadata.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import random
import tempfile
from pathlib import Path

import gguf
import llama_cpp

MODELS = {   # fixture name -> catalog name (file <cache>/<catalog name>.gguf)
    "smollm2": "smollm2-135m-instruct",
    "gemma3": "gemma3-270m",
    "qwen2": "qwen2.5-coder-0.5b-instruct",
}
# fixture name -> a vocabulary file in tests/data (made by make_bert_vocab.py)
LOCAL = {"bert": "bert_vocab.gguf", "gemma4": "gemma4_vocab.gguf"}

# fixture name -> (source fixture, keys to set, keys to drop[, token texts to rename])
VARIANTS = {
    **{name: ("smollm2", {"tokenizer.ggml.pre": pre}, ["tokenizer.ggml.add_bos_token"])
       for name, pre in (("bpe_gpt2", "gpt-2"), ("bpe_llama3", "llama-bpe"),
                         ("bpe_default", "default"), ("bpe_starcoder", "starcoder"),
                         ("bpe_deepseek_llm", "deepseek-llm"), ("bpe_deepseek_coder", "deepseek-coder"),
                         ("bpe_falcon", "falcon"), ("bpe_qwen35", "qwen35"))},
    "spm_space_prefix": ("gemma3", {"tokenizer.ggml.add_space_prefix": True}, []),
    "bpe_space_prefix": ("smollm2", {"tokenizer.ggml.add_space_prefix": True}, []),
    # llama.cpp strips the whitespace after special tokens of models named Phi-3 (its
    # vocabulary must hold <unk>, <s>, </s> and <|endoftext|>: Gemma's gets the last by a rename)
    "bpe_phi3_name": ("qwen2", {"general.name": "Phi-3 Mini 4k Instruct"}, []),
    "spm_phi3_name": ("gemma3", {"general.name": "phi3-mini"}, [], {"<unused0>": "<|endoftext|>"}),
    # and the whitespace before <mask> of jina-v2 vocabularies (by pre-tokenizer)
    "spm_jina_mask": ("gemma3", {"tokenizer.ggml.pre": "jina-v2-code"}, []),
}

# The 24 texts of the shared SmolLM2 reference (tokenize cases), then texts of our own.
TEXTS = [
    "Hello world", " Hello world", "hello  world\n\n",
    "The quick brown fox jumps over the lazy dog.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n-1) + fibonacci(n-2)\n",
    "12345678901234567890", "3.14159 is pi; 2.71828 is e.",
    "   leading and trailing spaces   ", "tabs\tand\ttabs",
    "Ünïcödé àccents — and “quotes”", "日本語のテキストと中文文本", "emoji 🤖🚀✨ test",
    "I'm sure you're right, it's what we'd've done.",
    "URLs like https://example.com/a?b=c&d=e#f", "<|im_start|>user\nHi<|im_end|>",
    "<start_of_turn>user\nHi<end_of_turn>", "a" * 40, "\n\n\n", " ",
    "MixedCASE camelCase snake_case SCREAMING_CASE kebab-case",
    "x = [1, 2, 3]; y = {'k': None}", "Ελληνικά και Русский текст",
    "naïve café résumé coöperate", "!!!???...,,,;;;",
    # ours
    "", "\n", "x", "   ", "  leading double space", "trailing double  ",
    "👨‍👩‍👧‍👦 family, 🇯🇵 flag, 🏳️‍🌈 rainbow, 🫠 melting",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀 hieroglyph",
    "한국어 텍스트와 العربية والعبرية עברית", "हिन्दी में लिखा गया पाठ",
    "\tdef f(x):\r\n\t\treturn x  # comment\r\n", "a    b     c\n\n\n\n  \n\t \t",
    "line1\nline2\r\nline3\rline4\r\r\n",
    "I'LL DON'T WE'RE they've you'd it'S ' quoted ' word 's",
    "Hello , world . Really ? Yes ! ok ,",
    "1234567 123 12 1 3.14e-10 0x1F ١٢٣ ５６７",
    "ſ Kelvin K Å ﬁ ²³ Ⅻ ½ ⅷ",
    "\u00a0nbsp\u3000ideographic\u2009thin\u200bzwsp\u0085nel\x0bvt\x1cfs",
    "unassigned \u0378 private \ue000 brain \U0001f9e0",
    "café cafe\u0301 Å A\u030a",
    "Ω≈ç√∫˜µ≤≥÷ «guillemets» ‘single’ … ‰",
    "ＡＢＣ full-width ｱｲｳ half-width",
    "Supercalifragilisticexpialidocious-antidisestablishmentarianism",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n",
    "<bos>text</s><eos><pad><unused0><table>x</table>[multimodal]<start_of_image>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|endoftext|><tool_call>x</tool_call>",
    "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|><reponame>r<file_sep>",
    "<<start_of_turn>> <start_of_turn <|im_end|<|im_end|>>",
    "<|im_start|>user\n  What is 2+2?<|im_end|>\n\n<|im_start|>assistant\n",
    "<end_of_turn>\n<start_of_turn>model\n hi \t<end_of_turn>  \r\n",
    "a <mask> b  <mask>\tc\n<mask>",
    "</s>  after <s>  x <unk> \ny<|endoftext|> z <|endoftext|>",
    "The Transformer replaced recurrence with attention. Each layer mixes tokens through "
    "self-attention, then applies a position-wise feed-forward network; residual connections "
    "and layer normalisation keep training stable.\n\n```python\nfor i in range(10):\n"
    "    print(f\"{i:03d}\")  # zero-padded\n```\n\nKV caches trade memory for speed: "
    "2 * n_layers * n_ctx * d_model values — at fp16, 1.5 GiB for a 7B model at 4k context.",
]


def random_texts(n: int, seed: int = 1234) -> list[str]:
    """Short strings mixing scripts, digits, punctuation, whitespace runs and emoji."""
    rng = random.Random(seed)
    alphabet = (list("abcXYZ019'.,!?-_/<>|@#") + [" ", " ", "  ", "\n", "\t", "\r\n", "   "]
                + list("éüßøçñ") + list("日本中文한국") + list("Жжλπ") + ["\u0301", "\u200d"]
                + ["🤖", "🚀", "👍🏽", "🇫🇷", "∑", "€", "½", "²", "٣", "\u00a0", "\u3000"]
                + ["'s", "'LL", "<|im_end|>", "<end_of_turn>", "</s>"])
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(n)]


def write_vocab_variant(source: Path, set_keys: dict, drop_keys: list, out: Path,
                        rename: dict | None = None) -> None:
    """`source`'s metadata without tensors, with `set_keys` replaced, `drop_keys` removed and
    the token texts in `rename` renamed."""
    reader = gguf.GGUFReader(str(source))
    writer = gguf.GGUFWriter(str(out), arch=reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop_keys:
            continue
        value = set_keys.get(key, field.contents())
        if key == "tokenizer.ggml.tokens" and rename:
            value = [rename.get(t, t) for t in value]
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type=sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def detokenize(vocab, ids: list[int], remove_special: bool, unparse_special: bool) -> bytes:
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    size = 64 + 16 * len(ids)
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size,
                                       remove_special, unparse_special)
        if n >= 0:
            return buf.raw[:n]
        size = -n + 1


def piece(vocab, token: int, special: bool) -> bytes:
    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, special)
        if n >= 0:
            return buf.raw[:n]
        size = -n


def fixture(path: Path, catalog_name: str, with_pieces: bool = True) -> dict:
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    vocab = llm._model.vocab
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    cases, seen = [], set()
    for text in TEXTS + random_texts(40):
        data = text.encode("utf-8")
        case = {"text": text}
        # variants (a catalog vocabulary again) keep only the two modes of the shared reference
        modes = ((True, True), (True, False), (False, True), (False, False)) if with_pieces \
            else ((True, True), (False, False))
        for add, special in modes:
            key = f"ids_{'add_bos' if add else 'no_bos'}_{'special' if special else 'plain'}"
            case[key] = llm.tokenize(data, add_bos=add, special=special)
            seen.update(case[key])
        case["detok_plain_hex"] = detokenize(vocab, case["ids_no_bos_plain"], False, False).hex()
        case["detok_special_hex"] = detokenize(vocab, case["ids_add_bos_special"],
                                               False, True).hex()
        case["detok_skip_special_hex"] = detokenize(vocab, case["ids_add_bos_special"],
                                                    True, False).hex()
        cases.append(case)
    rng = random.Random(99)
    sample = sorted(seen | set(range(min(n_vocab, 120))) | set(rng.sample(range(n_vocab), 200))
                    | set(range(n_vocab - 20, n_vocab))) if with_pieces else []
    pieces = {str(t): [piece(vocab, t, True).hex(), piece(vocab, t, False).hex()]
              for t in sample}
    eog = [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    return {
        "generator": f"tests/data/make_tokenizer_fixtures.py, llama-cpp-python "
                     f"{llama_cpp.__version__}",
        "model": catalog_name, "sha256": sha256(path),
        "n_vocab": n_vocab,
        "bos": llama_cpp.llama_vocab_bos(vocab), "eos": llama_cpp.llama_vocab_eos(vocab),
        "eot": llama_cpp.llama_vocab_eot(vocab),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        "eog": eog, "tokenize": cases, "pieces": pieces,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path(
        os.environ.get("LANTERN_HOME") or Path.home() / ".cache" / "lanternlm"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    ap.add_argument("models", nargs="*", default=[*MODELS, *VARIANTS, *LOCAL])
    args = ap.parse_args()
    for name in args.models:
        if name in VARIANTS:
            source, set_keys, drop_keys, *rest = VARIANTS[name]
            rename = rest[0] if rest else {}
            with tempfile.TemporaryDirectory() as tmp:
                variant = Path(tmp) / "vocab.gguf"
                write_vocab_variant(args.cache / f"{MODELS[source]}.gguf", set_keys, drop_keys,
                                    variant, rename)
                data = fixture(variant, MODELS[source], with_pieces=False)
            data["variant"] = {"of": source, "set": set_keys, "drop": drop_keys, "rename": rename}
        elif name in LOCAL:
            data = fixture(args.out / LOCAL[name], LOCAL[name])
        else:
            data = fixture(args.cache / f"{MODELS[name]}.gguf", MODELS[name])
        out = args.out / f"tokenizer_reference_{name}.json"
        out.write_text(json.dumps(data, ensure_ascii=False, indent=None, separators=(",", ":")))
        print(f"{out}: {len(data['tokenize'])} texts, {len(data['pieces'])} pieces, "
              f"{out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
