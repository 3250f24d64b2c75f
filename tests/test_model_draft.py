"""Drafts from a second model (runtime/model_draft.py), verified exactly (verified_draft.py).

Oracles: plain decode (the same tokens, greedy and seeded), and the model's own distribution
computed here from its logits (sampled output follows it, whatever the draft), on tiny
generated models with the same vocabulary; llama.cpp's vocabulary rules for the check."""
import numpy as np
import pytest

from lanternlm.runtime.engine import Engine
from lanternlm.runtime.generate import KVContext, generate_step
from lanternlm.runtime.model_draft import IncompatibleDraftError, check_vocabularies
from lanternlm.runtime.sampling import make_sampler
from test_runtime_engine import tiny_model, write_model

PROMPT = [3, 17, 42, 5, 9]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """A target, the same weights as a draft (greedy drafts often kept) and a draft of other
    random weights (rarely kept), all with the target's 64-token vocabulary."""
    d = tmp_path_factory.mktemp("draft")
    target, other = d / "target.gguf", d / "other.gguf"
    write_model(target, "llama", *tiny_model("llama", seed=0))
    write_model(other, "llama", *tiny_model("llama", seed=7))
    return target, other


def generate(engine, sampler, n):
    return list(generate_step(KVContext(engine, engine.n_ctx), PROMPT, sampler, max_tokens=n))


@pytest.mark.parametrize("which", ["same", "other"])
def test_generation_with_a_draft_model_equals_plain_decode(paths, which):
    target, other = paths
    plain = Engine.load(target, n_ctx=96, threads=1, draft=False)
    drafting = Engine.load(target, n_ctx=96, threads=1, draft=str(target if which == "same" else other))
    greedy = make_sampler(temperature=0)
    assert generate(drafting, greedy, 60) == generate(plain, greedy, 60)
    counts = drafting.draft.counts()
    assert counts["rounds"] > 0 and counts["drafted"] > 0
    if which == "same":         # greedy drafts of the model itself are its greedy tokens
        assert counts["kept"] == counts["drafted"]
    else:
        assert counts["kept"] < counts["drafted"]
    for seed in (3, 4):
        sampled = dict(temperature=0.9, top_k=0, top_p=1.0, min_p=0.0, seed=seed)
        assert generate(drafting, make_sampler(**sampled), 60) == generate(plain, make_sampler(**sampled), 60)


def test_sampled_output_follows_the_model_distribution(paths):
    """Three tokens sampled at temperature 1 from the target, drafting with itself from the
    second token on (drafts kept and rejected): each position's token frequencies over 3000
    seeds match the distribution computed from the model's logits, within 4x the total
    variation that sampling alone leaves at that count; always keeping the drafts (the draft's
    greedy tokens) would be far off."""
    target, _ = paths
    eng = Engine.load(target, n_ctx=32, threads=1, draft=str(target))
    eng.draft.next_length = lambda: 2   # draft every round, whatever drafting costs here
    n = 3000
    counts = np.zeros((3, 64))
    for seed in range(n):
        sampler = make_sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed)
        for position, token in enumerate(generate(eng, sampler, 3)):
            counts[position, token] += 1
    drafted = eng.draft.counts()
    assert 0 < drafted["kept"] < drafted["drafted"]

    exact = Engine.load(target, n_ctx=32, threads=1, draft=False)
    p1 = softmax(exact.logits(PROMPT)[-1])
    after1 = np.stack([softmax(exact.logits(PROMPT + [a])[-1]) for a in range(64)])          # p(b | a)
    after2 = np.zeros((64, 64, 64))                                                             # p(c | a, b)
    for a in range(64):
        exact.reset()
        exact.eval(PROMPT + [a])
        for b in range(64):
            exact.truncate(len(PROMPT) + 1)
            after2[a, b] = softmax(exact.eval([b]))
    p2 = p1 @ after1
    p3 = np.einsum("a,ab,abc->c", p1, after1, after2)
    for position, p in enumerate((p1, p2, p3)):
        assert total_variation(counts[position] / n, p) < 4 * sampling_noise(p, n), position
    always_kept = np.zeros(64)               # the second token if every draft were kept
    for a in range(64):
        always_kept[int(np.argmax(after1[a]))] += p1[a]
    assert total_variation(always_kept, p2) > 8 * sampling_noise(p2, n)


def total_variation(p, q):
    return 0.5 * np.abs(p - q).sum()


def sampling_noise(p, n):
    """The expected total variation between p and the frequencies of n samples drawn from it."""
    return 0.5 * np.sqrt(2 * p * (1 - p) / (np.pi * n)).sum()


def softmax(x):
    e = np.exp(x.astype(np.float64) - x.max())
    return e / e.sum()


def test_vocabularies_are_checked_as_llama_cpp_does():
    base = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.tokens": [f"t{i}" for i in range(300)]}
    check_vocabularies(base, dict(base), "d.gguf")
    check_vocabularies(base, {**base, "tokenizer.ggml.tokens": base["tokenizer.ggml.tokens"][:180]}, "d.gguf")
    cases = [({"tokenizer.ggml.model": "llama"}, "tokenizer.ggml.model is 'llama', the model's 'gpt2'"),
             ({"tokenizer.ggml.eos_token_id": 5}, "eos_token_id is 5"),
             ({"tokenizer.ggml.tokens": base["tokenizer.ggml.tokens"][:100]}, "100 tokens against the model's 300"),
             ({"tokenizer.ggml.tokens": ["t0", "x"] + base["tokenizer.ggml.tokens"][2:]}, "token 1 is 'x'")]
    for change, message in cases:
        with pytest.raises(IncompatibleDraftError, match=message):
            check_vocabularies(base, {**base, **change}, "d.gguf")


def test_a_draft_model_of_another_vocabulary_is_refused(paths, smollm2_path):
    target, _ = paths
    with pytest.raises(IncompatibleDraftError, match="cannot draft for this model"):
        Engine.load(target, n_ctx=32, threads=1, draft=str(smollm2_path))


def test_cli_takes_a_draft_model(paths, smollm2_path, capsys):
    """`--spec draft:PATH` and its spelling `--draft PATH` give plain decode's text; a draft of
    another vocabulary is one clear line."""
    from lanternlm import cli

    args = ["run", str(smollm2_path), "The capital of France is", "-n", "6", "--temp", "0", "-q", "-t", "1"]
    assert cli.main(args) == 0
    want = capsys.readouterr().out
    for extra in (["--spec", f"draft:{smollm2_path}"], ["--draft", str(smollm2_path)]):
        assert cli.main(args + extra) == 0
        assert capsys.readouterr().out == want
    assert cli.main(args + ["--draft", str(paths[0])]) != 0
    assert "cannot draft for this model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(args + ["--spec", "lookahead"])
    assert "expected 'ngram' or 'draft:PATH'" in capsys.readouterr().err
