"""Tokenizers built from GGUF metadata against llama.cpp, the oracle.

Fixtures: the shared SmolLM2 reference (llama.cpp's own outputs), and
tests/data/tokenizer_reference_*.json written by tests/data/make_tokenizer_fixtures.py with
llama-cpp-python from the same GGUF files: token ids in the four add_special x parse_special
modes, llama_detokenize, token_to_piece and the end-of-generation set, for SmolLM2 (BPE,
smollm), Qwen2.5 (BPE, qwen2), Gemma 3 (SentencePiece-style, 262k), SmolLM2's vocabulary
relabelled with the gpt-2, llama-bpe, default, starcoder, deepseek-llm, deepseek-coder, falcon
and qwen35 pre-tokenizers, Gemma's and
SmolLM2's with add_space_prefix on, Qwen's and Gemma's named Phi-3 (whose special tokens
swallow the whitespace after them) and Gemma's as a jina-v2 vocabulary (<mask> swallows the
whitespace before it); and two small vocabularies of tests/data made for the test (make_*_vocab.py):
a BERT WordPiece one and a Gemma 4 one (character-level BPE with byte fallback).
"""
import json
from pathlib import Path

import pytest

from lanternlm.formats.gguf import read_gguf
from lanternlm.formats.tokenizer import load_tokenizer

DATA = Path(__file__).parent / "data"
MODEL_FIXTURES = {"smollm2": "smollm2_path", "gemma3": "gemma3_path", "qwen2": "qwen2_path"}
VARIANTS = ("bpe_gpt2", "bpe_llama3", "bpe_default", "bpe_starcoder", "spm_space_prefix",
            "bpe_space_prefix", "bpe_phi3_name", "spm_phi3_name", "spm_jina_mask", "bpe_deepseek_llm",
            "bpe_deepseek_coder", "bpe_falcon", "bpe_qwen35")
LOCAL = {"bert": "bert_vocab.gguf", "gemma4": "gemma4_vocab.gguf"}   # vocabularies in tests/data
MODES = {"ids_add_bos_special": (True, True), "ids_add_bos_plain": (True, False),
         "ids_no_bos_special": (False, True), "ids_no_bos_plain": (False, False)}


def reference(name: str) -> dict:
    return json.loads((DATA / f"tokenizer_reference_{name}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def metadata(request):
    """Tokenizer metadata of each catalog model, read once per module."""
    cache = {}

    def get(model: str) -> dict:
        if model not in cache:
            with read_gguf(request.getfixturevalue(MODEL_FIXTURES[model])) as f:
                cache[model] = {k: v for k, v in f.kv.items()
                                if k.startswith(("tokenizer.", "general."))}
        return cache[model]
    return get


@pytest.fixture(scope="module")
def tokenizer(metadata):
    cache = {}

    def get(name: str):
        if name not in cache:
            if name in VARIANTS:   # the generator's variant file: keys replaced / removed
                variant = reference(name)["variant"]
                kv = {**metadata(variant["of"]), **variant["set"]}
                for key in variant["drop"]:
                    del kv[key]
                rename = variant.get("rename") or {}
                if rename:
                    kv["tokenizer.ggml.tokens"] = [rename.get(t, t) for t in kv["tokenizer.ggml.tokens"]]
            elif name in LOCAL:
                with read_gguf(DATA / LOCAL[name]) as f:
                    kv = dict(f.kv)
            else:
                kv = metadata(name)
            cache[name] = load_tokenizer(kv)
        return cache[name]
    return get


def test_shared_smollm2_reference(tokenizer, llama_cpp_reference, reference_dir):
    ref = llama_cpp_reference
    tok = tokenizer("smollm2")
    assert len(ref["tokenize"]) == 24
    for case in ref["tokenize"]:
        assert tok.encode(case["text"], add_special=True, parse_special=True) \
            == case["ids_add_bos_special"], case["text"]
        assert tok.encode(case["text"], add_special=False, parse_special=False) \
            == case["ids_no_bos_plain"], case["text"]
    for case in ref["greedy"]:
        assert tok.encode(case["prompt"]) == case["prompt_ids"]
    essay = (reference_dir / "mlsys_essay.txt").read_text(encoding="utf-8")
    ids = ref["perplexity"]["ids"]
    assert tok.encode(essay, add_special=True, parse_special=False)[:len(ids)] == ids


@pytest.mark.parametrize("name", [*MODEL_FIXTURES, *VARIANTS, *LOCAL])
def test_encode_matches_llama_cpp(tokenizer, name):
    ref = reference(name)
    tok = tokenizer(name)
    checked = 0
    for case in ref["tokenize"]:
        for key, (add_special, parse_special) in MODES.items():
            if key in case:
                got = tok.encode(case["text"], add_special=add_special, parse_special=parse_special)
                assert got == case[key], (key, case["text"])
                checked += 1
    assert checked >= 2 * 90


@pytest.mark.parametrize("name", [*MODEL_FIXTURES, *VARIANTS, *LOCAL])
def test_decode_matches_llama_detokenize(tokenizer, name):
    tok = tokenizer(name)
    for case in reference(name)["tokenize"]:
        ids = case["ids_add_bos_special"]
        expected = bytes.fromhex(case["detok_special_hex"]).decode("utf-8", errors="replace")
        assert tok.decode(ids) == expected, case["text"]
        expected = bytes.fromhex(case["detok_skip_special_hex"]).decode("utf-8", errors="replace")
        assert tok.decode(ids, skip_special=True) == expected, case["text"]


@pytest.mark.parametrize("name", [*MODEL_FIXTURES, *LOCAL])
def test_token_to_piece_matches_llama_cpp(tokenizer, name):
    tok = tokenizer(name)
    ref = reference(name)
    pieces = ref["pieces"]
    assert len(pieces) > min(300, ref["n_vocab"] * 0.8)      # the tiny WordPiece vocabulary has 287
    for token, (with_special, without_special) in pieces.items():
        assert tok.token_to_piece(int(token)).hex() == with_special, token
        assert tok.token_to_piece(int(token), special=False).hex() == without_special, token


@pytest.mark.parametrize("name", [*MODEL_FIXTURES, *VARIANTS, *LOCAL])
def test_special_ids_match_llama_cpp(tokenizer, name):
    ref = reference(name)
    tok = tokenizer(name)
    assert tok.n_vocab == ref["n_vocab"]
    def token(i):        # llama.cpp says -1 for none
        return None if i < 0 else i
    assert (tok.bos_id, tok.eos_id) == (token(ref["bos"]), token(ref["eos"]))
    assert (tok.add_bos, tok.add_eos) == (ref["add_bos"], ref["add_eos"])
    assert tok.eot_ids == frozenset(ref["eog"])
    # llama.cpp picks the EOT id in hash-map order where several names qualify; any end-of-turn
    # token it would accept is fine, and where there is one it must be the same.
    assert tok.eot_id in tok.eot_ids if ref["eot"] >= 0 else tok.eot_id is None     # WordPiece: none
    if not {"<|im_end|>", "<|endoftext|>"} <= set(tok.token_to_id):
        assert tok.eot_id == token(ref["eot"])


def test_expected_special_sets(tokenizer):
    # hand-checked: Gemma's "</s>" is user-defined but spelled like an end marker, so llama.cpp
    # makes it end generation; Qwen's FIM pad/repo/file-separator tokens end generation too
    gemma = tokenizer("gemma3")
    assert {gemma.tokens[i] for i in gemma.eot_ids} == {"<eos>", "<end_of_turn>", "</s>"}
    qwen = tokenizer("qwen2")
    assert {"<|im_end|>", "<|endoftext|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"} \
        <= {qwen.tokens[i] for i in qwen.eot_ids}
    smol = tokenizer("smollm2")
    assert {smol.tokens[i] for i in smol.eot_ids} == {"<|endoftext|>", "<|im_end|>", "<reponame>"}


def test_special_text_parsing_modes(tokenizer):
    gemma = tokenizer("gemma3")
    text = "<start_of_turn>user\nHi<end_of_turn>"
    ids = gemma.encode(text, add_special=False)
    assert ids[0] == gemma.token_to_id["<start_of_turn>"]
    assert ids[-1] == gemma.token_to_id["<end_of_turn>"]
    assert gemma.token_to_id["<start_of_turn>"] not in gemma.encode(text, add_special=False,
                                                                     parse_special=False)
    # user-defined tokens (here Gemma's double space and newline) are matched in both modes
    plain = gemma.encode("a  b\n", add_special=False, parse_special=False)
    assert gemma.token_to_id["  "] in plain and gemma.token_to_id["\n"] in plain
