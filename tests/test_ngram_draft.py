"""Prompt-lookup drafts (runtime/ngram_draft.py) and exact multi-token verification
(Engine.verify): the oracle is one-token decode. Every row of a verification equals eval of the
tokens one by one bit for bit (legacy types through the batched kernel, K-quants a token at a
time, in RAM and streamed), and generation with drafts equals plain decode token for token,
greedy and sampled."""
import numpy as np
import pytest

from lanternlm.runtime.backends import cpu_streaming
from lanternlm.runtime.engine import Engine
from lanternlm.runtime.generate import KVContext, generate_step
from lanternlm.runtime.model import Model
from lanternlm.runtime.ngram_draft import lookup
from lanternlm.runtime.sampling import make_sampler
from test_offload_streaming import write_mixed_model
from tiny_llama_gguf import write_tiny_model

CODE = '''def merge_sorted(a, b):
    result = []
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            result.append(a[i])
            i += 1
        else:
            result.append(b[j])
            j += 1
    return result + a[i:] + b[j:]
'''


def test_lookup_hand_computed():
    #          0  1  2  3  4  5  6  7  8  9
    history = [5, 6, 7, 8, 9, 1, 6, 7, 2, 6, 7]
    assert lookup(history, 3) == [2, 6, 7]         # "6 7" last seen at 6..7, followed by 2 6 7
    assert lookup([1, 2, 3, 9, 1, 2, 3], 2) == [9, 1]     # the longest n-gram (3) wins
    assert lookup([1, 2, 3, 4], 4) == []             # nothing repeats
    assert lookup([4, 4], 4) == []                   # a single token is too short a match
    assert lookup([3, 4, 3, 4], 8) == [3, 4]         # what follows, up to the end


def one_by_one(engine, prefix, tokens):
    engine.reset()
    engine.eval(prefix)
    return np.stack([engine.eval([t]).copy() for t in tokens])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_verify_rows_equal_one_token_evals_on_mixed_types(tmp_path, arch):
    path = write_mixed_model(tmp_path / f"{arch}.gguf", arch)
    eng = Engine.load(path, n_ctx=64, threads=2)
    prefix, tokens = [3, 17, 42, 5], [9, 33, 60, 1, 2, 8, 11]
    want = one_by_one(eng, prefix, tokens)
    eng.reset()
    eng.eval(prefix)
    np.testing.assert_array_equal(eng.verify(tokens), want)
    assert eng.n_past == len(prefix) + len(tokens)


@pytest.mark.parametrize("budget", [None, "30%"])
def test_verify_rows_equal_one_token_evals_with_k_quants(tmp_path, monkeypatch, budget):
    """Q4_K/Q6_K matrices sum in another order when batched: verify runs them token by token,
    resident or streamed."""
    from lanternlm.quant.quantize_model import quantize_model

    monkeypatch.setattr(cpu_streaming, "CHUNK_BYTES", 1)
    path = tmp_path / "wide-q4_k_m.gguf"
    quantize_model(write_tiny_model(tmp_path / "wide.gguf", "wide"), path, "Q4_K_M")
    eng = Engine.load(path, n_ctx=64, threads=2, ram_budget=budget, draft=False)
    prefix, tokens = [1, 20, 30, 40], [50, 60, 70, 80, 90, 100, 110, 120]
    want = one_by_one(eng, prefix, tokens)
    eng.reset()
    eng.eval(prefix)
    np.testing.assert_array_equal(eng.verify(tokens), want)
    eng.reset()
    eng.eval(prefix)
    batched = eng.eval(tokens, all_logits=True)    # the batched kernels alone are not exact here
    assert not np.array_equal(batched, want)


@pytest.fixture(scope="module")
def models(smollm2_path):
    return (Model.load(smollm2_path, n_ctx=512, threads=2, draft=False),
            Model.load(smollm2_path, n_ctx=512, threads=2, draft="ngram"))


def generate(model, sampler, n=120):
    ids = model.chat_prompt_ids([{"role": "user", "content": "Repeat this code exactly:\n\n" + CODE}])
    model.context.invalidate()
    return list(generate_step(model.context, ids, sampler, max_tokens=n))


def test_greedy_generation_with_ngram_drafts_equals_plain_decode(models):
    plain, drafting = models
    greedy = make_sampler(temperature=0)
    want = generate(plain, greedy)
    before = drafting.engine.draft.counts()
    assert generate(drafting, greedy) == want
    after = drafting.engine.draft.counts()
    rounds, kept = after["rounds"] - before["rounds"], after["kept"] - before["kept"]
    assert rounds and kept > len(want) / 2          # the reply copies its prompt: most drafts kept


def test_sampled_generation_with_ngram_drafts_equals_plain_decode(models):
    plain, drafting = models
    for seed in (1, 2):
        options = dict(temperature=0.7, top_k=40, top_p=0.95, seed=seed)
        assert generate(drafting, make_sampler(**options), 80) == generate(plain, make_sampler(**options), 80)


def test_a_bad_draft_value_is_refused(smollm2_path):
    with pytest.raises(ValueError, match="draft must be"):
        Engine.load(smollm2_path, n_ctx=64, draft=3)
    with pytest.raises(ValueError, match="draft model 'lookahead': no such file, and not a catalog model"):
        Engine.load(smollm2_path, n_ctx=64, draft="lookahead")
