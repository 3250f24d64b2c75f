"""The serving engine: one thread owns the model and runs continuous-batching steps.

    engine = ServingEngine(gguf_file, n_ctx=4096, kv_memory=256 << 20, parallel=8)
    engine.start()
    seqs = engine.submit(prompt_ids, [Choice(sampler, emit)], max_tokens=128)
    engine.cancel(seqs[0])        # a client went away: its blocks are free at the next step
    engine.close()

Callers (the HTTP layer, serve/) run in other threads: `submit` and `cancel` only put work in
an inbox under a lock and wake the loop; the loop thread alone touches the scheduler, the
pool and the kernels. What a sequence produces comes back through its `emit` callback, called
on the loop thread with a Token, an End or a Failure: the callback must only hand the event
over (e.g. loop.call_soon_threadsafe), never block.

Each step: new and cancelled requests are taken in, the scheduler (scheduler.py) picks the
tokens, the runner (batch_runner.py) computes them, and every sequence whose last token was
fed samples its next one with its own sampler. A step that raises fails the sequences in it,
not the process; a sampler that raises fails its own sequence.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence as Seq

import numpy as np

from .batch_runner import BatchRunner
from .kv_cache import BLOCK_SIZE, KVCache, blocks_for, cache_type
from .openai_shapes import TokenLogprob, token_logprob
from .paged_kv import BlockPool
from .scheduler import Scheduler, Sequence, Step, Work


class PromptError(ValueError):
    """A request that can never run: empty, out-of-vocabulary ids, longer than the context or
    the pool."""


class QueueFullError(RuntimeError):
    """The queue of waiting requests is full (HTTP 503)."""


@dataclass(frozen=True)
class Token:
    token: int
    logprob: TokenLogprob | None      # with Choice.n_top set


@dataclass(frozen=True)
class End:
    reason: str                       # "stop" (end-of-generation token) or "length"
    prompt_tokens: int
    completion_tokens: int
    reused_tokens: int                # prompt tokens the prefix cache supplied


@dataclass(frozen=True)
class Failure:
    message: str


@dataclass(eq=False)
class Choice:
    """One sequence to generate: how to sample it and where its events go."""
    sampler: Callable                 # (logits f32 (n_vocab,), history) -> token id
    emit: Callable                    # (Token | End | Failure) -> None, called on the loop thread
    n_top: int | None = None          # log-probabilities with this many alternatives; None: none
    submitted: float = field(default_factory=time.perf_counter)
    last_token_at: float | None = None
    done: bool = False


class EngineObserver:
    """What the engine reports as it runs (serve/metrics.py counts it); the default ignores it."""

    def admitted(self, prompt_tokens: int, reused_tokens: int) -> None: ...
    def first_token(self, seconds: float) -> None: ...
    def next_token(self, seconds: float) -> None: ...
    def step(self, tokens: int, sequences: int, seconds: float) -> None: ...
    def finished(self, reason: str) -> None: ...


class ServingEngine:
    def __init__(self, gguf_file, *, n_ctx: int = 4096, kv_memory: int = 256 << 20, parallel: int = 8,
                 token_budget: int = 128, queue_size: int = 64, threads: int | None = None,
                 cache_type_k: str = "f16", cache_type_v: str = "f16", observer: EngineObserver | None = None):
        from ..formats.tokenizer import load_tokenizer
        from .config import ModelConfig

        cfg = ModelConfig.from_kv(gguf_file.kv)
        if n_ctx < 2 or parallel < 1 or queue_size < 1:
            raise ValueError(f"need n_ctx >= 2, parallel >= 1 and queue_size >= 1; got {n_ctx}, {parallel}, {queue_size}")
        token_budget = max(token_budget, parallel)
        types = (cache_type(cache_type_k), cache_type(cache_type_v))
        per_block = KVCache.bytes_per_token(cfg, *types) * BLOCK_SIZE
        n_blocks = kv_memory // per_block
        if n_blocks < 1:
            raise ValueError(f"{kv_memory} bytes of KV memory hold no block of {BLOCK_SIZE} tokens "
                             f"({per_block} bytes for this model)")
        self.tokenizer = load_tokenizer(gguf_file.kv)
        self.gguf_kv = gguf_file.kv
        self.n_ctx = n_ctx
        self.n_vocab = cfg.n_vocab
        self.queue_size = queue_size
        self.threads = threads
        self.runner = BatchRunner(gguf_file, n_ctx=n_ctx, n_blocks=n_blocks, max_sequences=parallel,
                                  token_budget=token_budget, cache_type_k=types[0], cache_type_v=types[1])
        self.pool = BlockPool(n_blocks)
        self.scheduler = Scheduler(self.pool, parallel, token_budget, n_ctx)
        self.observer = observer or EngineObserver()
        self.end_ids = frozenset(self.tokenizer.eot_ids)
        self._wake = threading.Condition()
        self._inbox: list[Sequence] = []
        self._cancelled: list[Sequence] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0

    # ---- callers' side (any thread) -----------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        return self.pool.n_blocks

    @property
    def queue_length(self) -> int:
        return len(self._inbox) + len(self.scheduler.waiting)

    @property
    def running(self) -> int:
        return len(self.scheduler.running)

    def check_prompt(self, prompt_ids: Seq[int]) -> list[int]:
        """The prompt as a list of ints, or PromptError saying why it can never run."""
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise PromptError("the prompt is empty")
        bad = [t for t in prompt if not 0 <= t < self.n_vocab]
        if bad:
            raise PromptError(f"token id {bad[0]} is outside the vocabulary [0, {self.n_vocab})")
        if len(prompt) >= self.n_ctx:
            raise PromptError(f"the prompt has {len(prompt)} tokens, but the context holds {self.n_ctx} "
                              f"(and at least one generated token must fit): shorten it")
        if blocks_for(len(prompt) + 1) > self.pool.n_blocks:
            raise PromptError(f"the prompt has {len(prompt)} tokens, more than the KV memory holds "
                              f"({self.pool.n_blocks * BLOCK_SIZE} tokens; --kv-memory)")
        return prompt

    def submit(self, prompt_ids: Seq[int], choices: Seq[Choice], max_tokens: int | None = None) -> list[Sequence]:
        """Queue one sequence per choice, all continuing `prompt_ids`; max_tokens None: until the
        context is full. PromptError / QueueFullError before anything is queued."""
        prompt = self.check_prompt(prompt_ids)
        limit = self.n_ctx if max_tokens is None else max_tokens
        if limit < 1:
            raise PromptError(f"max_tokens must be at least 1, got {max_tokens}")
        seqs = [Sequence(list(prompt), len(prompt), limit, owner=choice) for choice in choices]
        with self._wake:
            if self._stopping:
                raise QueueFullError("the server is shutting down")
            if self.queue_length + len(seqs) > self.queue_size:
                raise QueueFullError(f"{self.queue_length} requests are waiting (the queue holds {self.queue_size})")
            self._inbox.extend(seqs)
            self._wake.notify()
        return seqs

    def cancel(self, seq: Sequence) -> None:
        """Stop generating `seq` (its client is gone); its blocks are freed at the next step."""
        with self._wake:
            if not seq.owner.done:
                self._cancelled.append(seq)
                self._wake.notify()

    def start(self) -> ServingEngine:
        """Start the loop thread; return once it has run a prompt chunk and a decode step, so
        that their kernels are compiled (or loaded from Numba's cache) before any request.

        Every kernel runs on the loop thread, the warm-up included: OpenMP keeps a team of
        worker threads for each thread that launches parallel kernels, and with a second team
        spinning beside it on 2 cores a SmolLM2 decode step took 35 ms instead of 5 (measured)."""
        if self._thread is None:
            ready = threading.Event()
            failed: list[BaseException] = []
            self._thread = threading.Thread(target=self._loop, args=(ready, failed), name="lantern-engine",
                                            daemon=True)
            self._thread.start()
            ready.wait()
            if failed:
                self._thread = None
                raise failed[0]
        return self

    def _warm_up(self) -> None:
        """A 2-token prompt chunk and a decode step, written to the pool's block 0, which
        nothing holds yet."""
        seq = Sequence([0, 0, 0], 3, 1, blocks=[0])
        for work in (Work(seq, 0, 2), Work(seq, 2, 1)):
            self.runner.run(Step([work], []))

    def close(self) -> None:
        """Stop the loop; sequences still running end with a Failure."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for seq in list(self.scheduler.running) + list(self.scheduler.waiting) + self._inbox:
            self._fail(seq, "the server shut down")
        self._inbox.clear()

    # ---- the loop thread ----------------------------------------------------------------------
    def _loop(self, ready: threading.Event, failed: list) -> None:
        import numba

        try:
            if self.threads is not None:       # Numba's thread count is per calling thread
                numba.set_num_threads(self.threads)
            self._warm_up()
        except BaseException as exc:
            failed.append(exc)
            return
        finally:
            ready.set()
        while True:
            with self._wake:
                while not (self._stopping or self._inbox or self._cancelled or not self.scheduler.idle):
                    self._wake.wait()
                if self._stopping:
                    return
                new, self._inbox = self._inbox, []
                cancelled, self._cancelled = self._cancelled, []
            for seq in cancelled:
                if not seq.owner.done:
                    seq.owner.done = True
                    self.scheduler.remove(seq)
                    self.observer.finished("cancelled")
            for seq in new:
                if seq.owner.done:
                    continue
                self.scheduler.add(seq)
            try:
                if not self.step():      # nothing could run (blocks held elsewhere): do not spin
                    with self._wake:
                        self._wake.wait(0.005)
            except Exception as exc:  # a bug must not take the server down: fail what is in flight
                message = f"the engine failed: {type(exc).__name__}: {exc}"
                for seq in list(self.scheduler.running) + list(self.scheduler.waiting):
                    self._fail(seq, message)

    def step(self) -> bool:
        """One scheduling step and its samples (the loop's body); False if nothing ran."""
        step = self.scheduler.schedule()
        for seq in step.ended:
            self._end(seq, "length")
        if not step.work:
            return False
        started = time.perf_counter()
        try:
            logits = self.runner.run(step)
        except Exception as exc:  # a kernel error fails this step's sequences, not the server
            for w in step.work:
                self._fail(w.seq, f"the model failed: {type(exc).__name__}: {exc}")
            return True
        self.scheduler.computed(step)
        row = 0
        for w in step.work:
            if w.samples:
                self._sample(w.seq, logits[row])
                row += 1
        self.steps += 1
        self.observer.step(step.n_tokens, len(step.work), time.perf_counter() - started)
        return True

    def _sample(self, seq: Sequence, logits: np.ndarray) -> None:
        choice: Choice = seq.owner
        try:
            token = int(choice.sampler(logits, seq.tokens))
            record = token_logprob(logits, token, choice.n_top) if choice.n_top is not None else None
        except Exception as exc:
            self._fail(seq, f"sampling failed: {type(exc).__name__}: {exc}")
            return
        now = time.perf_counter()
        if choice.last_token_at is None:
            self.observer.first_token(now - choice.submitted)
            self.observer.admitted(seq.n_prompt, seq.reused)
        else:
            self.observer.next_token(now - choice.last_token_at)
        choice.last_token_at = now
        if token in self.end_ids:
            self._end(seq, "stop")
            return
        seq.tokens.append(token)
        if not self._emit(seq, Token(token, record)):
            return
        if seq.n_generated >= seq.max_new or len(seq.tokens) > self.n_ctx:
            self._end(seq, "length")

    def _end(self, seq: Sequence, reason: str) -> None:
        self._finish(seq, reason, End(reason, seq.n_prompt, seq.n_generated, seq.reused))

    def _fail(self, seq: Sequence, message: str) -> None:
        self._finish(seq, "error", Failure(message))

    def _finish(self, seq: Sequence, reason: str, event) -> None:
        """Take `seq` out (its blocks freed) and send its last event, once."""
        if seq.owner.done:
            return
        seq.owner.done = True
        self.scheduler.remove(seq)
        self.observer.finished(reason)
        self._emit(seq, event)

    def _emit(self, seq: Sequence, event) -> bool:
        """Hand `event` to the sequence's callback; a callback that raises (its event loop is
        gone) ends the sequence instead of the loop. False if it raised."""
        try:
            seq.owner.emit(event)
            return True
        except Exception:
            if not seq.owner.done:
                seq.owner.done = True
                self.scheduler.remove(seq)
                self.observer.finished("cancelled")
            return False
