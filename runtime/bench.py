"""Throughput measurement: prefill and decode tokens/s, load time and memory.

The one protocol shared by `lantern bench` and the scripts in benchmarks/ (llama-bench's):

- pp (prefill): one `eval` of p token ids from an empty cache;
- tg (decode): n single-token `eval`s from an empty cache;
- a warm-up of both first (Numba compiles on first use), not counted, after which a runner may
  settle (`after_warm_up`: ours starts counting the thread counts it uses again);
- r repetitions of each, reported as tokens/s mean, std and best.

Tokenization and sampling are outside the measurement: the ids are fixed (seeded random ids in
[0, n_vocab)), so both engines in a comparison run the same work. Under a RAM budget (weights
streamed from disk) tg is instead greedy generation after a prose prompt, so that drafted
tokens can be verified, and an `offload` report adds the I/O figures per generated token. An engine is measured
through a `Runner`: anything with `reset()` (empty the cache) and `eval(ids)` (append ids and
run them, returning once the work is done). RUNNERS maps an engine's name to its loader.

Memory is read from /proc/self/status the same way for every engine, private (anon) and
file-backed pages apart (see `Memory`); both engines run in this process, so each one's figures
are the process's after its run, and the growth from just before its load.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from .kv_cache import cache_type


class Runner(Protocol):
    n_vocab: int

    def reset(self) -> None: ...

    def eval(self, ids: Sequence[int]) -> None: ...


# ---- timing ---------------------------------------------------------------------------------

def time_prefill(eval_fn: Callable[[Sequence[int]], object], ids: Sequence[int]) -> float:
    """Seconds for one call `eval_fn(ids)` (the caller sets up the cache)."""
    t0 = time.perf_counter()
    eval_fn(ids)
    return time.perf_counter() - t0


def time_decode(eval_fn: Callable[[Sequence[int]], object], ids: Sequence[int]) -> float:
    """Seconds for `eval_fn([id])` on each id in turn: len(ids) one-token steps."""
    t0 = time.perf_counter()
    for tok in ids:
        eval_fn([tok])
    return time.perf_counter() - t0


@dataclass(frozen=True)
class Throughput:
    """Repeated timings of the same `tokens` of work."""
    tokens: int
    seconds: tuple[float, ...]

    @property
    def samples(self) -> np.ndarray:
        return self.tokens / np.asarray(self.seconds, dtype=np.float64)

    @property
    def mean(self) -> float:
        return float(self.samples.mean())

    @property
    def std(self) -> float:
        """Sample standard deviation of tokens/s (0 for a single repetition), as llama-bench."""
        s = self.samples
        return float(s.std(ddof=1)) if s.size > 1 else 0.0

    @property
    def best(self) -> float:
        return float(self.samples.max())

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "mean": self.mean, "std": self.std, "best": self.best,
                "seconds": list(self.seconds)}


def bench_ids(n_vocab: int, n_prompt: int, n_gen: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed token ids for pp (n_prompt) and tg (n_gen): seeded, uniform in [0, n_vocab)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, n_vocab, n_prompt, dtype=np.int64),
            rng.integers(0, n_vocab, n_gen, dtype=np.int64))


def time_greedy(runner, prompt: Sequence[int], n: int) -> float:
    """Seconds for n greedy tokens after `prompt`'s prefill and first token (not timed)."""
    steps = runner.greedy_tokens(prompt, n + 1)
    next(steps)
    t0 = time.perf_counter()
    for _ in steps:
        pass
    return time.perf_counter() - t0


def measure(runner: Runner, prompt_ids: np.ndarray, gen_ids: np.ndarray, repetitions: int,
            progress: Callable[[str], None] = lambda msg: None,
            greedy_prompt: Sequence[int] | None = None) -> tuple[Throughput, Throughput]:
    """(pp, tg) over `repetitions`, after one uncounted warm-up of each. With `greedy_prompt`,
    tg is len(gen_ids) greedy steps after that prompt (time_greedy)."""
    if repetitions < 1:
        raise ValueError(f"repetitions must be >= 1, got {repetitions}")
    prompt = [int(t) for t in prompt_ids]
    gen = [int(t) for t in gen_ids]

    if not prompt or not gen:
        raise ValueError("measure needs at least one prompt id and one decode id")

    def one_round() -> tuple[float, float]:
        runner.reset()
        pp = time_prefill(runner.eval, prompt)
        runner.reset()
        if greedy_prompt is not None:
            return pp, time_greedy(runner, greedy_prompt, len(gen))
        return pp, time_decode(runner.eval, gen)

    progress("warm-up")
    one_round()
    getattr(runner, "after_warm_up", lambda: None)()
    pp_s, tg_s = [], []
    for i in range(repetitions):
        progress(f"repetition {i + 1}/{repetitions}")
        pp, tg = one_round()
        pp_s.append(pp)
        tg_s.append(tg)
    runner.reset()
    return Throughput(len(prompt), tuple(pp_s)), Throughput(len(gen), tuple(tg_s))


# ---- memory ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Memory:
    """A process's resident memory in MiB (Linux: /proc/self/status), measured the same way for
    every engine, in two kinds that mean different things:

    - anon (RssAnon): private memory -- heap, arrays, the KV cache, compiled code. Only swap
      could take it away: it is what running the model costs.
    - file (RssFile): resident pages of mapped files -- the model file, shared libraries. They
      are clean copies of files, which the OS drops when memory runs short and reads back on use.
    - peak (VmHWM): the largest total (anon + file + shmem) since the peak was last reset.
    """
    anon_mib: float
    file_mib: float
    peak_mib: float | None


_STATUS_FIELDS = {"RssAnon": "anon_mib", "RssFile": "file_mib", "VmHWM": "peak_mib"}


def read_memory(status_path: str = "/proc/self/status") -> Memory | None:
    """This process's Memory now, or None where the OS does not report it (not Linux)."""
    values = {}
    try:
        with open(status_path, encoding="utf-8", errors="replace") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in _STATUS_FIELDS:
                    values[_STATUS_FIELDS[key]] = int(rest.split()[0]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return Memory(**values) if len(values) == len(_STATUS_FIELDS) else None


def reset_peak() -> bool:
    """Start the peak (VmHWM) again from the current total (Linux 4.0+), so that the next
    engine's peak is its own; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


# ---- engines --------------------------------------------------------------------------------

def _greedy(logits, history) -> int:
    return int(np.argmax(logits))


class LanternRunner:
    """Our Engine as a Runner; waits for the device after each eval (a no-op on the CPU)."""

    def __init__(self, engine):
        self.engine = engine
        self.n_vocab = engine.cfg.n_vocab
        self._sync = getattr(engine.backend, "synchronize", lambda: None)

    def reset(self) -> None:
        self.engine.reset()

    def eval(self, ids) -> None:
        self.engine.eval(ids)
        self._sync()

    def greedy_tokens(self, prompt: Sequence[int], n: int) -> Iterator[int]:
        """n greedy tokens after `prompt` from an empty cache, generated as `lantern run` does
        (generate_step: drafts verified where the engine drafts, runtime/resident_draft.py)."""
        from .generate import KVContext, generate_step

        self.engine.reset()
        return generate_step(KVContext(self.engine, self.engine.n_ctx), prompt, _greedy, max_tokens=n)

    def after_warm_up(self) -> None:
        """Count thread use from here on: the repetitions, not the warm-up."""
        if self.engine.governor:
            self.engine.governor.clear_usage()

    def threads_used(self) -> dict[str, dict[int, int]] | None:
        """With threads=None: per phase, the tokens run on each thread count (thread_governor.py)."""
        governor = self.engine.governor
        return {phase: dict(counts) for phase, counts in governor.usage.items()} if governor else None


class LlamaCppRunner:
    """llama-cpp-python's `Llama` as a Runner: `eval` is its own `Llama.eval`."""

    def __init__(self, llm):
        self.llm = llm
        self.n_vocab = llm.n_vocab()

    def reset(self) -> None:
        self.llm.reset()             # n_tokens = 0; the next eval drops the cached positions

    def eval(self, ids) -> None:
        self.llm.eval(ids)


@dataclass(frozen=True)
class LoadOptions:
    threads: int | None       # None: the engine's own default (ours: chosen as it runs)
    n_ctx: int
    n_batch: int
    backend: str = "cpu"
    device: str | None = None
    ram_budget: int | str | None = None   # lantern only: weights past it stream from disk
    offload_plan: str | bool | None = None   # with ram_budget: Engine's offload_plan
    draft: bool | str = True                  # Engine's draft
    cache_type_k: str = "f16"                 # KV cache types (kv_cache.CACHE_TYPES)
    cache_type_v: str = "f16"


def load_lantern(path, opts: LoadOptions) -> tuple[LanternRunner, float]:
    """(runner, Engine.load wall seconds); the import is done before the clock starts."""
    from .engine import Engine

    t0 = time.perf_counter()
    engine = Engine.load(path, n_ctx=opts.n_ctx, threads=opts.threads, n_batch=opts.n_batch,
                         backend=opts.backend, device=opts.device, ram_budget=opts.ram_budget,
                         offload_plan=opts.offload_plan, draft=opts.draft, cache_type_k=opts.cache_type_k,
                         cache_type_v=opts.cache_type_v)
    return LanternRunner(engine), time.perf_counter() - t0


def require_llama_cpp():
    """The llama_cpp module, or a one-line error: llama-cpp-python is not a dependency."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise RuntimeError(f"--vs-llama-cpp needs llama-cpp-python, which is not importable ({exc})") from None
    return llama_cpp


def load_llama_cpp(path, opts: LoadOptions) -> tuple[LlamaCppRunner, float]:
    """(runner, Llama(...) wall seconds). llama-cpp-python is optional: a clear error without it."""
    llama_cpp = require_llama_cpp()
    t0 = time.perf_counter()
    # a quantized V cache needs llama.cpp's flash attention
    cache = {"type_k": cache_type(opts.cache_type_k).ggml_type, "type_v": cache_type(opts.cache_type_v).ggml_type,
             "flash_attn": cache_type(opts.cache_type_v).block > 1}
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=opts.n_ctx, n_batch=opts.n_batch,
                          n_ubatch=opts.n_batch, n_threads=opts.threads, n_threads_batch=opts.threads,
                          n_gpu_layers=0, logits_all=False, verbose=False, **cache)
    return LlamaCppRunner(llm), time.perf_counter() - t0


# engine name -> loader(path, LoadOptions) -> (Runner, load seconds)
RUNNERS: dict[str, Callable[..., tuple[Runner, float]]] = {
    "lantern": load_lantern,
    "llama.cpp": load_llama_cpp,
}


@dataclass(frozen=True)
class BenchResult:
    engine: str
    n_vocab: int
    pp: Throughput
    tg: Throughput
    load_s: float
    threads: int | None                  # None: chosen while running, see threads_used
    memory: Memory | None                # after the run; its peak is this engine's own
    memory_before: Memory | None         # just before the load
    threads_used: dict[str, dict[int, int]] | None = None
    offload: dict | None = None          # under a RAM budget: offload_report()
    draft: dict | None = None            # with draft="ngram" or a draft model (no budget): speculation_report()

    def growth(self, field: str) -> float | None:
        """MiB of `field` ("anon_mib", "file_mib") added from before the load to after the run."""
        if self.memory is None or self.memory_before is None:
            return None
        return getattr(self.memory, field) - getattr(self.memory_before, field)

    def as_dict(self) -> dict:
        memory = {}
        if self.memory is not None:
            memory = {"anon_mib": self.memory.anon_mib, "file_mib": self.memory.file_mib,
                      "peak_mib": self.memory.peak_mib, "anon_growth_mib": self.growth("anon_mib"),
                      "file_growth_mib": self.growth("file_mib")}
        used = self.threads_used and {phase: {str(n): tokens for n, tokens in counts.items()}
                                      for phase, counts in self.threads_used.items()}
        return {**({"offload": self.offload} if self.offload is not None else {}),
                **({"draft": self.draft} if self.draft is not None else {}),
                "threads": self.threads if self.threads is not None else "auto",
                "pp_tps": self.pp.mean, "pp_std": self.pp.std, "pp_best": self.pp.best,
                "tg_tps": self.tg.mean, "tg_std": self.tg.std, "tg_best": self.tg.best,
                "load_s": self.load_s, "memory": memory or None, "threads_used": used,
                "pp": self.pp.as_dict(), "tg": self.tg.as_dict()}


def bench_engine(engine: str, path, opts: LoadOptions, n_prompt: int, n_gen: int, repetitions: int,
                 seed: int = 0, progress: Callable[[str], None] = lambda msg: None,
                 vocab_check: int | None = None) -> BenchResult:
    """Load `engine` (a RUNNERS name) on `path` and measure it. With `vocab_check`, the
    engine must see that vocabulary size (the same ids must mean the same for both engines)."""
    peak_is_own = reset_peak()
    memory_before = read_memory()
    progress(f"{engine}: loading")
    runner, load_s = RUNNERS[engine](path, opts)
    if vocab_check is not None and runner.n_vocab != vocab_check:
        raise RuntimeError(f"{engine} sees {runner.n_vocab} vocabulary entries, expected {vocab_check}")
    prompt_ids, gen_ids = bench_ids(runner.n_vocab, n_prompt, n_gen, seed)
    streamed = opts.ram_budget is not None and engine == "lantern"
    verified = isinstance(opts.draft, str) and engine == "lantern"   # prompt lookup or a draft model
    greedy_prompt = prose_prompt(runner.engine) if streamed or verified else None
    pp, tg = measure(runner, prompt_ids, gen_ids, repetitions, progress=lambda m: progress(f"{engine}: {m}"),
                     greedy_prompt=greedy_prompt)
    offload = offload_report(runner, greedy_prompt, n_gen) if streamed else None
    speculation = speculation_report(runner, greedy_prompt, n_gen) if verified and not streamed else None
    memory = read_memory()
    if memory is not None and not peak_is_own:  # the process's peak, which may be another engine's
        memory = replace(memory, peak_mib=None)
    return BenchResult(engine, runner.n_vocab, pp, tg, load_s, opts.threads, memory, memory_before,
                       getattr(runner, "threads_used", lambda: None)(), offload, speculation)


# ---- offload ----------------------------------------------------------------------------------

PROSE_PROMPT_TOKENS = 64


def prose_prompt(engine, n_tokens: int = PROSE_PROMPT_TOKENS) -> list[int]:
    """The first n_tokens of the offload module's held-out prose (offload/texts/evaluation.txt)."""
    from ..offload.texts import read_text

    ids = engine.tokenizer.encode(read_text("evaluation"), add_special=True)
    return list(ids[:n_tokens])


def offload_report(runner: LanternRunner, greedy_prompt: Sequence[int], n_gen: int) -> dict:
    """I/O per generated token over one more greedy run of n_gen steps (after the timed ones).

    dense_read_bytes_per_token is what dense streaming (no plan) reads per evaluation at the same
    budget: every matrix that does not fit once, plus one row of each gathered table."""
    from .weight_residency import dense_read_bytes

    engine = runner.engine
    backend, draft = engine.backend, engine.draft
    steps = runner.greedy_tokens(greedy_prompt, n_gen + 1)
    next(steps)
    bytes0, seconds0 = backend.bytes_read, backend.read_seconds
    counts0 = draft.counts() if draft else None
    for _ in steps:
        pass
    read, read_s = backend.bytes_read - bytes0, backend.read_seconds - seconds0
    dense = dense_read_bytes(engine.gguf, engine.graphs, backend.ram_budget)
    return {"ram_budget_bytes": backend.ram_budget, "resident_bytes": backend.resident_bytes,
            "read_bytes_per_token": read / n_gen, "dense_read_bytes_per_token": dense,
            "cache_hit_rate": getattr(backend, "cache_hit_rate", None),   # neuron cache, with a plan
            "predictor_recall": None,       # the gate is computed in full: an exact predictor
            "read_gbps": read / read_s / 1e9 if read_s > 0 else None,
            "draft": draft_report(draft, counts0, n_gen) if draft else None}


def draft_report(draft, before: dict, n_gen: int) -> dict:
    """What drafting did over n_gen generated tokens (resident_draft.py, ngram_draft.py, model_draft.py):
    rounds that drafted, plain decode steps, drafted and kept tokens, and the tokens each pass
    gave (a round or a plain step: one read of the streamed head, one verification)."""
    d = {key: value - before[key] for key, value in draft.counts().items()}
    passes = d["rounds"] + d["plain_steps"]
    rows = getattr(draft, "token_ids", None)
    return {"kind": getattr(draft, "kind", "resident"), "head_rows": None if rows is None else int(rows.shape[0]),
            **d, "acceptance": d["kept"] / d["drafted"] if d["drafted"] else None,
            "mean_kept_per_round": d["kept"] / d["rounds"] if d["rounds"] else None,
            "tokens_per_pass": n_gen / passes if passes else None}


def speculation_report(runner: LanternRunner, greedy_prompt: Sequence[int], n_gen: int) -> dict:
    """draft_report over one more greedy run of n_gen tokens (an engine with draft='ngram' or a
    draft model), with its speed and the speed of the same run without drafts (the speedup)."""
    engine = runner.engine
    draft = engine.draft
    before = draft.counts()
    seconds = _greedy_seconds(runner, greedy_prompt, n_gen)
    report = draft_report(draft, before, n_gen)
    engine.draft = None
    try:
        plain = _greedy_seconds(runner, greedy_prompt, n_gen)
    finally:
        engine.draft = draft
    return {**report, "tok_s": n_gen / seconds, "plain_tok_s": n_gen / plain, "speedup": plain / seconds}


def _greedy_seconds(runner: LanternRunner, prompt: Sequence[int], n_gen: int) -> float:
    """Seconds of n_gen greedy decode steps after the prompt's prefill and first token."""
    steps = runner.greedy_tokens(prompt, n_gen + 1)
    next(steps)
    start = time.perf_counter()
    for _ in steps:
        pass
    return time.perf_counter() - start


__all__ = ["Runner", "Throughput", "time_prefill", "time_decode", "time_greedy", "bench_ids", "measure", "Memory",
           "read_memory", "reset_peak", "prose_prompt", "offload_report", "speculation_report", "LanternRunner", "LlamaCppRunner",
           "LoadOptions", "RUNNERS", "BenchResult",
           "bench_engine", "require_llama_cpp"]
