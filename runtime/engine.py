"""The engine: a GGUF file in, logits out, with the KV cache kept between calls.

    eng = Engine.load(path, n_ctx=2048, threads=None, n_batch=512, kv_type="f16")
    logits = eng.eval(prompt_ids)        # f32 (n_vocab,): the last token's logits
    logits = eng.eval([next_id])         # appends at position eng.n_past
    eng.truncate(n); eng.reset()         # drop cached tokens past n / all of them
    every = eng.logits(ids)              # f32 (len(ids), n_vocab), from an empty cache

Three graphs are built and planned at load: decode (1 token), prefill (n_batch tokens, last
logits) and prefill_all (n_batch tokens, every token's logits). Long inputs run in chunks of
n_batch tokens.
"""
from __future__ import annotations

import os
import time
from typing import Sequence

import numba
import numpy as np

from .backends import get_backend
from .config import ModelConfig
from .executor import Executor, Program
from .graph import Graph
from .kv_cache import KVCache
from .models import get_architecture
from .thread_governor import ThreadGovernor
from .thread_safety import kernel_section


class ContextFullError(ValueError):
    """The tokens would not fit in the context window (n_ctx)."""


class Engine:
    def __init__(self, gguf_file, n_ctx: int = 2048, threads: int | None = None, n_batch: int = 512,
                 backend: str = "cpu", device: str | None = None, weights: str | None = None,
                 kv_type: str = "f16"):
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
        self.cfg = ModelConfig.from_kv(gguf_file.kv)
        self.n_ctx = n_ctx
        self.n_batch = min(n_batch, n_ctx)
        self.threads = self.governor.threads("decode") if self.governor else numba.get_num_threads()

        backend_cls = get_backend(backend, device=device, weights=weights)  # see runtime.backends
        # kv_type: the cache's element type, "f16" (llama.cpp's default --cache-type-k/v) or "f32";
        # a backend without `kv_dtype` keeps its cache in its own float type
        kv_dtype = backend_cls.kv_dtype(kv_type) if hasattr(backend_cls, "kv_dtype") else np.float32
        self.kv = KVCache.for_config(self.cfg, n_ctx, zeros=backend_cls.zeros, dtype=kv_dtype)
        self.backend = backend_cls(gguf_file.tensors, self.kv)
        arch = get_architecture(self.cfg.arch)
        shapes = {name: tuple(int(d) for d in ref.shape) for name, ref in gguf_file.tensors.items()}

        def build(n_tokens: int, all_logits: bool) -> Graph:
            g = Graph(self.cfg.arch, shapes, n_tokens, all_logits)
            arch.module.build(g, self.cfg)
            return g.finish()

        self.graphs = {"decode": build(1, False), "prefill": build(self.n_batch, False),
                       "prefill_all": build(self.n_batch, True)}
        with kernel_section():  # binding may convert small weights with parallel kernels
            self.executor = Executor(self.backend, self.graphs, self.n_batch)
            self.decode_program: Program = self.executor.program("decode", 1)

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
        ids = self._check_ids(ids)
        n = ids.shape[0]
        result = np.empty((n, self.cfg.n_vocab), dtype=np.float32) if all_logits else None
        logits = None
        with kernel_section():  # see thread_safety.py: engines in several threads
            for start in range(0, n, self.n_batch):
                chunk = ids[start:start + self.n_batch]
                t = chunk.shape[0]
                if all_logits:
                    prog = self.executor.program("prefill_all", t, out=result[start:start + t])
                elif t == 1:
                    prog = self.decode_program
                else:
                    prog = self.executor.program("prefill", t)
                prog.ids[:] = chunk
                prog.pos[:] = np.arange(self.kv.n_past, self.kv.n_past + t)
                self._run(prog, "decode" if t == 1 else "prefill")
                self.kv.n_past += t
                logits = prog.logits
        return result if all_logits else logits[0]

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

    def logits(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Every position's logits for `ids` from an empty cache: f32 (len(ids), n_vocab)."""
        self.reset()
        return self.eval(ids, all_logits=True)

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
