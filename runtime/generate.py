"""The generation loop every front end consumes: tokens (`generate_step`), then text
(`stream_generate`).

`KVContext` remembers which token ids the engine's KV cache holds. A new prompt that shares a
prefix with them only evaluates its new suffix, which is what makes a multi-turn chat prefill
just the latest message: the previous turn's prompt and reply are already in the cache.

`generate_step` yields sampled token ids until `max_tokens` or a full context; it knows
nothing of text. `stream_generate` decodes them incrementally, ends on end-of-generation
tokens and stop strings, and reports why it ended ("stop" or "length"). The CLI, the
`Model` facade and the benchmarks all sit on these two generators.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from .sampling import SamplerFn


class KVContext:
    """An engine plus the token ids its KV cache currently holds (`ids`, position order).

    The engine contract used: `eval(ids) -> logits of the last id` (appends at n_past),
    `truncate(n)`, `reset()`, `n_past`, `cfg.n_vocab`.
    """

    def __init__(self, engine, n_ctx: int):
        if n_ctx <= 0:
            raise ValueError(f"n_ctx must be positive, got {n_ctx}")
        self.engine = engine
        self.n_ctx = n_ctx
        self.n_vocab = int(engine.cfg.n_vocab)
        self.ids: list[int] = []
        self.evaluated_tokens = 0       # every token ever sent to engine.eval (for accounting)
        # (n, logits after ids[:n]) of the last prefill. Re-running the same prompt then needs
        # no eval at all, and gets bit-identical logits: re-evaluating its last token alone
        # would take the engine's one-token path, whose rounding differs from a batch's, and
        # a seeded generation would not repeat itself.
        self._prompt_logits: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def full(self) -> bool:
        return len(self.ids) >= self.n_ctx

    def invalidate(self) -> None:
        """Forget the cache (e.g. after someone else used the engine)."""
        self.engine.reset()
        self.ids.clear()
        self._prompt_logits = None

    def prefill(self, prompt_ids: Sequence[int]) -> tuple[np.ndarray, int]:
        """Bring the cache to exactly `prompt_ids`; return (last-position logits, reused count).

        Keeps the longest common prefix with what the cache holds and evaluates only the
        rest. The returned logits may be an internal array: read them, do not modify them.
        """
        prompt = self.check_prompt(prompt_ids)
        if self.engine.n_past != len(self.ids):        # engine used behind our back
            self.invalidate()
        common = common_prefix_length(self.ids, prompt)
        saved = self._prompt_logits
        if saved is not None and saved[0] == len(prompt) == common:
            self._truncate(common)
            return saved[1], common
        # Otherwise the last prompt token must be evaluated: its logits are what we sample.
        reused = min(common, len(prompt) - 1)
        self._truncate(reused)
        logits = self._eval(prompt[reused:])
        # (a torch backend's logits are a tensor, maybe on a GPU: cloned where they are)
        self._prompt_logits = (len(prompt), logits.copy() if isinstance(logits, np.ndarray) else logits.clone())
        return logits, reused

    def keep(self, n: int) -> None:
        """Keep the first `n` cached tokens (drop drafted tokens the caller did not take)."""
        if self.engine.n_past != len(self.ids):        # engine used behind our back
            self.invalidate()
        else:
            self._truncate(n)

    def shift(self, n_keep: int) -> None:
        """Context shift (Engine.shift): keep the first n_keep tokens and drop half of the rest."""
        n_discard = (len(self.ids) - n_keep) // 2
        if self.engine.n_past != len(self.ids):
            raise ValueError("the engine's cache is not this context's: nothing to shift")
        self.engine.shift(n_keep, n_discard)
        del self.ids[n_keep:n_keep + n_discard]
        self._prompt_logits = None

    def _truncate(self, n: int) -> None:
        if n < len(self.ids):
            self.engine.truncate(n)
            del self.ids[n:]
        if self._prompt_logits is not None and self._prompt_logits[0] > n:
            self._prompt_logits = None

    def append(self, token: int) -> np.ndarray:
        """Evaluate one more token at the end of the cache; return its logits."""
        if self.full:
            raise ValueError(f"the context of {self.n_ctx} tokens is full")
        return self._eval([token])

    def speculate(self, token: int, k: int, history: Sequence[int]):
        """Evaluate `token` and draft after it with the engine's draft (Engine.speculate): the
        cache then holds `token` and the first m - 1 of m <= k drafts; returns (m drafts, m logit
        rows), or None when the draft proposed nothing (nothing evaluated)."""
        if len(self.ids) + k > self.n_ctx:
            raise ValueError(f"{k} more tokens do not fit in the context of {self.n_ctx}")
        try:
            proposal = self.engine.speculate(token, k, history)
        except BaseException:
            self._keep_completed([])
            raise
        if proposal is not None:
            drafts = proposal[0]
            self.ids.extend([token, *drafts[:-1]])
            self.evaluated_tokens += len(drafts)
        return proposal

    def _eval(self, ids: list[int]) -> np.ndarray:
        try:
            logits = self.engine.eval(ids)
        except BaseException:
            self._keep_completed(ids)
            raise
        self.ids.extend(ids)
        self.evaluated_tokens += len(ids)
        return logits

    def _keep_completed(self, ids: list[int]) -> None:
        """After an eval of `ids` stopped part-way (Ctrl-C, an error): keep what the cache holds.

        The engine counts a chunk in n_past only once it has run, and a chunk writes keys and
        values at its own positions only, so the first n_past cached tokens are intact: those
        before this eval and the chunks of `ids` that completed. Keeping them spares the next
        prompt a prefill of the whole conversation. A count outside that range means the
        engine's state is unknown: start clean."""
        done = self.engine.n_past - len(self.ids)
        if not 0 <= done <= len(ids):
            self.invalidate()
            return
        self.ids.extend(ids[:done])
        self.evaluated_tokens += done

    def check_prompt(self, prompt_ids: Sequence[int]) -> list[int]:
        """`prompt_ids` as a list of ints, or ValueError if it cannot be generated from."""
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("the prompt is empty: at least one token is needed to generate from")
        if len(prompt) > self.n_ctx:
            raise ValueError(f"the prompt has {len(prompt)} tokens but the context holds {self.n_ctx} "
                             f"(load the model with a larger n_ctx or shorten the prompt)")
        low, high = min(prompt), max(prompt)
        if low < 0 or high >= self.n_vocab:
            bad = low if low < 0 else high
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.n_vocab})")
        return prompt


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class GenerationStats:
    """Counters of one generation, filled in while it runs."""

    prompt_tokens: int = 0        # length of the prompt
    reused_tokens: int = 0        # prompt tokens found already in the KV cache
    completion_tokens: int = 0    # generated tokens, end-of-generation token excluded
    prompt_seconds: float = 0.0   # prefill wall time (incl. the first sample)
    decode_seconds: float = 0.0   # wall time of the token-by-token steps after the first

    @property
    def prefill_tokens(self) -> int:
        """Prompt tokens actually evaluated by the engine."""
        return self.prompt_tokens - self.reused_tokens


def speed(tokens: int, seconds: float) -> str:
    return f"{tokens / seconds:.1f} tok/s" if seconds > 0 and tokens > 0 else "- tok/s"


def generation_summary(stats: GenerationStats) -> str:
    """One line of a generation's counters: generated tokens and decode speed, then prefill.

    Decode speed counts the steps after the first token (the first one's time is the
    prefill's), so it is what a longer answer would sustain.
    """
    decode_steps = max(stats.completion_tokens - 1, 0)
    return (f"{stats.completion_tokens} tokens, {speed(decode_steps, stats.decode_seconds)} | "
            f"prefill {stats.prefill_tokens} tokens, {speed(stats.prefill_tokens, stats.prompt_seconds)}")


def _check_max_tokens(max_tokens: int | None) -> None:
    if max_tokens is not None and (not isinstance(max_tokens, (int, np.integer)) or max_tokens < 0):
        raise ValueError(f"max_tokens must be an integer >= 0, or None for 'until the context is full'; "
                         f"got {max_tokens!r}")


def generate_step(context: KVContext, prompt_ids: Sequence[int], sampler: SamplerFn,
                  max_tokens: int | None = None,
                  stats: GenerationStats | None = None, context_shift: int | None = None) -> Iterator[int]:
    """Yield sampled token ids, one per step, continuing `prompt_ids`.

    Stops after `max_tokens` tokens (None: no limit) or when the context is full, unless
    `context_shift` is a number of tokens to keep: then a full context drops half of the tokens
    after those (KVContext.shift) and generation goes on; a consumer
    that wants to stop earlier (end-of-generation token, stop string) simply stops iterating.
    A token is only evaluated when the consumer asks for the next one, so the cache never
    holds a token the consumer rejected (an engine that drafts evaluates several tokens at a
    time, and drafts past the consumer's last token are dropped when it stops). The sampler sees
    the whole history (prompt + output) for its penalties.
    """
    _check_max_tokens(max_tokens)
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens = len(prompt_ids)
    if max_tokens == 0:
        return
    start = time.perf_counter()
    logits, stats.reused_tokens = context.prefill(prompt_ids)
    history = [int(t) for t in prompt_ids]
    pending = [sampler(logits, history)]
    stats.prompt_seconds = time.perf_counter() - start
    produced = 0
    dropped = 0       # tokens context shifts took out of the cache: it holds history less those
    try:
        while True:
            for token in pending:
                history.append(token)
                produced += 1
                yield token
            if max_tokens is not None and produced >= max_tokens:
                return
            if context.full:
                if context_shift is None or len(context) - context_shift < 2:
                    return
                before = len(context)
                context.shift(context_shift)
                dropped += before - len(context)
            start = time.perf_counter()
            room = context.n_ctx - len(context) if max_tokens is None else \
                min(max_tokens - produced, context.n_ctx - len(context))
            pending = _next_tokens(context, pending[-1], history, sampler, room)
            stats.decode_seconds += time.perf_counter() - start
    finally:
        # the cache holds what was yielded but the last token, never a draft nobody took
        if len(context) > len(history) - 1 - dropped:
            context.keep(len(history) - 1 - dropped)


def _next_tokens(context: KVContext, token: int, history: list[int], sampler: SamplerFn,
                 room: int) -> list[int]:
    """Evaluate `token` and sample what follows: one token, or, where the engine drafts
    (resident_draft.py, ngram_draft.py), up to `room` tokens of which all but the last are in
    the cache.

    With a draft, the sampler runs on the model's logits at each drafted position in turn, and
    the drafts are kept while its samples agree with them: every emitted token is sampled from
    the logits plain decode would give, in the same order, so the output is plain decode's."""
    draft = getattr(context.engine, "draft", None)
    k = min(draft.next_length(), room) if draft is not None else 1
    base = len(context)
    proposal = context.speculate(token, k, history) if k >= 2 else None
    if proposal is None:
        if draft is None:
            return [sampler(context.append(token), history)]
        start = time.perf_counter()
        logits = context.append(token)
        draft.timed_plain(time.perf_counter() - start)
        return [sampler(logits, history)]
    drafts, rows = proposal
    out: list[int] = []
    for j in range(len(drafts)):
        out.append(sampler(rows[j], history + out))
        if out[-1] != drafts[j]:
            break
    context.keep(base + len(out))
    draft.record(len(drafts), len(out), len(out) - (out[-1] != drafts[len(out) - 1]))
    return out


class StopStringMatcher:
    """Cuts a text stream at the first stop string, even one split across several pieces.

    `feed(piece)` returns (text safe to emit, stopped). Text that could be the beginning of
    a stop string is held back until the next piece settles it, so the stop string itself is
    never emitted.
    """

    def __init__(self, stops: Iterable[str] = ()):
        if isinstance(stops, str):
            stops = (stops,)
        self.stops = tuple(stops)
        for s in self.stops:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
        self.held = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        text = self.held + piece
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.held = ""
            return text[:cut], True
        keep = self._longest_stop_prefix_suffix(text)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self) -> str:
        """The held-back text, once the stream has ended without a stop string."""
        text, self.held = self.held, ""
        return text

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best


@dataclass(frozen=True)
class GenerationChunk:
    """One step of `stream_generate`.

    text: newly decoded text ("" while bytes of a character or a possible stop string are
    held back); token: the token sampled at this step (None on the closing chunk);
    finish_reason: "stop" or "length" on the last chunk, None before; stats: the
    generation's live counters (the same object on every chunk; final after the last).
    """

    text: str
    token: int | None
    finish_reason: str | None
    stats: GenerationStats


def stream_generate(context: KVContext, tokenizer, prompt_ids: Sequence[int], sampler: SamplerFn,
                    max_tokens: int | None = 128, stop: Iterable[str] = (),
                    stop_ids: Iterable[int] | None = None,
                    context_shift: int | None = None) -> Iterator[GenerationChunk]:
    """Generate text: decode `generate_step`'s tokens and stop on end tokens or stop strings.

    stop_ids defaults to the tokenizer's end-of-generation ids (`eot_ids`); such a token ends
    the generation with "stop" and is neither decoded nor counted. A stop string ends it
    with "stop" and is cut from the text. Running out of `max_tokens` or context ends it
    with "length". The last chunk always carries the finish reason.
    """
    _check_max_tokens(max_tokens)
    context.check_prompt(prompt_ids)          # fail here, not at the first next()
    texts = TextStream(tokenizer, stop)
    end_ids = frozenset(tokenizer.eot_ids if stop_ids is None else stop_ids)
    return _stream_generate(context, prompt_ids, sampler, max_tokens, texts, end_ids, context_shift)


class TextStream:
    """Generated tokens in, text out: decoded incrementally (a character split over tokens
    waits for its last byte) and cut at the first stop string, which is never emitted."""

    def __init__(self, tokenizer, stop: Iterable[str] = ()):
        self.matcher = StopStringMatcher(stop)
        self.decoder = tokenizer.decoder()

    def add(self, token: int) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string ended the text)."""
        return self.matcher.feed(self.decoder.add(token))

    def close(self) -> tuple[str, bool]:
        """The text still pending once generation ended, cut at a stop string if any."""
        text, stopped = self.matcher.feed(self.decoder.flush())
        return (text if stopped else text + self.matcher.flush()), stopped


def _stream_generate(context, prompt_ids, sampler, max_tokens, texts: TextStream, end_ids, context_shift):
    stats = GenerationStats()
    steps = generate_step(context, prompt_ids, sampler, max_tokens, stats, context_shift)
    try:
        for token in steps:
            if token in end_ids:
                yield GenerationChunk(texts.close()[0], None, "stop", stats)
                return
            stats.completion_tokens += 1
            text, stopped = texts.add(token)
            if stopped:
                yield GenerationChunk(text, token, "stop", stats)
                return
            yield GenerationChunk(text, token, None, stats)
    finally:
        steps.close()
    text, stopped = texts.close()
    yield GenerationChunk(text, None, "stop" if stopped else "length", stats)
