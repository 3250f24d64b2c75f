"""Sampler chain against hand-computed cases and brute-force oracles."""
import math

import numpy as np
import pytest

from lanternlm.runtime import sampling as S
from lanternlm.runtime.sampling import Candidates, make_sampler

PROBS = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
PERM = np.array([3, 0, 4, 1, 2])          # token id of each probability above


def known_logits():
    """Logits over 5 tokens whose softmax is PROBS, placed at shuffled token ids."""
    logits = np.empty(5, dtype=np.float32)
    logits[PERM] = np.log(PROBS)
    return logits


def kept_ids(cands):
    return set(range(cands.logits.shape[0])) if cands.ids is None else set(cands.ids.tolist())


@pytest.mark.parametrize("p, expected", [
    (0.45, {3}),                # 0.5 already covers 0.45
    (0.6, {3, 0}),              # 0.5 + 0.2 = 0.7
    (0.75, {3, 0, 4}),          # 0.85
    (0.9, {3, 0, 4, 1}),        # 0.95
    (0.99, {3, 0, 4, 1, 2}),
    (0.0, {3}),                 # always keep one
])
def test_top_p_keeps_exact_nucleus(p, expected):
    out = S.top_p(Candidates(known_logits()), p)
    assert kept_ids(out) == expected
    assert out.sorted_desc and np.all(np.diff(out.logits) <= 0)


def test_top_p_one_is_noop():
    c = Candidates(known_logits())
    assert S.top_p(c, 1.0) is c


@pytest.mark.parametrize("p", [0.3, 0.9, 0.999])
def test_top_p_large_vocab_matches_full_sort(p):
    # A flat-ish distribution over 20k tokens needs thousands of tokens to reach p, so the
    # partitioned head has to grow; the oracle sorts everything.
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 0.5, 20000).astype(np.float32)
    logits[::7] = -np.inf                                  # banned tokens must not break bucketing
    probs = np.exp(logits - logits.max()).astype(np.float64)
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    n_keep = int(np.argmax(np.cumsum(probs[order]) >= p)) + 1
    out = S.top_p(Candidates(logits), p)
    assert kept_ids(out) == set(order[:n_keep].tolist())
    assert n_keep > 256 or p < 0.5


@pytest.mark.parametrize("p, expected", [
    (0.25, {3, 0, 4}),          # threshold 0.125: 0.5, 0.2, 0.15 survive
    (0.5, {3}),                 # threshold 0.25
    (0.05, {3, 0, 4, 1, 2}),    # threshold 0.025: all survive
])
def test_min_p(p, expected):
    assert kept_ids(S.min_p(Candidates(known_logits()), p)) == expected


def test_top_k_is_the_k_largest_sorted():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=50000).astype(np.float32)
    out = S.top_k(Candidates(logits), 7)
    assert out.ids.tolist() == np.argsort(-logits)[:7].tolist()
    np.testing.assert_array_equal(out.logits, logits[out.ids])
    assert S.top_k(Candidates(logits), 0).ids is None          # disabled


def test_repeat_presence_frequency_penalties_llama_cpp_rules():
    logits = np.array([2.0, -1.0, 0.5, 3.0, 0.0], dtype=np.float32)
    history = [3, 0, 1, 1, 4]       # last_n = 4 -> window [0, 1, 1, 4]; token 3 falls out
    S.apply_penalties(logits, history, repeat_penalty=2.0, presence_penalty=0.5,
                      frequency_penalty=0.25, last_n=4)
    expected = [
        2.0 / 2.0 - (1 * 0.25 + 0.5),     # seen once, positive -> divided
        -1.0 * 2.0 - (2 * 0.25 + 0.5),    # seen twice, negative -> multiplied
        0.5,                              # never seen
        3.0,                              # outside the window
        0.0 * 2.0 - (1 * 0.25 + 0.5),     # zero counts as non-positive
    ]
    np.testing.assert_allclose(logits, expected, rtol=1e-6)


def test_penalty_window_whole_history_and_disabled():
    logits = np.array([1.0, 1.0], dtype=np.float32)
    S.apply_penalties(logits, [0, 1, 1], repeat_penalty=2.0, last_n=-1)
    np.testing.assert_allclose(logits, [0.5, 0.5])
    S.apply_penalties(logits, [0, 1], repeat_penalty=2.0, last_n=0)
    np.testing.assert_allclose(logits, [0.5, 0.5])


def test_greedy_is_argmax_and_penalties_apply_first():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=1000).astype(np.float32)
    best = int(np.argmax(logits))
    assert make_sampler(temperature=0.0)(logits, []) == best
    # Repeat penalty pushes the argmax down below the runner-up.
    runner_up = int(np.argsort(-logits)[1])
    penalized = make_sampler(temperature=0.0, repeat_penalty=1e6)(logits, [best])
    assert penalized == runner_up


def test_logit_bias_forces_and_bans_tokens():
    logits = known_logits()
    assert make_sampler(temperature=0, logit_bias={2: 100.0})(logits, []) == 2
    banned = make_sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                          logit_bias={3: -math.inf}, seed=0)
    assert all(banned(logits, []) != 3 for _ in range(200))
    with pytest.raises(ValueError, match="vocabulary"):
        make_sampler(temperature=0, logit_bias={5: 1.0})(logits, [])
    with pytest.raises(ValueError, match="every token is banned"):
        make_sampler(logit_bias={i: -math.inf for i in range(5)})(logits, [])


def test_nan_logits_raise():
    with pytest.raises(ValueError, match="NaN"):
        make_sampler()(np.full(5, np.nan, dtype=np.float32), [])


def test_sampler_does_not_modify_its_input():
    logits = known_logits()
    before = logits.copy()
    make_sampler(repeat_penalty=1.5, logit_bias={1: 3.0}, seed=0)(logits, [0, 1])
    np.testing.assert_array_equal(logits, before)


def test_same_seed_same_tokens_different_seed_differs():
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 0.1, 5000).astype(np.float32)   # flat: many plausible tokens
    kw = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = make_sampler(seed=42, **kw)
    b = make_sampler(seed=42, **kw)
    c = make_sampler(seed=43, **kw)
    seq_a = [a(logits, []) for _ in range(30)]
    assert seq_a == [b(logits, []) for _ in range(30)]
    assert seq_a != [c(logits, []) for _ in range(30)]


def test_draw_frequencies_follow_tempered_softmax():
    logits = np.log(np.array([0.6, 0.3, 0.1], dtype=np.float32))
    s = make_sampler(temperature=0.5, top_k=0, top_p=1.0, min_p=0.0, seed=123)
    n = 20000
    counts = np.bincount([s(logits, []) for _ in range(n)], minlength=3) / n
    expected = np.array([0.36, 0.09, 0.01]) / 0.46   # p^(1/T), renormalised
    np.testing.assert_allclose(counts, expected, atol=0.015)


def test_filters_see_temperature_one_distribution():
    # probs 0.5 / 0.3 / 0.2: top_p 0.6 keeps two tokens at T=1. Were the temperature applied
    # first, T=100 would flatten it and top-p would keep all three.
    logits = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    s = make_sampler(temperature=100.0, top_k=0, top_p=0.6, min_p=0.0, seed=5)
    drawn = {s(logits, []) for _ in range(300)}
    assert drawn == {0, 1}
    assert s.stages == ("top_p", "temperature", "dist")


def test_chain_order_is_documented_order():
    s = make_sampler(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, repeat_penalty=1.1,
                     logit_bias={0: 1.0})
    assert s.stages == ("logit_bias", "penalties", "top_k", "top_p", "min_p", "temperature", "dist")
    assert make_sampler(temperature=0).stages == ("greedy",)


def test_top_k_one_is_deterministic_even_when_sampling():
    rng = np.random.default_rng(11)
    logits = rng.normal(size=262144).astype(np.float32)    # gemma-sized vocabulary
    s = make_sampler(temperature=1.5, top_k=1, seed=None)
    assert {s(logits, []) for _ in range(5)} == {int(np.argmax(logits))}


@pytest.mark.parametrize("kwargs, word", [
    (dict(top_p=1.5), "top_p"),
    (dict(min_p=-0.1), "min_p"),
    (dict(repeat_penalty=0.0), "repeat_penalty"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(repeat_last_n=-2), "repeat_last_n"),
    (dict(top_k=2.5), "top_k"),
    (dict(logit_bias={-1: 1.0}), "logit_bias"),
    (dict(seed="abc"), "seed"),
    (dict(logit_bias={1: math.inf}), "logit_bias"),
])
def test_bad_parameters_raise_naming_the_parameter(kwargs, word):
    with pytest.raises(ValueError, match=word):
        make_sampler(**kwargs)


def test_rejects_matrix_of_logits():
    with pytest.raises(ValueError, match="one row"):
        make_sampler()(np.zeros((2, 5), dtype=np.float32), [])
