"""The generation loop (KV prefix reuse, stop conditions, stop strings, UTF-8 streaming,
penalties over history, seeds) against a scripted engine and tokenizer.

FakeEngine's logits are a pure function of the tokens before each position (no real model),
so every expected output of the loop can be written down by hand.
"""
import codecs
from types import SimpleNamespace

import numpy as np
import pytest

from lanternlm.runtime.generate import (KVContext, StopStringMatcher, generate_step,
                                        stream_generate)
from lanternlm.runtime.sampling import make_sampler

GREEDY = dict(temperature=0.0)


class FakeEngine:
    """Engine contract: eval appends at n_past, truncate, reset, n_past, cfg.n_vocab.

    next_logits(tokens so far) -> (n_vocab,) logits. The returned array is one internal
    buffer overwritten by every call, like the real engine is allowed to do.
    """

    def __init__(self, n_vocab, next_logits, n_ctx=64):
        self.cfg = SimpleNamespace(n_vocab=n_vocab, n_ctx_train=n_ctx)
        self.next_logits = next_logits
        self.n_ctx = n_ctx
        self.tokens = []                # what the fake "KV cache" holds
        self.eval_calls = []            # every ids list eval received
        self.fail_next_eval = False
        self._buffer = np.zeros(n_vocab, dtype=np.float32)

    @property
    def n_past(self):
        return len(self.tokens)

    def eval(self, ids, all_logits=False):
        if self.fail_next_eval:
            self.fail_next_eval = False
            self.tokens.extend(ids[: len(ids) // 2])      # half-written, like an interrupted eval
            raise KeyboardInterrupt
        assert len(self.tokens) + len(ids) <= self.n_ctx, "fake engine context overflow"
        self.eval_calls.append(list(ids))
        self.tokens.extend(ids)
        self._buffer[:] = self.next_logits(self.tokens)
        return self._buffer

    def truncate(self, n):
        assert 0 <= n <= len(self.tokens)
        del self.tokens[n:]

    def reset(self):
        self.tokens.clear()

    @property
    def evaluated(self):
        return sum(len(c) for c in self.eval_calls)


def counting_logits(n_vocab):
    """A model that always predicts (last token + 1) mod n_vocab."""
    def next_logits(tokens):
        out = np.zeros(n_vocab, dtype=np.float32)
        out[(tokens[-1] + 1) % n_vocab] = 10.0
        return out
    return next_logits


class FakeTokenizer:
    """Each token id is a byte string from `pieces`; decoding is incremental UTF-8."""

    def __init__(self, pieces, eot_ids=()):
        self.pieces = [p.encode() if isinstance(p, str) else p for p in pieces]
        self.n_vocab = len(self.pieces)
        self.eot_ids = frozenset(eot_ids)

    def token_to_piece(self, token):
        return self.pieces[token]

    def decode(self, ids, skip_special=False):
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")

    def decoder(self):
        tok = self

        class Decoder:
            def __init__(self):
                self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

            def add(self, token):
                return self._utf8.decode(tok.pieces[token])

            def flush(self):
                return self._utf8.decode(b"", final=True)

        return Decoder()


def counting_setup(n_vocab=50, n_ctx=64):
    engine = FakeEngine(n_vocab, counting_logits(n_vocab), n_ctx=n_ctx)
    return engine, KVContext(engine, n_ctx)


def run_stream(context, tokenizer, prompt, **kw):
    sampler = make_sampler(**kw.pop("sampling", GREEDY))
    chunks = list(stream_generate(context, tokenizer, prompt, sampler, **kw))
    return "".join(c.text for c in chunks), chunks


# ------------------------------------------------------------------ generate_step

def test_greedy_steps_follow_the_model_and_evaluate_lazily():
    engine, ctx = counting_setup()
    tokens = list(generate_step(ctx, [1, 2], make_sampler(**GREEDY), max_tokens=5))
    assert tokens == [3, 4, 5, 6, 7]
    # The prompt in one call, then each token but the last (nobody asked for its successor).
    assert engine.eval_calls == [[1, 2], [3], [4], [5], [6]]
    assert ctx.ids == [1, 2, 3, 4, 5, 6] == engine.tokens


def test_max_tokens_zero_evaluates_nothing():
    engine, ctx = counting_setup()
    assert list(generate_step(ctx, [1, 2], make_sampler(**GREEDY), max_tokens=0)) == []
    assert engine.eval_calls == []


def test_full_context_ends_generation():
    engine, ctx = counting_setup(n_ctx=6)
    tokens = list(generate_step(ctx, [1, 2, 3], make_sampler(**GREEDY), max_tokens=None))
    # 3 prompt + 3 evaluated tokens fill the 6 slots; the 4th sample comes from the last logits.
    assert tokens == [4, 5, 6, 7]
    assert engine.n_past == 6


def test_second_prompt_evaluates_only_its_new_suffix():
    engine, ctx = counting_setup()
    first = list(generate_step(ctx, [1, 2], make_sampler(**GREEDY), max_tokens=3))  # 3 4 5
    assert first == [3, 4, 5]
    engine.eval_calls.clear()
    # Cache holds [1 2 3 4]; the new prompt extends it (previous reply + a new "message").
    out = list(generate_step(ctx, [1, 2, 3, 4, 5, 9, 10], make_sampler(**GREEDY), max_tokens=1))
    assert engine.eval_calls == [[5, 9, 10]]
    assert out == [11]


def test_diverging_prompt_truncates_to_common_prefix():
    engine, ctx = counting_setup()
    list(generate_step(ctx, [1, 2, 3, 4], make_sampler(**GREEDY), max_tokens=2))   # cache 1 2 3 4 5
    engine.eval_calls.clear()
    logits, reused = ctx.prefill([1, 2, 7, 8])
    assert reused == 2 and engine.eval_calls == [[7, 8]]
    assert engine.tokens == [1, 2, 7, 8] and int(np.argmax(logits)) == 9


def test_identical_prompt_reuses_everything_and_its_saved_logits():
    engine, ctx = counting_setup()
    first, _ = ctx.prefill([1, 2, 3])
    first = first.copy()
    list(generate_step(ctx, [1, 2, 3], make_sampler(**GREEDY), max_tokens=3))   # cache 1 2 3 4 5
    engine.eval_calls.clear()
    logits, reused = ctx.prefill([1, 2, 3])
    assert reused == 3 and engine.eval_calls == [] and engine.tokens == [1, 2, 3]
    np.testing.assert_array_equal(logits, first)


def test_shorter_prompt_re_evaluates_its_last_token_then_forgets_saved_logits():
    engine, ctx = counting_setup()
    ctx.prefill([1, 2, 3])
    engine.eval_calls.clear()
    logits, reused = ctx.prefill([1, 2])
    assert reused == 1 and engine.eval_calls == [[2]] and int(np.argmax(logits)) == 3
    _, reused = ctx.prefill([1, 2, 3])           # the logits saved for [1 2 3] are gone
    assert reused == 2 and engine.eval_calls == [[2], [3]]


def test_same_prompt_and_seed_repeat_even_if_one_token_evals_round_differently():
    # Tokens 0 and 1 tie; the one-token path adds a rounding-like nudge to token 1. Only a
    # generation that never re-evaluates the prompt's last token alone can repeat itself.
    def next_logits(tokens):
        out = np.zeros(4, dtype=np.float32)
        out[0] = out[1] = 1.0
        return out
    engine = FakeEngine(4, next_logits)
    real_eval = engine.eval
    def eval_with_path_noise(ids, all_logits=False):
        out = real_eval(ids)
        if len(ids) == 1:
            out[1] += 0.01
        return out
    engine.eval = eval_with_path_noise
    ctx = KVContext(engine, 64)
    runs = [list(generate_step(ctx, [2, 3], make_sampler(**GREEDY), max_tokens=3)) for _ in range(3)]
    assert runs[0][0] == 0 and runs[0] == runs[1] == runs[2]


def test_engine_used_behind_the_contexts_back_is_detected():
    engine, ctx = counting_setup()
    ctx.prefill([1, 2, 3])
    engine.reset()
    engine.eval([40, 41])                  # someone else's tokens
    engine.eval_calls.clear()
    _, reused = ctx.prefill([1, 2, 3, 4])
    assert reused == 0 and engine.eval_calls == [[1, 2, 3, 4]] and engine.tokens == [1, 2, 3, 4]


def test_interrupted_eval_keeps_what_the_cache_completed():
    engine, ctx = counting_setup()
    ctx.prefill([1, 2, 3])
    engine.fail_next_eval = True
    with pytest.raises(KeyboardInterrupt):
        ctx.prefill([1, 2, 3, 4, 5, 6])               # the engine completes 4, then stops
    assert ctx.ids == [1, 2, 3, 4] and engine.n_past == 4
    engine.eval_calls.clear()
    _, reused = ctx.prefill([1, 2, 3, 4, 5, 6, 7])
    assert reused == 4 and engine.eval_calls == [[5, 6, 7]]


def test_interrupted_eval_with_an_unexplained_cache_starts_clean():
    engine, ctx = counting_setup()
    ctx.prefill([1, 2, 3])
    real_eval = engine.eval

    def eval_that_loses_the_cache(ids, all_logits=False):
        engine.reset()
        raise KeyboardInterrupt
    engine.eval = eval_that_loses_the_cache
    with pytest.raises(KeyboardInterrupt):
        ctx.prefill([1, 2, 3, 4])
    assert ctx.ids == [] and engine.n_past == 0
    engine.eval = real_eval
    _, reused = ctx.prefill([1, 2])
    assert reused == 0 and engine.eval_calls[-1] == [1, 2]


@pytest.mark.parametrize("prompt, match", [
    ([], "empty"),
    (list(range(1, 66)), "65 tokens"),
    ([1, 50], "token id 50"),
    ([-1], "token id -1"),
])
def test_bad_prompts_raise_before_generation(prompt, match):
    engine, ctx = counting_setup()
    tok = FakeTokenizer(["x"] * 50)
    with pytest.raises(ValueError, match=match):
        stream_generate(ctx, tok, prompt, make_sampler(**GREEDY))
    assert engine.eval_calls == []


@pytest.mark.parametrize("bad", [-1, 2.5, "3"])
def test_bad_max_tokens(bad):
    _, ctx = counting_setup()
    with pytest.raises(ValueError, match="max_tokens"):
        stream_generate(ctx, FakeTokenizer(["x"] * 50), [1], make_sampler(**GREEDY), max_tokens=bad)


def test_repeat_penalty_sees_prompt_and_output_within_window():
    # Token 5 scores 2.0, token 6 scores 1.9, everything else 0. Repeat penalty 1.5 turns a
    # seen 5 into 1.33 and a seen 6 into 1.27.
    def next_logits(tokens):
        out = np.zeros(10, dtype=np.float32)
        out[5], out[6] = 2.0, 1.9
        return out
    def run(last_n):
        engine = FakeEngine(10, next_logits)
        s = make_sampler(temperature=0, repeat_penalty=1.5, repeat_last_n=last_n)
        return list(generate_step(KVContext(engine, 64), [5], s, max_tokens=5))
    # Window of 1: only the previous token is penalized -> alternate.
    assert run(1) == [6, 5, 6, 5, 6]
    # Window covering everything: both seen after step 1, 5's 1.33 beats 6's 1.27 forever.
    assert run(64) == [6, 5, 5, 5, 5]
    assert run(0) == [5, 5, 5, 5, 5]


def test_seeded_sampling_reproduces_through_the_loop():
    def next_logits(tokens):
        return np.random.default_rng(len(tokens) * 31 + tokens[-1]).normal(0, 1, 200).astype(np.float32)
    def run(seed):
        engine = FakeEngine(200, next_logits)
        s = make_sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed)
        return list(generate_step(KVContext(engine, 64), [1, 2], s, max_tokens=20))
    assert run(3) == run(3)
    assert run(3) != run(4)


# ------------------------------------------------------------------ stream_generate

def test_end_of_generation_token_stops_without_text_and_is_not_counted():
    engine, ctx = counting_setup(n_vocab=10)
    tok = FakeTokenizer([f"<{i}>" for i in range(10)], eot_ids={6})
    text, chunks = run_stream(ctx, tok, [2], max_tokens=10)
    assert text == "<3><4><5>"
    assert chunks[-1].finish_reason == "stop" and all(c.finish_reason is None for c in chunks[:-1])
    stats = chunks[-1].stats
    assert (stats.prompt_tokens, stats.completion_tokens) == (1, 3)
    assert engine.tokens == [2, 3, 4, 5]          # the end token was never evaluated


def test_max_tokens_finishes_with_length():
    _, ctx = counting_setup(n_vocab=10)
    tok = FakeTokenizer([f"<{i}>" for i in range(10)])
    text, chunks = run_stream(ctx, tok, [0], max_tokens=3)
    assert text == "<1><2><3>" and chunks[-1].finish_reason == "length"
    assert chunks[-1].stats.completion_tokens == 3


def test_stop_string_split_across_tokens_is_cut_and_never_emitted():
    pieces = ["Hel", "lo ", "wor", "ld", "!", "?"]
    _, ctx = counting_setup(n_vocab=len(pieces))
    tok = FakeTokenizer(pieces)
    text, chunks = run_stream(ctx, tok, [5], stop=["o wor"], max_tokens=6)
    assert text == "Hell"
    assert chunks[-1].finish_reason == "stop"
    assert all("o" not in c.text for c in chunks[1:])     # "o " was held back, then dropped
    assert chunks[-1].stats.completion_tokens == 3


def test_held_back_prefix_is_released_when_the_stop_never_completes():
    pieces = ["Hel", "lo ", "wor", "ld", "!", "?"]
    _, ctx = counting_setup(n_vocab=len(pieces))
    text, chunks = run_stream(ctx, FakeTokenizer(pieces), [5], stop=["ld?", "xyz"], max_tokens=5)
    assert text == "Hello world!"                          # tokens 0..4: Hel lo wor ld !
    assert chunks[-1].finish_reason == "length"
    # A trailing "l" and then "ld" could start "ld?": each waited for the next token.
    assert [c.text for c in chunks] == ["He", "llo ", "wor", "", "ld!", ""]


def test_earliest_of_several_stop_strings_wins():
    m = StopStringMatcher(["world", "lo"])
    assert m.feed("Hello world") == ("Hel", True)
    with pytest.raises(ValueError, match="non-empty"):
        StopStringMatcher([""])
    assert StopStringMatcher("ab").stops == ("ab",)


def test_multibyte_character_split_across_tokens_streams_whole():
    e_acute = "é".encode()
    pieces = [b"caf", e_acute[:1], e_acute[1:], b" ok"]
    _, ctx = counting_setup(n_vocab=len(pieces))
    text, chunks = run_stream(ctx, FakeTokenizer(pieces), [3], max_tokens=4)
    assert text == "café ok"
    assert all("\ufffd" not in c.text for c in chunks)
    assert [c.text for c in chunks][:3] == ["caf", "", "é"]


def test_abandoning_a_stream_keeps_the_cache_consistent():
    engine, ctx = counting_setup(n_vocab=10)
    tok = FakeTokenizer([f"<{i}>" for i in range(10)])
    stream = stream_generate(ctx, tok, [0], make_sampler(**GREEDY), max_tokens=8)
    next(stream), next(stream)
    stream.close()
    assert ctx.ids == engine.tokens == [0, 1]
