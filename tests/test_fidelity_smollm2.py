"""SmolLM2-135M-Instruct Q4_1 against llama.cpp's recorded outputs (../shared/reference).

Teacher forcing: each prompt plus llama.cpp's 32 greedy tokens goes through one forward pass,
and at each generation step our argmax and our logits for llama.cpp's top-8 tokens are compared
with what llama.cpp saw. Perplexity over 256 tokens of an essay is compared per position.

Why not bit-identical: the matmuls are (activations quantized to Q8_0/Q8_1, integer block dots,
as llama.cpp), and the KV cache is f16 with the query rounded to f16 for the K.Q dots, as in
llama.cpp's non-flash attention; what remains is summation order (SIMD lanes, threads) in
attention and the rest, which depends on the CPU's instruction set.

Tolerances come from llama.cpp's own variation, not from one machine's count of misses. Measured
with llama-cpp-python 0.3.36 on this model, the same 128 steps evaluated as one batch instead of
token by token: llama.cpp disagrees with itself at 2 steps, always at a top-1/top-2 margin of
0.101 or less, and its mean |logit difference| over the top 8 is 0.127. So:
- no fixed count of argmax misses; every miss must sit at a near-tie of llama.cpp's own logits;
- the mean top-8 difference may be up to 1.5x llama.cpp's own: 1.5 * 0.127 = 0.19
  (measured here: 0.168 on AMD Zen 4 with AVX-512, 0.174 on an Intel Xeon with AMX);
- a near-tie is a margin below 0.35: two logits that each move by about the allowed mean
  difference (0.19) in opposite directions swap order at a margin of 2 * 0.19 = 0.38 or less;
  0.35 keeps a little below that (misses seen: margins 0.011, 0.101, 0.310 on the Xeon).
"""
import numpy as np
import pytest

from lanternlm.runtime.engine import Engine

LLAMA_CPP_SELF_TOP8 = 0.127    # llama.cpp batch vs token-by-token, mean top-8 |logit difference|
MAX_TOP8 = 1.5 * LLAMA_CPP_SELF_TOP8
NEAR_TIE = 0.35                 # about 2 * MAX_TOP8 (see the module docstring)


@pytest.fixture(scope="module")
def reference(llama_cpp_reference):  # conftest: ../shared/reference, a failure when missing
    return llama_cpp_reference


@pytest.fixture(scope="module")
def engine(smollm2_path):
    return Engine.load(smollm2_path, n_ctx=512, n_batch=256)


def test_teacher_forced_greedy_matches_llama_cpp(engine, reference):
    agree, total, top8_diffs, ties = 0, 0, [], []
    for case in reference["greedy"]:
        prompt, generated = case["prompt_ids"], case["generated_ids"]
        logits = engine.logits(prompt + generated)
        for step, (chosen, top8) in enumerate(zip(generated, case["top8_per_step"])):
            row = logits[len(prompt) - 1 + step]
            total += 1
            if int(row.argmax()) == chosen:
                agree += 1
            else:
                ties.append(top8[0][1] - top8[1][1])  # llama.cpp's own margin at that step
            top8_diffs += [abs(float(row[tok]) - logit) for tok, logit in top8]
    assert total == 128
    assert all(gap < NEAR_TIE for gap in ties), \
        f"argmax agrees at {agree}/{total} steps; misses at llama.cpp margins {ties} (near-tie: < {NEAR_TIE})"
    assert np.mean(top8_diffs) <= MAX_TOP8, \
        f"mean |logit difference| over top-8: {np.mean(top8_diffs):.3f} (llama.cpp's own: {LLAMA_CPP_SELF_TOP8})"


def test_perplexity_matches_llama_cpp(engine, reference):
    ppl = reference["perplexity"]
    ids = ppl["ids"]
    logits = engine.logits(ids).astype(np.float64)
    top = logits.max(1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(1)) + top[:, 0]
    nll = log_z[:-1] - logits[np.arange(len(ids) - 1), ids[1:]]
    ours = float(np.exp(nll.mean()))
    assert abs(ours / ppl["ppl"] - 1) < 0.01, f"perplexity {ours:.3f} vs llama.cpp {ppl['ppl']:.3f}"
    per_position = np.abs(nll - np.array(ppl["nll"]))
    assert per_position.mean() < 0.1 and np.median(per_position) < 0.05


def test_decode_matches_prefill(engine, reference):
    case = reference["greedy"][0]
    ids = case["prompt_ids"] + case["generated_ids"][:12]
    every = engine.logits(ids)
    engine.reset()
    for i, tok in enumerate(ids):
        step = engine.eval([tok])
        np.testing.assert_allclose(step, every[i], atol=2e-3, rtol=1e-4)
        assert int(step.argmax()) == int(every[i].argmax())
