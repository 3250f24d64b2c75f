"""The serving engine's bookkeeping: the block pool's prefix cache (hand-worked cases), the
scheduler's token budget, and preemption by recompute, whose outputs must equal the
single-sequence engine's (SmolLM2's matrices have batch-invariant kernels)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from lanternlm.formats.gguf import read_gguf
from lanternlm.runtime.config import ModelConfig
from lanternlm.runtime.engine import Engine
from lanternlm.runtime.kv_cache import BLOCK_SIZE, KVCache, cache_type
from lanternlm.runtime.paged_kv import BlockPool
from lanternlm.runtime.sampling import make_sampler
from lanternlm.runtime.scheduler import Scheduler, Sequence
from lanternlm.runtime.serving_engine import Choice, End, PromptError, ServingEngine, Token

B = BLOCK_SIZE


def tokens(n, start=0):
    return list(range(start, start + n))


# ---- block pool -------------------------------------------------------------------------------

def test_lookup_finds_registered_full_blocks_but_never_the_last_token():
    pool = BlockPool(8)
    a, b, c = pool.allocate(), pool.allocate(), pool.allocate()
    text = tokens(3 * B)
    pool.register(None, a, text[:B])
    pool.register(a, b, text[B:2 * B])
    pool.register(b, c, text[2 * B:])
    pool.release([a, b, c])
    assert pool.cached == 3 and pool.available == 8
    # the same 3 blocks: only 2 are reused, the last token's block is computed again
    assert pool.lookup(text) == [a, b]
    assert pool.refs[a] == pool.refs[b] == 1 and pool.cached == 1
    # a prompt that differs inside the second block reuses the first only
    other = text[:B] + [999] + text[B + 1:] + [1]
    assert pool.lookup(other) == [a]
    assert pool.refs[a] == 2
    # the same tokens after a different first block are a different block
    shifted = [7] + text[1:]
    assert pool.lookup(shifted) == []


def test_eviction_takes_free_blocks_first_then_the_least_recently_released():
    pool = BlockPool(3)
    a, b = pool.allocate(), pool.allocate()
    pool.register(None, a, tokens(B))
    pool.register(None, b, tokens(B, 100))
    pool.release([b])
    pool.release([a])            # a released last: b is the older
    c = pool.allocate()          # the free block first
    assert c not in (a, b) and pool.cached == 2
    d = pool.allocate()          # then evicts b, forgetting its content
    assert d == b and pool.lookup(tokens(B, 100) + [0]) == []
    assert pool.lookup(tokens(B) + [0]) == [a]
    assert pool.allocate() is None          # a, c, d referenced


def test_a_duplicate_block_stays_private_and_is_freed():
    pool = BlockPool(4)
    a, b = pool.allocate(), pool.allocate()
    pool.register(None, a, tokens(B))
    pool.register(None, b, tokens(B))       # same content computed twice (two requests at once)
    pool.release([a, b])
    assert pool.cached == 1 and pool.available == 4


# ---- scheduler --------------------------------------------------------------------------------

def test_an_admitted_prompt_takes_its_cached_prefix_and_counts_the_hit_once():
    pool = BlockPool(3)
    sched = Scheduler(pool, max_running=2, token_budget=64, n_ctx=1024)
    first = Sequence(tokens(B + 1), B + 1, 10)
    sched.add(first)
    sched.computed(sched.schedule())             # its first block is full: registered
    sched.remove(first)                          # released, the block stays cached
    again = Sequence(tokens(B + 1), B + 1, 10)
    sched.add(again)
    step = sched.schedule()
    assert [(w.start, w.count) for w in step.work] == [(B, 1)] and again.reused == B
    assert (pool.hit_blocks, pool.queried_blocks) == (1, 2)     # 0 of 1 block, then 1 of 1


def test_blocks_computed_after_a_reused_prefix_are_cached_too():
    """A chat's second turn reuses the first turn's block and offers its own new blocks, so a
    third turn finds all of them."""
    pool = BlockPool(8)
    sched = Scheduler(pool, max_running=2, token_budget=128, n_ctx=1024)
    first = Sequence(tokens(B + 1), B + 1, 10)
    sched.add(first)
    sched.computed(sched.schedule())
    sched.remove(first)
    second = Sequence(tokens(3 * B + 1), 3 * B + 1, 10)       # the first turn's block, then two new
    sched.add(second)
    step = sched.schedule()
    assert second.reused == B
    sched.computed(step)
    sched.remove(second)
    assert len(pool.lookup(tokens(3 * B + 1))) == 3


def test_a_step_decodes_every_running_sequence_then_fills_the_budget_with_prompt_chunks():
    pool = BlockPool(64)
    sched = Scheduler(pool, max_running=4, token_budget=40, n_ctx=1024)
    decoding = [Sequence(tokens(10, 1000 * i), 10, 50) for i in range(2)]
    for s in decoding:
        sched.add(s)
    step = sched.schedule()
    assert [w.count for w in step.work] == [10, 10] and all(w.samples for w in step.work)
    sched.computed(step)
    for s in decoding:
        s.tokens.append(5)                  # each sampled a token
    long = Sequence(tokens(100, 5000), 100, 10)
    sched.add(long)
    step = sched.schedule()
    assert [(w.seq, w.start, w.count) for w in step.work] == [
        (decoding[0], 10, 1), (decoding[1], 10, 1), (long, 0, 38)]
    assert not step.work[2].samples
    sched.computed(step)
    step = sched.schedule()                  # the decoders did not sample: only the prompt goes on
    assert [(w.seq, w.start, w.count) for w in step.work] == [(long, 38, 40)]


def test_out_of_blocks_the_youngest_sequence_is_preempted():
    pool = BlockPool(3)
    sched = Scheduler(pool, max_running=4, token_budget=64, n_ctx=1024)
    old, young = Sequence(tokens(B), B, 100), Sequence(tokens(B, 500), B, 100)
    sched.add(old)
    sched.add(young)
    step = sched.schedule()
    sched.computed(step)
    old.tokens.append(1)
    young.tokens.append(2)
    assert pool.in_use == 2
    step = sched.schedule()     # both need a second block; one is left: the young one gives its up
    assert [w.seq for w in step.work] == [old] and sched.preemptions == 1
    assert list(sched.waiting) == [young] and young.n_cached == 0 and young.blocks == []


# ---- preemption by recompute, end to end ----------------------------------------------------

@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return read_gguf(smollm2_path)


def solo_greedy(gguf_file, prompt, n, banned):
    eng = Engine(gguf_file, n_ctx=256, threads=2, draft=False)
    logits, out = eng.eval(prompt), []
    for _ in range(n):
        biased = logits.copy()
        biased[list(banned)] -= 100.0
        out.append(int(np.argmax(biased)))
        logits = eng.eval([out[-1]])
    return out


def run_all(engine, prompts, n):
    results = {i: [] for i in range(len(prompts))}
    ends, done = {}, threading.Event()

    def emitter(i):
        def emit(event):
            if isinstance(event, Token):
                results[i].append(event.token)
            else:
                ends[i] = event
                if len(ends) == len(prompts):
                    done.set()
        return emit
    bias = {t: -100.0 for t in engine.end_ids}            # no early end: every sequence runs n tokens
    for i, p in enumerate(prompts):
        engine.submit(p, [Choice(make_sampler(temperature=0, logit_bias=bias), emitter(i))], max_tokens=n)
    assert done.wait(120)
    return results, ends


def test_preempted_sequences_recompute_to_the_same_output(smollm2):
    per_block = KVCache.bytes_per_token(ModelConfig.from_kv(smollm2.kv), cache_type("f16")) * B
    engine = ServingEngine(smollm2, n_ctx=256, kv_memory=7 * per_block, parallel=4, token_budget=48,
                           threads=2).start()
    try:
        prompts = [tokens(20 + 9 * i, 300 + 50 * i) for i in range(4)]     # 4 x ~3 blocks > 7 blocks
        results, ends = run_all(engine, prompts, 40)
        assert engine.scheduler.preemptions > 0
        for i, p in enumerate(prompts):
            assert results[i] == solo_greedy(smollm2, p, 40, engine.end_ids), f"sequence {i}"
            assert ends[i] == End("length", len(p), 40, ends[i].reused_tokens)
        assert engine.pool.in_use == 0
        with pytest.raises(PromptError, match="KV memory"):
            engine.submit(tokens(7 * B), [Choice(make_sampler(), lambda e: None)])
    finally:
        engine.close()


def test_a_failing_sampler_or_callback_ends_only_its_own_sequence(smollm2):
    from lanternlm.runtime.serving_engine import Failure

    engine = ServingEngine(smollm2, n_ctx=128, kv_memory=64 * 737280, parallel=4, token_budget=32,
                           threads=2).start()
    try:
        events = {i: [] for i in range(3)}
        done = threading.Event()

        def emitter(i):
            def emit(event):
                if i == 2 and isinstance(event, Token):
                    raise RuntimeError("the client's event loop is gone")
                events[i].append(event)
                if all(events[k] and not isinstance(events[k][-1], Token) for k in (0, 1)):
                    done.set()
            return emit
        calls = [0]

        def broken(logits, history):
            calls[0] += 1
            if calls[0] > 3:
                raise ValueError("a broken sampler")
            return int(np.argmax(logits))
        bias = {t: -100.0 for t in engine.end_ids}
        engine.submit(tokens(10, 400), [Choice(broken, emitter(0))], max_tokens=8)
        engine.submit(tokens(12, 600), [Choice(make_sampler(temperature=0, logit_bias=bias), emitter(1))], max_tokens=8)
        engine.submit(tokens(9, 800), [Choice(make_sampler(temperature=0), emitter(2))], max_tokens=8)
        assert done.wait(60)
        assert isinstance(events[0][-1], Failure) and "broken sampler" in events[0][-1].message
        assert len([e for e in events[0] if isinstance(e, Token)]) == 3
        assert events[1][-1] == End("length", 12, 8, 0)
        assert events[2] == []
        deadline = threading.Event()
        deadline.wait(0.2)
        assert engine.running == 0 and engine.pool.in_use == 0
        results, _ = run_all(engine, [tokens(12, 600)], 8)       # the engine still serves
        assert [e.token for e in events[1][:-1]] == results[0]
    finally:
        engine.close()
