"""Gemma 3 270M and Qwen2.5-Coder 0.5B against llama.cpp's logits (tests/data/reference_*.json,
made by tests/data/make_runtime_fixtures.py).

As for SmolLM2 (see test_fidelity_smollm2.py), the matmuls quantize their inputs to 8-bit blocks
(Q8_0/Q8_1/Q8_K) as llama.cpp does, and the KV cache is f16 as in llama.cpp; what differs is
summation order (SIMD lanes, threads, batch against one token at a time), by which llama.cpp
also differs from itself. So logits are compared within a tolerance and greedy choices must
agree wherever llama.cpp's own top-2 margin is not a near-tie.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from lanternlm.formats.tokenizer import load_tokenizer
from lanternlm.runtime.engine import Engine

DATA = Path(__file__).parent / "data"
NEAR_TIE = 0.35


def reference(arch):
    return json.loads((DATA / f"reference_{arch}.json").read_text())


@pytest.fixture(scope="module")
def gemma3(gemma3_path):
    return Engine.load(gemma3_path, n_ctx=1024, n_batch=512), reference("gemma3")


@pytest.fixture(scope="module")
def qwen2(qwen2_path):
    return Engine.load(qwen2_path, n_ctx=256, n_batch=256), reference("qwen2")


@pytest.fixture(params=["gemma3", "qwen2"])
def model(request):
    return request.getfixturevalue(request.param)


def margin(top8):
    return top8[0][1] - top8[1][1]


def test_config_read_from_the_file(gemma3, qwen2):
    g, q = gemma3[0].cfg, qwen2[0].cfg
    assert (g.arch, g.n_layer, g.n_embd, g.head_dim, g.n_head, g.n_head_kv, g.n_vocab) == \
        ("gemma3", 18, 640, 256, 4, 1, 262144)
    assert g.sliding_window == 512 and [il for il, s in enumerate(g.swa_layers) if not s] == [5, 11, 17]
    assert g.rope_base == 1e6 and g.rope_base_swa == 10000.0 and g.rope_neox
    assert (q.arch, q.n_layer, q.n_embd, q.n_head, q.n_head_kv, q.n_vocab) == ("qwen2", 24, 896, 14, 2, 151936)
    assert q.rope_neox and q.attn_qkv_bias and q.rope_base == 1e6


def test_tokenizer_gives_llama_cpp_prompt_ids(model):
    eng, ref = model
    tok = load_tokenizer(eng.gguf.kv)
    for case in ref["greedy"]:
        assert tok.encode(case["prompt"], add_special=True, parse_special=True) == case["prompt_ids"]


def test_teacher_forced_logits_match_llama_cpp(model):
    eng, ref = model
    diffs = []
    for case in ref["greedy"]:
        prompt, generated = case["prompt_ids"], case["generated_ids"]
        logits = eng.logits(prompt + generated)
        assert np.isfinite(logits).all()
        for step, top8 in enumerate(case["top8_per_step"]):
            row = logits[len(prompt) - 1 + step]
            if margin(top8) >= NEAR_TIE:
                assert int(row.argmax()) == top8[0][0], f"{case['prompt']!r} step {step}"
            diffs += [abs(float(row[t]) - v) for t, v in top8]
    assert np.mean(diffs) < 0.25, f"mean |logit difference| over llama.cpp's top-8: {np.mean(diffs):.3f}"


def test_greedy_continuation_follows_llama_cpp(model):
    """Our own decode loop (one token per eval) reproduces llama.cpp's greedy text up to the
    first near-tie, where the two may legitimately part."""
    eng, ref = model
    case = ref["greedy"][0]
    eng.reset()
    logits = eng.eval(case["prompt_ids"])
    for step, (expected, top8) in enumerate(zip(case["generated_ids"], case["top8_per_step"])):
        if margin(top8) < NEAR_TIE:
            break
        chosen = int(logits.argmax())
        assert chosen == expected, f"step {step}: {chosen} instead of llama.cpp's {expected}"
        logits = eng.eval([chosen])
    assert step >= 4


def test_gemma3_long_context_crosses_the_sliding_window(gemma3):
    """700 tokens: local layers must forget keys more than 512 positions back, as llama.cpp."""
    eng, ref = gemma3
    ids, tops = ref["long"]["ids"], ref["long"]["top8_last"]
    eng.reset()
    n_check = len(tops)
    rows = [eng.eval(ids[:len(ids) - n_check + 1]).copy()]  # prefill in two chunks
    for tok in ids[len(ids) - n_check + 1:]:
        rows.append(eng.eval([tok]).copy())                    # then decode
    diffs = []
    for row, top8 in zip(rows, tops):
        if margin(top8) >= NEAR_TIE:
            assert int(row.argmax()) == top8[0][0]
        diffs += [abs(float(row[t]) - v) for t, v in top8]
    assert np.mean(diffs) < 0.3, f"mean |logit difference| over llama.cpp's top-8: {np.mean(diffs):.3f}"
