"""Round trips and the streaming decoder, on the real vocabularies.

Oracles: the text itself (byte-level BPE is lossless; so is the SPM path for texts without
special tokens), Tokenizer.decode (already checked against llama_detokenize) for the
streaming decoder, Python's one-shot UTF-8 decoder for invalid byte runs, and llama.cpp's
clean-up rules worked by hand.
"""
import json
import random
from pathlib import Path

import pytest

from lanternlm.formats.detokenize import clean_spaces
from lanternlm.formats.gguf import read_gguf
from lanternlm.formats.special_tokens import TokenAttr
from lanternlm.formats.tokenizer import load_tokenizer

DATA = Path(__file__).parent / "data"
MODEL_FIXTURES = {"smollm2": "smollm2_path", "gemma3": "gemma3_path", "qwen2": "qwen2_path"}


def texts() -> list[str]:
    cases = json.loads((DATA / "tokenizer_reference_smollm2.json").read_text(encoding="utf-8"))
    return [c["text"] for c in cases["tokenize"]]


@pytest.fixture(scope="module")
def kv_of(request):
    cache = {}

    def get(model: str) -> dict:
        if model not in cache:
            with read_gguf(request.getfixturevalue(MODEL_FIXTURES[model])) as f:
                cache[model] = {k: v for k, v in f.kv.items() if k.startswith("tokenizer.")}
        return cache[model]
    return get


@pytest.fixture(scope="module")
def tok(kv_of):
    cache = {}

    def get(model: str, **overrides):
        key = (model, tuple(sorted(overrides.items())))
        if key not in cache:
            kv = {**kv_of(model), **{f"tokenizer.ggml.{k}": v for k, v in overrides.items()}}
            cache[key] = load_tokenizer(kv)
        return cache[key]
    return get


def streamed(tokenizer, ids, skip_special=False) -> list[str]:
    decoder = tokenizer.decoder(skip_special=skip_special)
    return [decoder.add(i) for i in ids] + [decoder.flush()]


@pytest.mark.parametrize("model", ["smollm2", "qwen2"])
def test_bpe_round_trip(tok, model):
    tokenizer = tok(model)
    assert not tokenizer.clean_spaces
    for text in texts():
        assert tokenizer.decode(tokenizer.encode(text, add_special=False, parse_special=False)) \
            == text
        # with special tokens parsed the text still comes back: control tokens render as text
        assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize("space_prefix", [False, True])
def test_spm_round_trip(tok, space_prefix):
    tokenizer = tok("gemma3", add_space_prefix=space_prefix)
    checked = 0
    for text in texts():
        ids = tokenizer.encode(text, add_special=False, parse_special=False)
        if space_prefix and any(tokenizer.attrs[i] & TokenAttr.USER_DEFINED for i in ids):
            # llama.cpp prefixes a space after every matched token ("\n", "<table>", ...)
            continue
        checked += 1
        assert tokenizer.decode(ids) == text
        with_bos = tokenizer.encode(text, add_special=True, parse_special=False)
        assert with_bos[0] == tokenizer.bos_id
        # a skipped BOS keeps the leading space of what follows (llama_detokenize's rule)
        expected = (" " + text) if space_prefix and text else text
        assert tokenizer.decode(with_bos, skip_special=True) == expected
    assert checked > 40


def test_spm_space_prefix_encoding(tok):
    plain = tok("gemma3")
    prefixed = tok("gemma3", add_space_prefix=True)
    assert prefixed.encode("Hello", add_special=False) == plain.encode(" Hello", add_special=False)
    assert prefixed.decode(prefixed.encode("Hello", add_special=False)) == "Hello"


@pytest.mark.parametrize("model", list(MODEL_FIXTURES))
def test_stream_equals_decode(tok, model):
    tokenizer = tok(model)
    for text in texts():
        ids = tokenizer.encode(text)
        for skip in (False, True):
            parts = streamed(tokenizer, ids, skip_special=skip)
            assert "".join(parts) == tokenizer.decode(ids, skip_special=skip), text


def test_stream_holds_back_split_characters(tok):
    # Gemma spells characters outside its vocabulary with byte tokens; SmolLM2's byte-level
    # BPE splits rare emoji across tokens. Either way no step may show half a character.
    for model, text in (("gemma3", "a🫠b𓀀c"), ("smollm2", "x🫠y𓀀z")):
        tokenizer = tok(model)
        ids = tokenizer.encode(text, add_special=False)
        pieces = [tokenizer.token_to_piece(i) for i in ids]
        assert any(p and _incomplete_utf8(p) for p in pieces), "the text must split a character"
        parts = streamed(tokenizer, ids)
        assert "".join(parts) == text
        assert all("\ufffd" not in p for p in parts)
        assert "" in parts   # the steps that ended mid-character produced nothing


def _incomplete_utf8(piece: bytes) -> bool:
    try:
        piece.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_stream_of_arbitrary_bytes_matches_one_shot_decode(tok):
    # Random byte tokens: invalid and truncated sequences must be replaced exactly as a
    # one-shot decode of the whole byte string replaces them.
    tokenizer = tok("gemma3")
    byte_id = {b: tokenizer.token_to_id[f"<0x{b:02X}>"] for b in range(256)}
    rng = random.Random(7)
    alphabet = [0x41, 0x20, 0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80, 0xFF, 0x80]
    for _ in range(200):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        ids = [byte_id[b] for b in data]
        assert tokenizer.decode(ids) == data.decode("utf-8", errors="replace")
        assert "".join(streamed(tokenizer, ids)) == data.decode("utf-8", errors="replace")


def test_stream_with_clean_spaces(tok):
    # starcoder shares SmolLM2's split rules but cleans " ." style spaces when detokenizing
    tokenizer = tok("smollm2", pre="starcoder")
    assert tokenizer.clean_spaces
    rng = random.Random(3)
    words = ["a", "it", " ", "  ", "'", "'s", "'m", "'re", "'ve", "'t", "'ll", ".", ",", "?",
             "!", "x y", "\n"]
    samples = ["".join(rng.choice(words) for _ in range(rng.randint(1, 30))) for _ in range(300)]
    for text in samples + texts():
        ids = tokenizer.encode(text, add_special=False)
        whole = tokenizer.decode(ids)
        assert whole == clean_spaces(text.encode("utf-8")).decode("utf-8")
        assert "".join(streamed(tokenizer, ids)) == whole, text


@pytest.mark.parametrize("raw, cleaned", [
    (b"Hello , world . Really ? Yes !", b"Hello, world. Really? Yes!"),
    (b"a ' b", b"a'b"),
    (b"it 's I 'm we 're they 've", b"it's I'm we're they've"),
    (b"don 't I 'd we 'll", b"don 't I 'd we 'll"),
    (b"a ' ' b", b"a'' b"),           # the second apostrophe's left space was consumed
    (b"  ?", b" ?"),                   # only the space right before the mark goes
    (b" , ", b", "),
    (b"", b""),
])
def test_clean_spaces_rules(raw, cleaned):
    assert clean_spaces(raw) == cleaned


def test_skip_special_drops_only_a_final_eos(kv_of):
    # A vocabulary that appends EOS, with EOS a normal token so that it has a visible piece:
    # decode(skip_special=True) drops it at the end only, and the stream must agree.
    kv = dict(kv_of("smollm2"))
    hello = load_tokenizer(kv).encode("Hello", add_special=False)[0]
    kv.update({"tokenizer.ggml.add_eos_token": True, "tokenizer.ggml.eos_token_id": hello})
    tokenizer = load_tokenizer(kv)
    ids = tokenizer.encode("Hi") + tokenizer.encode(" there")
    assert ids.count(hello) == 2 and ids[-1] == hello
    assert tokenizer.decode(ids, skip_special=True) == "HiHello there"
    assert "".join(streamed(tokenizer, ids, skip_special=True)) == "HiHello there"
    assert tokenizer.decode(ids) == "HiHello thereHello"


def test_bad_input_raises(tok, kv_of):
    tokenizer = tok("smollm2")
    with pytest.raises(TypeError, match="str"):
        tokenizer.encode(b"bytes")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.token_to_piece(tokenizer.n_vocab)
    assert tokenizer.encode("") == []
    assert tok("gemma3").encode("") == [tok("gemma3").bos_id]
    with pytest.raises(ValueError, match="tokenizer.ggml.model='t5'"):     # an unsupported model
        load_tokenizer({**kv_of("smollm2"), "tokenizer.ggml.model": "t5"})
    with pytest.raises(ValueError, match="tokenizer.ggml.pre='nonesuch'"):
        load_tokenizer({**kv_of("smollm2"), "tokenizer.ggml.pre": "nonesuch"})
    no_merges = dict(kv_of("smollm2"))
    del no_merges["tokenizer.ggml.merges"]
    with pytest.raises(ValueError, match="merges"):
        load_tokenizer(no_merges)
    with pytest.raises(ValueError, match="tokenizer.ggml.tokens"):
        load_tokenizer({"tokenizer.ggml.model": "gpt2"})
    short_types = {**kv_of("smollm2"), "tokenizer.ggml.token_type": [1, 1]}
    with pytest.raises(ValueError, match="token_type"):
        load_tokenizer(short_types)
