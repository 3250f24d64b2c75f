"""The engine: a GGUF file in, logits out, with the KV cache kept between calls.

    eng = Engine.load(path, n_ctx=2048, threads=None, n_batch=512, kv_type="f16")
    eng = Engine.load(path, cache_type_k="q8_0", cache_type_v="q4_0")   # a quantized KV cache
    eng = Engine.load(path, ram_budget="40%")   # weights past the budget stream from disk
    logits = eng.eval(prompt_ids)        # f32 (n_vocab,): the last token's logits
    logits = eng.eval([next_id])         # appends at position eng.n_past
    eng.truncate(n); eng.reset()         # drop cached tokens past n / all of them
    eng.shift(n_keep, n_discard)         # context shift: drop tokens after the first n_keep
    every = eng.logits(ids)              # f32 (len(ids), n_vocab), from an empty cache
    drafts, rows = eng.speculate(tok, k) # with eng.draft (a budget): k drafts, k rows of logits
    hidden = eng.embeddings(ids)         # f32 (len(ids), n_embd): final hidden states, ditto

Three graphs are built and planned at load: decode (1 token), prefill (n_batch tokens, last
logits) and prefill_all (n_batch tokens, every token's logits); a fourth, embed (n_batch tokens,
every token's hidden state after the output norm, no LM head), at the first embeddings() call.
Long inputs run in chunks of n_batch tokens.

With a RAM budget (bytes, or '300MB', '1.5GB', '40%' of the file) the cpu backend keeps only
that many bytes of weights in RAM and streams the rest from disk at every use
(runtime/weight_residency.py, backends/cpu_streaming.py), bit-identical to the in-RAM engine;
with an offload plan (`lantern offload`; found beside the model, or `offload_plan=PATH`) the
FFN is served sparsely from the plan's neuron bundles (backends/cpu_sparse.py). Where the budget
leaves the output head streaming, `draft` drafts tokens without it and `speculate` verifies
several with one read of it, bit-identical to decode (resident_draft.py; generate.py uses it).
"""
from __future__ import annotations

import os
import time
import warnings
from typing import Sequence

import numba
import numpy as np

from .backends import get_backend
from .config import ModelConfig
from .executor import Executor, Program
from .graph import Graph
from .kv_cache import KVCache, cache_type
from .memory_limits import InsufficientMemoryError, ensure_available
from .models import get_architecture
from .thread_governor import ThreadGovernor
from .thread_safety import kernel_section


class ContextFullError(ValueError):
    """The tokens would not fit in the context window (n_ctx)."""


class AutomaticBudgetWarning(UserWarning):
    """The model does not fit in the memory available: a RAM budget was chosen for it."""


# What a budget chosen automatically leaves for what is not allocated yet when it is chosen,
# besides the weights and the KV cache: the arena, scratch buffers, the kernels loaded from
# Numba's cache (the interpreter, numpy and Numba themselves are already counted in the memory
# available). Measured: qwen2.5-coder-0.5b under a 350 MiB cgroup cap chose 208 MiB and peaked
# at 330 MiB, with no allocation refused (benchmarks/bench_memory_cap.py).
AUTO_BUDGET_HEADROOM = 64 << 20

MAX_VERIFY = 8      # tokens one exact multi-token pass (Engine.verify) takes, at most


class ContextBeyondTrainingWarning(UserWarning):
    """n_ctx is longer than the context the model was trained on (`<arch>.context_length`)."""


def build_graph(cfg: ModelConfig, shapes, n_tokens: int, **flags) -> Graph:
    """The architecture's forward pass over up to n_tokens tokens (Graph's flags), checked
    against the file's tensor shapes."""
    g = Graph(cfg.arch, shapes, n_tokens, **flags)
    get_architecture(cfg.arch).module.build(g, cfg)
    return g.finish()


def tensor_shapes(gguf_file) -> dict[str, tuple[int, ...]]:
    return {name: tuple(int(d) for d in ref.shape) for name, ref in gguf_file.tensors.items()}


class Engine:
    def __init__(self, gguf_file, n_ctx: int = 2048, threads: int | None = None, n_batch: int = 512,
                 backend: str = "cpu", device: str | None = None, weights: str | None = None,
                 kv_type: str = "f16", ram_budget: int | str | None = None,
                 offload_plan: str | os.PathLike | bool | None = None, backend_class: type | None = None,
                 draft: bool | str | os.PathLike = True, cache_type_k: str | None = None, cache_type_v: str | None = None):
        if n_ctx < 1 or n_batch < 1:
            raise ValueError(f"n_ctx and n_batch must be positive, got n_ctx={n_ctx}, n_batch={n_batch}")
        if threads is not None:
            if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
                raise ValueError(f"threads must be 1..{numba.config.NUMBA_NUM_THREADS}, got {threads}")
            numba.set_num_threads(threads)
        # threads=None: as many as are faster while other processes use the cores, measured
        # per phase (prefill, decode) by thread_governor.py; a number fixes the count
        self.governor = (ThreadGovernor(numba.config.NUMBA_NUM_THREADS)
                         if threads is None and backend == "cpu" else None)
        self.gguf = gguf_file
        self._tokenizer = None
        self.cfg = ModelConfig.from_kv(gguf_file.kv)
        self.n_ctx = n_ctx
        self.n_batch = min(n_batch, n_ctx)
        self.threads = self.governor.threads("decode") if self.governor else numba.get_num_threads()

        self._arch = get_architecture(self.cfg.arch)
        self._arch.prepare_tensors(gguf_file.tensors, self.cfg)
        self._shapes = tensor_shapes(gguf_file)
        # The graphs first: building them checks the file's tensors against its metadata, before
        # any memory is sized from that metadata.
        graphs = {"decode": self._build(1), "prefill": self._build(self.n_batch),
                  "prefill_all": self._build(self.n_batch, all_logits=True)}

        # backend_class: a backend class used as given (offload calibration's FFN probe)
        backend_cls = backend_class or get_backend(backend, device=device, weights=weights)
        # the cache's types (kv_cache.CACHE_TYPES): kv_type for both keys and values, "f16" by
        # default as in llama.cpp; cache_type_k / cache_type_v (--cache-type-k/-v) for each
        kv_types = tuple(backend_cls.cache_storage(cache_type(name or kv_type))
                         for name in (cache_type_k, cache_type_v))
        self._check_context(n_ctx, backend_cls, kv_types)
        if ram_budget is None and backend_class is None and backend == "cpu" and gguf_file.path:
            from .resident_draft import draft_buffer_bytes

            extra = draft_buffer_bytes(self.cfg.n_vocab) if draft is True else 0
            ram_budget = self._automatic_budget(KVCache.nbytes_for(self.cfg, n_ctx, *kv_types) + extra)
        self.kv = KVCache.for_config(self.cfg, n_ctx, backend_cls.zeros, *kv_types)
        if ram_budget is None:
            self.backend = backend_cls(gguf_file.tensors, self.kv)
        else:
            if backend != "cpu":
                raise ValueError(f"a RAM budget streams weights on the cpu backend, not {backend!r}")
            from .weight_residency import streaming_backend
            self.backend = streaming_backend(gguf_file, self.kv, graphs, ram_budget, self.n_batch,
                                             plan=self._offload_plan(offload_plan),
                                             plan_named=offload_plan is not None, draft=draft is True)
        with kernel_section():  # binding may convert small weights with parallel kernels
            self.executor = Executor(self.backend, graphs, self.n_batch)
            self.graphs = self.executor.graphs
            self.decode_program: Program = self.executor.program("decode", 1)
            self._verify_logits = np.empty((min(MAX_VERIFY, self.n_batch), self.cfg.n_vocab), dtype=np.float32)
            self._verify_programs: dict[int, Program] = {}
            self.draft = self._draft(draft, ram_budget)

    def _draft(self, draft: bool | str | os.PathLike, ram_budget):
        """draft=True: under a budget where the head streams, drafts without it
        (resident_draft.py); "ngram": prompt lookup (ngram_draft.py); a GGUF path or catalog
        name (or "draft:" and one): a smaller model with the same vocabulary (model_draft.py);
        False: none."""
        if draft is True or draft is False:
            if ram_budget is not None and draft:
                from .resident_draft import resident_draft
                return resident_draft(self)
            return None
        if not isinstance(draft, (str, os.PathLike)):
            raise ValueError(f"draft must be True, False, 'ngram' or a draft model's path, got {draft!r}")
        if self.backend.name != "cpu" or hasattr(self.backend, "bind_ffn"):
            raise ValueError("drafts verified by the model need the cpu backend and no offload plan "
                             "(their verification must be exact)")
        if draft == "ngram":
            from .ngram_draft import NgramDraft
            return NgramDraft(min(MAX_VERIFY, self.n_batch))
        from ..formats.catalog import PullError, resolve
        from .model_draft import ModelDraft

        name = str(draft)
        name = name[len("draft:"):] if name.startswith("draft:") else name
        try:
            path = resolve(name)
        except PullError as exc:
            raise ValueError(f"draft model {name!r}: {exc}") from None
        return ModelDraft(self, path, min(MAX_VERIFY, self.n_batch))

    def _automatic_budget(self, kv_bytes: int) -> int | None:
        """None when the model file fits in the memory available (MemAvailable, or a cgroup's
        limit: a container, a memory-capped service) next to its KV cache (and a draft's
        buffers, which kv_bytes includes) and the runtime; else
        the bytes of weights that do fit, said in a warning, so the rest streams from disk
        instead of thrashing the page cache."""
        from .memory_limits import available_memory, format_bytes

        available = available_memory()
        file_bytes = os.path.getsize(self.gguf.path)
        if available is None:
            return None
        budget = available.bytes - kv_bytes - AUTO_BUDGET_HEADROOM
        if file_bytes <= budget:
            return None
        if budget <= 0:
            raise InsufficientMemoryError(
                f"{os.path.basename(self.gguf.path)} cannot run in the {format_bytes(available.bytes)} of memory "
                f"available ({available.source}): its KV cache and the runtime leave no room for weights")
        warnings.warn(f"{os.path.basename(self.gguf.path)} ({format_bytes(file_bytes)}) does not fit in the "
                      f"{format_bytes(available.bytes)} of memory available ({available.source}): keeping "
                      f"{format_bytes(budget)} of its weights in RAM and streaming the rest from disk "
                      f"(--ram-budget / ram_budget= sets this)", AutomaticBudgetWarning, stacklevel=3)
        return budget

    def _offload_plan(self, offload_plan):
        """The plan to serve the FFN with: a path, None (MODEL.offload.gguf beside the model if
        there is one), or False (none: dense streaming). Checked against this model file."""
        from ..offload.plan_file import check_plan_for_model, default_plan_path, read_plan

        if offload_plan is False:
            return None
        path = offload_plan or default_plan_path(self.gguf.path)
        if offload_plan is None and not os.path.isfile(path):
            return None
        plan = read_plan(path)
        check_plan_for_model(plan, self.gguf.path)
        return plan

    def _build(self, n_tokens: int, all_logits: bool = False, embeddings: bool = False,
               row_exact: bool = False) -> Graph:
        return build_graph(self.cfg, self._shapes, n_tokens, all_logits=all_logits, embeddings=embeddings,
                           row_exact=row_exact, n_ctx=self.n_ctx)

    def _check_context(self, n_ctx: int, backend_cls, kv_types) -> None:
        """Refuse a KV cache larger than the memory left where the backend keeps it; warn about
        a context longer than the model was trained on (as llama.cpp does)."""
        available = backend_cls.available_memory() if hasattr(backend_cls, "available_memory") else None
        ensure_available(KVCache.nbytes_for(self.cfg, n_ctx, *kv_types),
                         f"the KV cache for a context of {n_ctx} tokens", available,
                         advice="use a smaller context (--ctx, n_ctx)")
        if n_ctx > self.cfg.n_ctx_train:
            warnings.warn(f"a context of {n_ctx} tokens is longer than the {self.cfg.n_ctx_train} "
                          f"this model was trained on ({self.cfg.arch}.context_length); text past "
                          f"that is likely to degrade", ContextBeyondTrainingWarning, stacklevel=3)

    @property
    def tokenizer(self):
        """The file's tokenizer (formats.tokenizer), built once on first use and shared by
        whoever needs it (the draft's token order, Model): a large vocabulary's costs tens of
        MiB, which under a tight memory cap must not be paid twice. ValueError if the file's
        tokenizer is unsupported or missing."""
        if self._tokenizer is None:
            from ..formats.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.gguf.kv)
        return self._tokenizer

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs) -> Engine:
        from ..formats.gguf import read_gguf

        return cls(read_gguf(path), **kwargs)

    # ---- cache -----------------------------------------------------------------------------
    @property
    def n_past(self) -> int:
        """Tokens currently in the KV cache."""
        return self.kv.n_past

    def truncate(self, n: int) -> None:
        """Keep only the first `n` cached tokens; the next eval continues at position n."""
        self.kv.truncate(n)

    def reset(self) -> None:
        self.kv.reset()

    def warm_up(self) -> None:
        """Run a 2-token prefill and a decode step, then empty the cache, so that every kernel a
        generation needs is compiled (or loaded from Numba's cache) now rather than at the first
        real token. Only on an empty cache."""
        if self.n_past:
            raise ValueError("warm_up runs on an empty cache; call it right after loading")
        if self.n_batch >= 2 and self.n_ctx >= 3:
            self.eval([0, 0])
        self.eval([0])
        self.reset()

    # ---- evaluation ------------------------------------------------------------------------
    def eval(self, ids: Sequence[int] | np.ndarray, all_logits: bool = False) -> np.ndarray:
        """Append `ids` at positions n_past.. and return the last token's logits, f32 (n_vocab,)
        (an internal buffer, valid until the next call; a device tensor on the torch backend),
        or with `all_logits` a new f32 numpy array (len(ids), n_vocab) of every token's logits."""
        return self._evaluate(ids, "prefill_all" if all_logits else None)

    def logits(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Every position's logits for `ids` from an empty cache: f32 (len(ids), n_vocab)."""
        self.reset()
        return self.eval(ids, all_logits=True)

    def embeddings(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Every position's final hidden state (after the output norm, where the LM head would
        start) for `ids` from an empty cache: f32 (len(ids), n_embd)."""
        if "embed" not in self.graphs:     # most sessions never embed: no graph for it at load
            self.executor.add("embed", self._build(self.n_batch, embeddings=True))
        self.reset()
        return self._evaluate(ids, "embed")

    def _evaluate(self, ids, every_row: str | None) -> np.ndarray:
        """Evaluate `ids` in chunks of n_batch; with `every_row` (the key of an every-row graph)
        collect that graph's output for every token, else return the last token's logits."""
        ids = self._check_ids(ids)
        n = ids.shape[0]
        result = (np.empty((n, self.graphs[every_row].output.width), dtype=np.float32)
                  if every_row else None)
        logits = None
        with kernel_section():  # see thread_safety.py: engines in several threads
            for start in range(0, n, self.n_batch):
                chunk = ids[start:start + self.n_batch]
                t = chunk.shape[0]
                if every_row:
                    prog = self.executor.program(every_row, t, out=result[start:start + t])
                elif t == 1:
                    prog = self.decode_program
                else:
                    prog = self.executor.program("prefill", t)
                prog.ids[:] = chunk
                prog.place(self.kv.n_past)
                self._run(prog, "decode" if t == 1 else "prefill")
                self.kv.n_past += t
                logits = prog.logits
        return result if every_row else logits[0]

    def speculate(self, token: int, k: int, history: Sequence[int] = ()):
        """A drafting round: append `token` and the first m - 1 of m <= k drafted tokens to the
        cache; return (the m drafts, the model's logits f32 (m, n_vocab) at those m positions:
        after `token`, after each draft), each row bit-identical to what `eval` of the tokens
        one by one returns (an internal buffer, valid until the next call); or None, with
        nothing appended, when the draft has no proposal. `history`: the tokens so far, `token`
        last (prompt lookup reads it). Needs `draft` (resident_draft.py, ngram_draft.py); the
        caller truncates the cache after the first draft it rejects."""
        if self.draft is None:
            raise ValueError("this engine has no draft: load it with draft='ngram', or under a RAM budget "
                             "where the output head streams (resident_draft.py)")
        if not 1 <= k <= self.draft.max_draft:
            raise ValueError(f"k must be 1..{self.draft.max_draft}, got {k}")
        self._check_ids([token] * k)
        with kernel_section():
            return self.draft.speculate(self, token, k, history)

    def verify(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Append `ids` (at most MAX_VERIFY) and return every position's logits f32 (len(ids),
        n_vocab), each row bit-identical to what `eval` of the tokens one by one returns (a
        Graph.row_exact pass: matrices whose batched kernel sums in another order run one token
        at a time). An internal buffer, valid until the next call."""
        ids = self._check_ids(ids)
        t = ids.shape[0]
        if t > self._verify_logits.shape[0]:
            raise ValueError(f"verify takes at most {self._verify_logits.shape[0]} tokens, got {t}")
        prog = self._verify_programs.get(t)
        if prog is None:
            if "verify" not in self.graphs:
                if hasattr(self.backend, "bind_ffn"):
                    raise ValueError("exact verification is not available with an offload plan (its FFN is "
                                     "approximate); load with offload_plan=False")
                self.executor.add("verify", self._build(self._verify_logits.shape[0], all_logits=True,
                                                        row_exact=True))
            prog = self._verify_programs[t] = self.executor.program("verify", t, out=self._verify_logits[:t])
        with kernel_section():
            prog.ids[:] = ids
            prog.place(self.kv.n_past)
            self._run(prog, "prefill")
            self.kv.n_past += t
        return self._verify_logits[:t]

    def shift(self, n_keep: int, n_discard: int) -> None:
        """Context shift: keep the first n_keep cached tokens, drop the next n_discard, move the
        rest down and re-rotate their keys (context_shift.py); the next eval continues at the
        new n_past."""
        from .context_shift import key_ropes, shift_cache

        if n_keep < 0 or n_discard < 1 or n_keep + n_discard > self.n_past:
            raise ValueError(f"cannot drop {n_discard} tokens after the first {n_keep} of a cache of "
                             f"{self.n_past}")
        if self.backend.name != "cpu":
            raise ValueError(f"context shift runs on the cpu backend, not {self.backend.name!r}")
        ropes = key_ropes(self.graphs["decode"])
        if len(ropes) != self.cfg.n_layer:
            raise ValueError(f"{self.cfg.arch}: context shift needs rotary keys in every layer")
        with kernel_section():
            for layer, rope in ropes.items():
                cos, sin = self.backend.rope_table(rope.n_rot, rope.base, rope.freq_scale, rope.freq_factors,
                                                   rope.yarn)
                # a pure rotation: YaRN's tables carry its magnitude factor, which the keys have already
                mscale = np.float32(rope.yarn.mscale(rope.freq_scale))
                shift_cache(self.kv.k[layer], self.kv.v[layer], n_keep, n_discard, self.kv.n_past,
                            cos[n_discard] / mscale, sin[n_discard] / mscale, rope.n_rot, rope.neox,
                            self.kv.k_rotation)
            self.kv.n_past -= n_discard

    def _run(self, prog: Program, phase: str) -> None:
        """Run `prog` on the thread count for `phase`, timing it for the governor if there is one."""
        if self.governor:
            self.threads = self.governor.threads(phase)
        if numba.get_num_threads() != self.threads:  # the setting is per calling thread in Numba
            numba.set_num_threads(self.threads)
        if self.governor:
            start = time.perf_counter()
            prog.run()
            self.governor.record(phase, prog.t, time.perf_counter() - start)
        else:
            prog.run()

    def _check_ids(self, ids) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.ndim != 1 or arr.shape[0] == 0:
            raise ValueError(f"eval needs a non-empty 1-D sequence of token ids, got shape {arr.shape}")
        if arr.dtype.kind not in "iu":
            raise TypeError(f"token ids must be integers, got {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        bad = (arr < 0) | (arr >= self.cfg.n_vocab)
        if bad.any():
            raise ValueError(f"token id {int(arr[bad][0])} is outside the vocabulary (0..{self.cfg.n_vocab - 1})")
        if self.kv.n_past + arr.shape[0] > self.n_ctx:
            raise ContextFullError(f"{self.kv.n_past} cached + {arr.shape[0]} new tokens exceed the context "
                                   f"of {self.n_ctx} tokens")
        return arr

    def __repr__(self) -> str:
        return (f"Engine({self.cfg.arch}, n_layer={self.cfg.n_layer}, n_ctx={self.n_ctx}, "
                f"n_batch={self.n_batch}, n_past={self.n_past}, threads={self.threads})")
