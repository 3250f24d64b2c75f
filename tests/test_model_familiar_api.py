"""The llama-cpp-python spellings of `lanternlm.Model` on the real SmolLM2-135M Q4_1: the
constructor, completions (dicts, streams, logprobs), tokenize(bytes), embeddings, OpenAI
content parts, keyword errors. Values are checked against hand-computed cases, gguf-py, the
llama.cpp reference and the model's own verified paths (Model.logits, the logits graph's final
norm); streams are checked to add up to the whole result."""
import subprocess
import sys

import gguf
import numpy as np
import pytest

import lanternlm
from lanternlm import Model
from lanternlm.runtime.embedding import l2_normalize
from lanternlm.runtime.openai_shapes import token_logprob
from tiny_llama_gguf import write_tiny_model

GREEDY = dict(temperature=0.0)
FRANCE = "The capital of France is"
# The cached, token-by-token logits of a generation and Model.logits' fresh batch over the same
# tokens differ by rounding only (tests/test_model_api.py bounds the same gap by 0.1); a logprob
# read at the wrong position is off by whole units.
LOGPROB_TOL = 0.1


@pytest.fixture(scope="module")
def model(smollm2_path):
    return Model.load(smollm2_path, n_ctx=512, threads=2)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    """A small llama with a SentencePiece vocabulary whose encode adds a BOS (id 1)."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf", "wide")


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    top = x.max(axis=-1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------- constructor, module

def test_constructor_takes_llama_cpp_python_arguments(smollm2_path, capsys):
    quiet = Model(model_path=str(smollm2_path), n_ctx=64, n_threads=1, verbose=False)
    assert quiet.n_ctx == 64 and quiet.engine.threads == 1
    assert quiet.generate(FRANCE, max_tokens=3, **GREEDY) == " Paris.\n"
    assert capsys.readouterr().err == ""
    loud = Model(str(smollm2_path), n_ctx=64, n_threads=1, verbose=True)    # positional path too
    loud.generate(FRANCE, max_tokens=2, **GREEDY)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("lanternlm: loaded ") and "n_ctx 64, 1 threads" in err[0]
    assert err[1].startswith("lanternlm: 2 tokens, ")                      # one line per generation
    with pytest.raises(TypeError, match="n_gpu_layers"):
        Model(model_path=str(smollm2_path), n_gpu_layers=-1)


def test_model_is_listed_by_dir_and_still_imported_lazily():
    assert "Model" in dir(lanternlm) and "pull" in dir(lanternlm)
    code = "import sys, lanternlm; assert 'Model' in dir(lanternlm); assert 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------- keywords

@pytest.mark.parametrize("method, call", [
    ("Model.generate", lambda m: m.generate(FRANCE, top_z=3)),
    ("Model.stream", lambda m: m.stream(FRANCE, top_z=3)),
    ("Model.chat", lambda m: m.chat([{"role": "user", "content": "hi"}], top_z=3)),
    ("Model.create_completion", lambda m: m(FRANCE, top_z=3)),
    ("Model.create_chat_completion", lambda m: m.create_chat_completion([{"role": "user", "content": "hi"}],
                                                                         top_z=3)),
])
def test_unknown_keyword_is_a_type_error_naming_the_method(model, method, call):
    with pytest.raises(TypeError) as err:
        call(model)
    assert str(err.value).startswith(f"{method}() got an unexpected keyword argument 'top_z'")
    assert "make_sampler" not in str(err.value)


def test_llama_cpp_python_keywords_are_taken_only_switched_off(model):
    off = dict(echo=False, suffix=None, typical_p=1.0, tfs_z=1.0, mirostat_mode=0, grammar=None)
    assert model(FRANCE, max_tokens=3, **off, **GREEDY)["choices"][0]["text"] == " Paris.\n"
    with pytest.raises(ValueError, match=r"mirostat_mode=2 is not supported"):
        model(FRANCE, mirostat_mode=2)
    with pytest.raises(ValueError, match=r"echo=True is not supported"):
        model.create_completion(FRANCE, echo=True)


# ---------------------------------------------------------------- completions

def test_completion_dict_matches_generate(model):
    out = model(FRANCE, max_tokens=5, **GREEDY)
    assert out == model.create_completion(FRANCE, max_tokens=5, **GREEDY) | {"id": out["id"],
                                                                             "created": out["created"]}
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    assert out["model"] == model.name and isinstance(out["created"], int)
    assert out["choices"] == [{"text": " Paris.\n\nThe", "index": 0, "logprobs": None, "finish_reason": "length"}]
    assert out["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
    assert model(FRANCE, max_tokens=5, model="smol", **GREEDY)["model"] == "smol"


def test_completion_stream_chunks_concatenate_to_the_whole(model):
    whole = model(FRANCE, max_tokens=8, stop=["\n\n"], **GREEDY)
    chunks = list(model(FRANCE, max_tokens=8, stop=["\n\n"], stream=True, **GREEDY))
    assert {c["object"] for c in chunks} == {"text_completion"} and len({c["id"] for c in chunks}) == 1
    choices = [c["choices"][0] for c in chunks]
    assert "".join(c["text"] for c in choices) == whole["choices"][0]["text"] == " Paris."
    assert all(c["text"] and c["finish_reason"] is None for c in choices[:-1])
    assert choices[-1] == {"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}


def test_completion_logprobs_are_log_softmax_of_the_logits(model):
    n_top = 3
    out = model(FRANCE, max_tokens=6, logprobs=n_top, **GREEDY)
    lp, text = out["choices"][0]["logprobs"], out["choices"][0]["text"]
    prompt_ids = model.tokenize(FRANCE)
    generated = [c.token for c in model.stream_generate(FRANCE, max_tokens=6, **GREEDY) if c.token is not None]
    assert len(generated) == len(lp["tokens"]) == out["usage"]["completion_tokens"] == 6
    assert lp["tokens"] == [model.detokenize([t]) for t in generated] and "".join(lp["tokens"]) == text
    # offsets: the prompt's length, then each token's text after the previous one's
    assert lp["text_offset"] == [len(FRANCE) + len("".join(lp["tokens"][:i])) for i in range(6)]
    # the oracle: log_softmax of Model.logits (a fresh batch) where each token was chosen
    expected = log_softmax(model.logits(prompt_ids + generated))[len(prompt_ids) - 1:-1]
    for step, token in enumerate(generated):
        assert lp["token_logprobs"][step] == pytest.approx(expected[step, token], abs=LOGPROB_TOL)
        top = lp["top_logprobs"][step]
        assert top[lp["tokens"][step]] == lp["token_logprobs"][step]     # the chosen token is listed
        # the n most likely, compared by value (a near-tie may order two tokens either way)
        assert sorted(top.values(), reverse=True) == pytest.approx(
            np.sort(expected[step])[::-1][:n_top], abs=LOGPROB_TOL)
        assert token == int(expected[step].argmax())                      # greedy picks the most likely


def test_streamed_logprobs_add_up_to_the_whole(model):
    whole = model(FRANCE, max_tokens=6, logprobs=2, **GREEDY)["choices"][0]["logprobs"]
    parts = [c["choices"][0]["logprobs"] for c in model(FRANCE, max_tokens=6, logprobs=2, stream=True, **GREEDY)]
    assert parts[-1] is None                                       # the finish chunk brings no token
    joined = {key: [v for p in parts[:-1] for v in p[key]] for key in whole}
    assert joined["tokens"] == whole["tokens"] and joined["text_offset"] == whole["text_offset"]
    assert joined["token_logprobs"] == pytest.approx(whole["token_logprobs"], abs=1e-5)


def test_token_logprob_by_hand():
    # probabilities 0.1, 0.2, 0.3, 0.4 (logits are their logs plus any constant)
    logits = np.log(np.array([1, 2, 3, 4], dtype=np.float32)) + 7.0
    got = token_logprob(logits, 2, n_top=2)
    assert got.token == 2 and got.logprob == pytest.approx(np.log(0.3), abs=1e-6)
    assert [t for t, _ in got.top] == [3, 2]
    assert [lp for _, lp in got.top] == pytest.approx([np.log(0.4), np.log(0.3)], abs=1e-6)
    assert token_logprob(logits, 0, n_top=0).top == ()


# ---------------------------------------------------------------- chat

def test_chat_logprobs_in_the_chat_shape(model):
    messages = [{"role": "user", "content": "Say hello."}]
    out = model.create_chat_completion(messages, max_tokens=12, logprobs=True, top_logprobs=2, **GREEDY)
    content = out["choices"][0]["logprobs"]["content"]
    assert len(content) == out["usage"]["completion_tokens"]
    assert bytes(b for e in content for b in e["bytes"]).decode() == out["choices"][0]["message"]["content"]
    for e in content:
        assert len(e["top_logprobs"]) == 2 and e["top_logprobs"][0]["token"] == e["token"]   # greedy
        assert e["top_logprobs"][0]["logprob"] == e["logprob"] >= e["top_logprobs"][1]["logprob"]
    streamed = [c["choices"][0]["logprobs"] for c in
                model.create_chat_completion(messages, max_tokens=12, logprobs=True, top_logprobs=2, stream=True,
                                             **GREEDY)]
    assert [e["token"] for p in streamed if p for e in p["content"]] == [e["token"] for e in content]
    assert model.create_chat_completion(messages, max_tokens=2, **GREEDY)["choices"][0]["logprobs"] is None
    with pytest.raises(ValueError, match="top_logprobs needs logprobs=True"):
        model.create_chat_completion(messages, top_logprobs=2)


def test_openai_content_parts_are_joined_text(model):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]}]
    plain = [{"role": "user", "content": "Hello\nthere"}]             # llama.cpp joins parts by newlines
    assert model.render_chat(parts) == model.render_chat(plain)
    assert model.chat(parts, max_tokens=6, **GREEDY) == model.chat(plain, max_tokens=6, **GREEDY)
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]}]
    with pytest.raises(ValueError, match=r"messages\[0\] content part 0: only .*'image_url'"):
        model.chat(image)


# ---------------------------------------------------------------- tokenize

def test_tokenize_takes_utf8_bytes_and_llama_cpp_python_flags(model, llama_cpp_reference):
    france = next(g for g in llama_cpp_reference["greedy"] if g["prompt"] == FRANCE)
    assert model.tokenize(FRANCE.encode()) == model.tokenize(FRANCE) == france["prompt_ids"]
    text = "<|im_start|>user\nnaïve café"
    for add_bos in (True, False):
        for special in (True, False):
            assert model.tokenize(text.encode(), add_bos=add_bos, special=special) == \
                model.tokenize(text, add_special=add_bos, parse_special=special)
    im_start = model.tokenize("<|im_start|>", add_special=False)
    assert len(im_start) == 1 and len(model.tokenize(b"<|im_start|>", special=False)) > 1
    with pytest.raises(ValueError, match="not valid UTF-8"):
        model.tokenize(b"\xff\xfe")


def test_add_bos_adds_the_bos_token(tiny_path):
    tiny = Model(model_path=str(tiny_path), n_ctx=32, n_threads=1)
    with_bos = tiny.tokenize(b"the cat", add_bos=True)
    assert with_bos[0] == 1 and with_bos[1:] == tiny.tokenize(b"the cat", add_bos=False)


# ---------------------------------------------------------------- embeddings

EMBED_TEXT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def final_norm(model):
    """The text's final hidden states, read from the logits graph (its `result_norm` node,
    right before the LM head) rather than from the embeddings graph, and its logits."""
    eng, ids = model.engine, model.tokenize(EMBED_TEXT)
    logits = np.empty((len(ids), model.n_vocab), np.float32)
    eng.reset()
    prog = eng.executor.program("prefill_all", len(ids), out=logits)
    prog.ids[:] = ids
    prog.place(0)
    prog.run()
    hidden = prog.views["result_norm"].copy()
    model.reset()
    return ids, hidden, logits


def test_hidden_states_are_what_the_lm_head_turns_into_logits(model, final_norm):
    ids, hidden, logits = final_norm
    ours = model.hidden_states(ids)
    assert ours.shape == (len(ids), 576) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, hidden, rtol=1e-5, atol=1e-5)
    # gguf-py's dequantized (tied) embedding matrix times our hidden states gives the logits,
    # up to the 8-bit rounding of activations in the engine's Q8_0 product (~0.3% of the norm)
    t = model.engine.gguf.tensors["token_embd.weight"]
    w = gguf.quants.dequantize(np.asarray(t.data), gguf.GGMLQuantizationType(int(t.type))).reshape(t.shape)
    product = ours.astype(np.float64) @ w.astype(np.float64).T
    assert np.linalg.norm(product - logits) < 0.02 * np.linalg.norm(logits)
    assert (product.argmax(axis=1) == logits.argmax(axis=1)).all()


def test_embed_pools_and_normalizes_like_llama_cpp(model, final_norm):
    ids, hidden, _ = final_norm
    mean = hidden.astype(np.float64).mean(axis=0)
    expected = mean / np.sqrt((mean ** 2).sum())
    vector = model.embed(EMBED_TEXT)                               # mean, unit length by default
    assert isinstance(vector, list) and len(vector) == 576
    np.testing.assert_allclose(vector, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.embed(EMBED_TEXT, normalize=False), mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.embed(EMBED_TEXT, pooling="last", normalize=False), hidden[-1], atol=1e-5)
    np.testing.assert_allclose(model.embed(EMBED_TEXT, pooling=2, normalize=False), hidden[0], atol=1e-5)  # cls
    rows = model.embed(EMBED_TEXT, pooling="none")
    np.testing.assert_allclose(rows, hidden / np.linalg.norm(hidden, axis=1, keepdims=True), rtol=1e-4, atol=1e-6)
    vectors, count = model.embed([EMBED_TEXT, "Hi"], return_count=True)
    assert count == len(ids) + len(model.tokenize("Hi"))
    np.testing.assert_allclose(vectors[0], vector, atol=1e-6)
    with pytest.raises(ValueError, match="pooling must be one of"):
        model.embed("Hi", pooling="max")


def test_embed_of_a_text_longer_than_a_batch(smollm2_path, model):
    # n_batch 4: the text goes through the embeddings graph in chunks, over the KV cache
    chunked = Model.load(smollm2_path, n_ctx=64, threads=2, n_batch=4)
    np.testing.assert_allclose(chunked.embed(EMBED_TEXT), model.embed(EMBED_TEXT), atol=1e-3)
    long_text = " ".join(["word"] * 100)                         # more than n_ctx 64 tokens
    assert len(chunked.embed(long_text)) == 576                  # truncated to the context
    with pytest.raises(ValueError, match="context holds 64"):
        chunked.embed(long_text, truncate=False)


def test_create_embedding_shape(model):
    out = model.create_embedding(["Hi", EMBED_TEXT])
    assert out["object"] == "list" and out["model"] == model.name
    assert [d["index"] for d in out["data"]] == [0, 1] and {d["object"] for d in out["data"]} == {"embedding"}
    assert out["data"][1]["embedding"] == model.embed(EMBED_TEXT)
    n = len(model.tokenize("Hi")) + len(model.tokenize(EMBED_TEXT))
    assert out["usage"] == {"prompt_tokens": n, "total_tokens": n}
    assert model.create_embedding("Hi")["data"][0]["embedding"] == model.embed("Hi")


def test_l2_normalize_by_hand():
    np.testing.assert_allclose(l2_normalize(np.array([3.0, 4.0], np.float32)), [0.6, 0.8])
    np.testing.assert_array_equal(l2_normalize(np.zeros((2, 3), np.float32)), np.zeros((2, 3)))


def test_generation_after_embedding_is_unchanged(model):
    before = model.generate(FRANCE, max_tokens=4, **GREEDY)
    model.embed(EMBED_TEXT)                                       # uses (and empties) the KV cache
    assert model.generate(FRANCE, max_tokens=4, **GREEDY) == before
