"""Runs planned graphs: binds every node to backend kernels once, then loops over the calls.

All graphs of a model share one scratch arena (only one runs at a time), sized for the largest
plan. A `Program` is a graph bound for a given token count: its calls hold array views into
the arena, the KV cache and the weights, so `Program.run()` -- the hot function -- does nothing
but call kernels. The decode program is bound once; prefill programs are bound once per chunk
length; every-row programs (all logits, embeddings) are bound per call because they write into
the caller's array. A graph with selected rows (Graph.selected_rows) is bound per (t, r): t
tokens of which r are output rows.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from .graph import Graph, Kind, Tensor
from .planner import Plan, plan


class Program:
    """A graph bound to buffers for `t` tokens.

    ids, pos, seq, slots: int64 (t,) inputs the caller fills before `run()` (Graph's inputs;
    `place` fills seq and slots for a cache holding one sequence); out_rows: int64 (r,), the
    rows a selected-rows graph outputs;
    logits: f32 (rows, width) output view: logits (width n_vocab) or, for an embeddings graph,
    hidden states (width n_embd); rows = t for an every-row graph, r for a selected-rows one,
    else 1.
    """

    __slots__ = ("calls", "ids", "pos", "seq", "slots", "out_rows", "logits", "t", "views")

    def __init__(self, calls, inputs, logits, t, views):
        self.calls = calls
        self.ids, self.pos, self.seq, self.slots, self.out_rows = inputs
        self.logits = logits
        self.t = t
        self.views = views  # tensor name -> array view, for inspecting intermediates

    def place(self, start: int) -> None:
        """Positions start.. of the one sequence a cache with the identity table holds (the
        engine's): positions, sequence 0, cache rows = positions."""
        if self.t == 1:       # decode: no arrays made per token
            self.pos[0] = self.slots[0] = start
            self.seq[0] = 0
            return
        self.pos[:] = np.arange(start, start + self.t)
        self.seq[:] = 0
        self.slots[:] = self.pos

    def run(self) -> None:
        # The hot function: one Python-level call per kernel, nothing else.
        for fn, args in self.calls:
            fn(*args)


class Executor:
    def __init__(self, backend, graphs: Mapping[str, Graph], max_tokens: int, max_programs: int | None = None):
        """max_programs: how many bound programs to keep, least recently used dropped first
        (None: all; a batch graph is bound for many (tokens, rows) pairs)."""
        self.backend = backend
        self.max_programs = max_programs
        self.graphs = dict(graphs)
        self.plans: dict[str, Plan] = {key: plan(g) for key, g in self.graphs.items()}
        for key, g in self.graphs.items():
            if g.n_tokens > max_tokens:
                raise ValueError(f"graph {key!r} has {g.n_tokens} tokens; inputs hold {max_tokens}")
        self.arena = backend.zeros(max(p.size for p in self.plans.values()), np.float32)
        # the inputs (Graph.inputs): ids, pos, seq, slots, out_rows
        self.inputs = tuple(backend.zeros(max_tokens, np.int64) for _ in range(5))
        self._programs: dict[tuple[str, int, int | None], Program] = {}

    def add(self, key: str, graph: Graph) -> None:
        """Plan one more graph after construction. It shares the arena, which is not grown (bound
        programs view it), so it must fit: an every-row variant of a planned graph that computes
        less, such as an embeddings graph beside the all-logits one, does."""
        graph_plan = plan(graph)
        if graph_plan.size > self.arena.shape[0] or graph.n_tokens > self.inputs[0].shape[0]:
            raise ValueError(f"graph {key!r} needs {graph_plan.size} arena floats for {graph.n_tokens} tokens; "
                             f"the executor has {self.arena.shape[0]} for {self.inputs[0].shape[0]}")
        self.graphs[key] = graph
        self.plans[key] = graph_plan

    @property
    def arena_bytes(self) -> int:
        return self.arena.nbytes

    def program(self, key: str, t: int, out: np.ndarray | None = None, rows: int | None = None) -> Program:
        """`graph[key]` bound for `t` tokens (cached), or, for an every-row graph, bound to write
        its output into `out` (f32 (t, output width)), not cached; for a selected-rows graph,
        `rows` (1..t) output rows."""
        graph = self.graphs[key]
        if not 1 <= t <= graph.n_tokens:
            raise ValueError(f"graph {key!r} runs 1..{graph.n_tokens} tokens, not {t}")
        if graph.all_rows:
            if out is None:
                raise ValueError(f"graph {key!r} writes every row into a caller array: pass out")
            return self._bind(key, t, out, None)
        if graph.selected_rows != (rows is not None) or (rows is not None and not 1 <= rows <= t):
            raise ValueError(f"graph {key!r} {'selects' if graph.selected_rows else 'does not select'} "
                             f"output rows; got rows={rows} for {t} tokens")
        prog = self._programs.pop((key, t, rows), None)
        if prog is None:
            prog = self._bind(key, t, None, rows)
            if self.max_programs is not None and len(self._programs) >= self.max_programs:
                del self._programs[next(iter(self._programs))]
        self._programs[(key, t, rows)] = prog        # the most recently used last
        return prog

    def _bind(self, key: str, t: int, out: np.ndarray | None, rows: int | None) -> Program:
        graph, offsets = self.graphs[key], self.plans[key].offsets
        views: dict[str, np.ndarray] = {
            tensor.name: buf[:tensor.rows(t, rows)] for tensor, buf in zip(graph.inputs, self.inputs)}

        def view(tensor: Tensor) -> np.ndarray:
            v = views.get(tensor.name)
            if v is None:
                if tensor.kind is Kind.EXTERNAL:
                    v = out
                    expect = (tensor.rows(t), tensor.width)
                    if v.shape != expect or v.dtype != np.float32 or not v.flags.c_contiguous:
                        raise ValueError(f"output array must be C-contiguous float32 {expect}, got "
                                         f"{v.dtype} {v.shape}")
                else:
                    start = offsets[tensor.name]
                    planned_rows = tensor.rows(graph.n_tokens)
                    block = self.arena[start:start + planned_rows * tensor.width]
                    v = block.reshape(planned_rows, tensor.width)[:tensor.rows(t, rows)]
                views[tensor.name] = v
            return v

        # a backend may serve a layer's whole FFN block (offload's sparse FFN): `bind_ffn` gets
        # the block and the views of its input and four outputs, and returns calls or None
        bind_ffn = None if graph.row_exact else getattr(self.backend, "bind_ffn", None)
        blocks = {b.nodes[0]: b for b in graph.ffn_blocks} if bind_ffn else {}
        served: set = set()
        calls = []
        for node in graph.nodes:
            if node in served:
                continue
            block = blocks.get(node)
            if block is not None:
                block_calls = bind_ffn(block, view(block.x), tuple(view(n.out) for n in block.nodes), t)
                if block_calls is not None:
                    calls.extend(block_calls)
                    served.update(block.nodes)
                    continue
            srcs = tuple(view(s) for s in node.srcs)
            exact = {"row_exact": True} if graph.row_exact else {}    # only backends that verify
            calls.extend(self.backend.bind(node, view(node.out), srcs, t, **exact))
        inputs = tuple(views[tensor.name] for tensor in graph.inputs)
        return Program(calls, inputs, view(graph.output), t, views)
