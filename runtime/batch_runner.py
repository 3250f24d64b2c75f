"""Runs one continuous-batching step (scheduler.Step) on the model: T tokens of many sequences.

The step's tokens go through the same forward pass as a prefill, built with selected output
rows (Graph.selected_rows): every matrix is one product over the T tokens (the weights are
read once per step, not once per sequence), attention writes and reads each token's own
sequence through its block table in the shared pool (kv_cache.py), and the LM head runs only
on the rows that are sampled: each decoding sequence's token and the last token of each
prompt that ends in this step.

    runner = BatchRunner(gguf_file, n_ctx=4096, n_blocks=512, max_sequences=8, token_budget=128)
    logits = runner.run(step)     # f32 (rows sampled, n_vocab), in the step's order

Each token's row is computed by the same kernels whatever else is in the batch, so a request
gets the same greedy output alone or beside others wherever the matrices' batched kernel is
row-independent (quant.QuantType.batch_invariant: the legacy and float types); the K- and
IQ-quant tiles sum in another order for one token than for several.
"""
from __future__ import annotations

import numpy as np

from .backends.cpu import CpuBackend
from .config import ModelConfig
from .engine import build_graph, tensor_shapes
from .executor import Executor
from .kv_cache import BLOCK_SHIFT, BLOCK_SIZE, CacheType, KVCache, cache_type
from .memory_limits import available_memory, ensure_available
from .models import get_architecture
from .scheduler import Step
from .thread_safety import kernel_section

# Programs bound for (tokens, sampled rows) pairs kept at once: decode-only steps repeat a few
# pairs; steps with prompt chunks vary more. Binding one costs a few milliseconds.
MAX_PROGRAMS = 96


class BatchRunner:
    def __init__(self, gguf_file, *, n_ctx: int, n_blocks: int, max_sequences: int, token_budget: int,
                 cache_type_k: str | CacheType = "f16", cache_type_v: str | CacheType = "f16"):
        self.cfg = ModelConfig.from_kv(gguf_file.kv)
        types = tuple(t if isinstance(t, CacheType) else cache_type(t) for t in (cache_type_k, cache_type_v))
        get_architecture(self.cfg.arch).prepare_tensors(gguf_file.tensors, self.cfg)
        graph = build_graph(self.cfg, tensor_shapes(gguf_file), token_budget, selected_rows=True, n_ctx=n_ctx)
        ensure_available(KVCache.bytes_per_token(self.cfg, *types) * n_blocks * BLOCK_SIZE,
                         f"a KV pool of {n_blocks} blocks", available_memory(), advice="use less KV memory (--kv-memory)")
        self.kv = KVCache.for_config(self.cfg, n_ctx, np.zeros, *types, n_blocks=n_blocks, n_seqs=max_sequences)
        self.backend = CpuBackend(gguf_file.tensors, self.kv)
        with kernel_section():
            self.executor = Executor(self.backend, {"step": graph}, token_budget, max_programs=MAX_PROGRAMS)

    def run(self, step: Step) -> np.ndarray:
        """Compute the step's tokens; return the logits of the rows it samples (an internal
        buffer, valid until the next run)."""
        t = step.n_tokens
        sampled = sum(w.samples for w in step.work)
        with kernel_section():
            # a step of prompt chunks only still computes one row of logits (a program has >= 1)
            prog = self.executor.program("step", t, rows=max(sampled, 1))
            prog.out_rows[0] = t - 1
            at = out = 0
            tables = self.kv.tables
            for index, w in enumerate(step.work):
                seq, end = w.seq, at + w.count
                blocks = np.asarray(seq.blocks, dtype=np.int64)
                tables[index, :len(blocks)] = blocks
                positions = np.arange(w.start, w.start + w.count)
                prog.ids[at:end] = seq.tokens[w.start:w.start + w.count]
                prog.pos[at:end] = positions
                prog.seq[at:end] = index
                prog.slots[at:end] = (blocks[positions >> BLOCK_SHIFT] << BLOCK_SHIFT) | (positions & (BLOCK_SIZE - 1))
                if w.samples:
                    prog.out_rows[out] = end - 1
                    out += 1
                at = end
            prog.run()
        return prog.logits[:sampled]
