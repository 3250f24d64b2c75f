"""Drafting under a RAM budget (runtime/resident_draft.py): output identical to plain decode.

The oracle is plain decode of the in-RAM engine. Drafting decides how many tokens one read of
the streamed head serves, never which tokens come out: greedy and seeded sampled generations
must equal plain decode's token for token, and the logits of a verified round must equal
one-token evals bit for bit. The draft's requantized head rows are checked against gguf-py's
reference quantizer.
"""
import itertools
import os

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as gguf_quants

from lanternlm.runtime import resident_draft
from lanternlm.runtime.backends import cpu_streaming
from lanternlm.runtime.bench import prose_prompt
from lanternlm.runtime.engine import Engine
from lanternlm.runtime.generate import KVContext, generate_step
from lanternlm.runtime.resident_draft import DraftLength
from lanternlm.runtime.sampling import make_sampler
from test_offload_streaming import write_mixed_model


def greedy(logits, history):
    return int(np.argmax(logits))


def generate(engine, prompt, n, sampler):
    context = KVContext(engine, engine.n_ctx)
    return list(generate_step(context, prompt, sampler, max_tokens=n))


@pytest.fixture(scope="module")
def smollm2_engines(smollm2_path):
    """(in RAM, drafting at a 50% budget): SmolLM2's tied head streams, and so do some layers,
    which every draft step reads (drafting is forced on: at this budget it would not pay)."""
    ram = Engine.load(smollm2_path, n_ctx=160, threads=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(resident_draft, "MIN_GAIN", 0.0)
        drafting = Engine.load(smollm2_path, n_ctx=160, threads=2, ram_budget="50%", offload_plan=False)
    assert drafting.backend.residency.streamed != (drafting.draft.head,)
    assert drafting.draft is not None
    assert drafting.backend.resident_bytes <= 0.5 * os.path.getsize(smollm2_path)
    return ram, drafting


@pytest.fixture
def lengths(monkeypatch):
    """Draft lengths cycling through 2..8 (the adaptive choice might settle on plain decode)."""
    cycle = itertools.cycle([2, 5, 8, 3, 4, 7, 6])
    monkeypatch.setattr(DraftLength, "next", lambda self: next(cycle))


def test_greedy_generation_with_drafts_equals_plain_decode(smollm2_engines, lengths):
    ram, drafting = smollm2_engines
    prompt = prose_prompt(ram, 32)
    want = generate(ram, prompt, 48, greedy)
    rounds, kept = drafting.draft.rounds, drafting.draft.kept
    assert generate(drafting, prompt, 48, greedy) == want
    rounds, kept = drafting.draft.rounds - rounds, drafting.draft.kept - kept
    assert rounds and 0 < kept < 48     # drafts were kept, and some were not


def test_sampled_generation_with_drafts_equals_plain_decode(smollm2_engines, lengths):
    ram, drafting = smollm2_engines
    prompt = prose_prompt(ram, 24)
    for seed in (1, 2):
        options = dict(temperature=0.9, top_k=40, top_p=0.95, repeat_penalty=1.1, seed=seed)
        want = generate(ram, prompt, 40, make_sampler(**options))
        assert generate(drafting, prompt, 40, make_sampler(**options)) == want


def test_a_verified_round_equals_one_token_evals(smollm2_engines):
    ram, drafting = smollm2_engines
    prompt = prose_prompt(ram, 20)
    ram.reset()
    drafting.reset()
    token = greedy(ram.eval(prompt), None)
    drafting.eval(prompt)
    drafts, rows = drafting.speculate(token, 6)
    assert drafting.n_past == len(prompt) + 6
    for j, tok in enumerate([token, *drafts[:5]]):
        np.testing.assert_array_equal(rows[j], ram.eval([tok]))


def test_stopping_mid_round_leaves_only_what_was_taken_in_the_cache(smollm2_engines, monkeypatch):
    ram, drafting = smollm2_engines
    monkeypatch.setattr(DraftLength, "next", lambda self: 8)
    prompt = prose_prompt(ram, 16)
    context = KVContext(drafting, drafting.n_ctx)
    steps = generate_step(context, prompt, greedy, max_tokens=40)
    taken = [next(steps) for _ in range(4)]
    steps.close()
    assert context.ids == prompt + taken[:-1]
    assert drafting.n_past == len(context.ids)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_drafting_on_tiny_models_equals_plain_decode(tmp_path, arch, monkeypatch, lengths):
    """Untied (llama, qwen2) and tied (gemma3) heads, several chunks each, Q4_0 draft rows."""
    path = write_mixed_model(tmp_path / f"{arch}.gguf", arch)
    monkeypatch.setattr(cpu_streaming, "CHUNK_BYTES", 1)            # 16-row chunks
    monkeypatch.setattr(resident_draft, "MIN_DRAFT_ROWS", 4)
    monkeypatch.setattr(resident_draft, "DRAFT_ROWS", 24)
    monkeypatch.setattr(resident_draft, "DRAFT_BUDGET_SHARE", 1)
    monkeypatch.setattr(resident_draft, "MIN_GAIN", 0.0)
    ram = Engine.load(path, n_ctx=64, threads=1)
    prompt = [3, 17, 42, 5, 9]
    want = generate(ram, prompt, 30, greedy)
    drafted = 0
    for budget in ("60%", "80%", "90%"):
        eng = Engine.load(path, n_ctx=64, threads=1, ram_budget=budget)
        assert generate(eng, prompt, 30, greedy) == want
        assert eng.backend.resident_bytes <= eng.backend.ram_budget
        drafted += eng.draft.rounds if eng.draft else 0
    assert drafted


def test_draft_rows_are_the_heads_rows_requantized_to_q4_0(smollm2_engines, smollm2_path):
    _, drafting = smollm2_engines
    draft = drafting.draft
    ref = drafting.gguf.tensors[draft.head]
    assert T(int(ref.type)) == T.Q8_0 and draft.row_type.qtype == T.Q4_0
    pick = draft.token_ids[[0, 1, 500, -1]]
    rows = gguf_quants.dequantize(np.asarray(ref.data).reshape(ref.shape[0], -1)[pick], T.Q8_0)
    want = gguf_quants.quantize(rows, T.Q4_0)
    np.testing.assert_array_equal(draft.head_rows[[0, 1, 500, -1]], want)


def test_drafting_claims_the_budget_only_where_it_is_expected_to_pay(smollm2_path):
    """SmolLM2's head is 30% of its file: at 50% the layers that would stream to make room for
    draft rows cost about what drafting saves (measured slower); at 90% without draft rows only
    the head would stream."""
    assert Engine.load(smollm2_path, n_ctx=64, ram_budget="50%", offload_plan=False).draft is None
    assert Engine.load(smollm2_path, n_ctx=64, ram_budget="90%", offload_plan=False).draft is not None
    a = resident_draft.ASSUMED_ACCEPTANCE
    # hand-computed: head 100, no body: k = 8 reads 100 per 1 + a + ... + a^7 = 4.16 tokens
    assert resident_draft.draft_pays(0, 0, 100) and 100 / sum(a ** j for j in range(8)) < 100 / 1.15
    # body 80 + head 100 per plain token; with the rows, 95 of body per step: k = 2 reads
    # (190 + 100) / 1.8 = 161, k = 3 (285 + 100) / 2.44 = 158, both within 1.15x of 180
    assert not resident_draft.draft_pays(80, 95, 100)
    assert resident_draft.draft_pays(80, 85, 100)            # k = 3: 355 / 2.44 = 145.5


def test_draft_length_weighs_measured_costs():
    length = DraftLength(max_draft=8)
    assert length.next() == length.first                     # nothing measured yet
    length.timed(4, draft_seconds=0.04, verify_seconds=0.10)  # step 0.01 s, verify 0.1 s
    length.kept_of(tested=10, kept=9)                         # a = 0.9
    assert length.next() == 1                                 # plain decode is still unmeasured
    length.timed_plain(0.11)
    # (k * 0.01 + 0.1) / (1 + 0.9 + ... + 0.9^(k-1)): k = 8 gives 0.18 / 5.70 = 0.032 s per token
    assert length.next() == 8
    slow = DraftLength(max_draft=8)
    slow.timed(2, draft_seconds=0.2, verify_seconds=0.10)    # a draft step costs a whole decode
    slow.kept_of(tested=10, kept=1)
    slow.timed_plain(0.11)
    chosen = [slow.next() for _ in range(32)]
    assert chosen.count(2) == 2 and set(chosen) == {1, 2}     # plain decode, probing every 16th round


def test_constrained_generation_with_drafts_equals_plain_decode(smollm2_engines, lengths):
    """A grammar's sampler sees each emitted token once, in order, with or without drafts."""
    from lanternlm.runtime.constraints import Grammar, constrain

    ram, drafting = smollm2_engines
    grammar = Grammar.from_json_schema({"type": "object", "properties": {"story": {"type": "string"}},
                                        "required": ["story"]})
    prompt = prose_prompt(ram, 24)
    want = generate(ram, prompt, 40, constrain(greedy, grammar, ram.tokenizer))
    assert generate(drafting, prompt, 40, constrain(greedy, grammar, drafting.tokenizer)) == want
    assert ram.tokenizer.decode(want).startswith('{"story": "')
