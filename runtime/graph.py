"""A ggml-like computation graph: a list of ops over named 2-D float tensors.

An architecture module builds the graph once per (model, token count) by calling the builder
methods below in forward order; nothing is computed here. Tensors are (rows, width) float32
matrices whose rows are the tokens of the batch (`per_token`) or a single row (after
`output_rows` picks the last token). Weights are referred to by their GGUF names and
activations are named after the weight that produced them (`blk.3.attn_q` is the output of
`blk.3.attn_q.weight`), so any intermediate can be compared with llama.cpp's by name.

The graph knows weight shapes (to check the model code against the file) but no data and no
kernels: a backend binds each node to its kernels (runtime.backends) and the planner places
activations in one scratch arena (runtime.planner).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .backends.rope_table import NO_YARN, Yarn


class Op(enum.Enum):
    GET_ROWS = "get_rows"    # weights: (table,); srcs: (ids,)            -> table rows, dequantized
    MUL_MAT = "mul_mat"      # weights: (W (rows, n),); srcs: (x (T, n),)  -> x @ W.T
    ADD = "add"              # srcs: (a, b) same shape                    -> a + b
    ADD_BIAS = "add_bias"    # weights: (bias (n,),); srcs: (x (T, n),)   -> x + bias on every row
    SCALE = "scale"          # srcs: (x,); params: s                      -> x * s
    SOFTCAP = "softcap"      # srcs: (x,); params: cap                    -> cap * tanh(x / cap)
    RMS_NORM = "rms_norm"    # weights: (w (g,),); srcs: (x,); params: eps -> each g-wide group of a
                             #   row divided by its root mean square, then times w
    ROPE = "rope"            # srcs: (x, pos); params: head_dim, n_rot, base, freq_scale, neox,
                             #   freq_factors (a weight's name or None), yarn
    ATTENTION = "attention"  # srcs: (q, k, v, pos, seq, slots); params: layer, n_head, n_head_kv,
                             #   head_dim, head_dim_v, scale, window, softcap. Writes k, v to the
                             #   layer's KV cache at rows `slots`, then causal softmax(c(q.k * scale))
                             #   @ v over the positions of each token's sequence `seq` (read through
                             #   its block table, kv_cache.py), c(s) = softcap * tanh(s / softcap)
                             #   (c(s) = s if softcap is 0).
    MOE_FFN = "moe_ffn"      # weights: (router (n_expert, n), gate, up (n_expert, n_ff, n), down
                             #   (n_expert, n, n_ff)); srcs: (x (T, n),); params: n_used, norm ->
                             #   per token, the n_used experts with the largest softmax(router x):
                             #   sum of w_e * down_e(silu(gate_e x) * up_e x), w renormalized if norm
    SWIGLU = "swiglu"        # srcs: (gate, up)                           -> silu(gate) * up
    GEGLU = "geglu"          # srcs: (gate, up)                           -> gelu_tanh(gate) * up
    LAST_ROW = "last_row"    # srcs: (x (T, n),)                          -> x[T-1:T]
    SELECT_ROWS = "select_rows"  # srcs: (x (T, n), rows (R,))            -> x[rows] (R, n)


# Ops whose output may overwrite their first source in place (every backend kernel for them
# must be alias-safe): the planner reuses the source's buffer when this op is its last reader.
INPLACE_OPS = frozenset({Op.ADD, Op.ADD_BIAS, Op.SCALE, Op.SOFTCAP, Op.RMS_NORM, Op.ROPE, Op.SWIGLU, Op.GEGLU})


class Kind(enum.Enum):
    INPUT = "input"            # token ids, positions, ...: 1-D int arrays filled by the engine
    ACTIVATION = "activation"  # float32 (rows, width) in the planner's arena
    EXTERNAL = "external"      # an every-row output (all logits, embeddings): written into the caller's array


@dataclass(eq=False)
class Tensor:
    name: str
    width: int
    per_token: bool = True
    kind: Kind = Kind.ACTIVATION
    selected: bool = False   # rows picked by SELECT_ROWS: as many as the program selects (<= T)

    def rows(self, n_tokens: int, n_selected: int | None = None) -> int:
        if self.selected and n_selected is not None:
            return n_selected
        return n_tokens if self.per_token else 1

    def __repr__(self) -> str:
        return f"Tensor({self.name!r}, {'T' if self.per_token else 1}x{self.width})"


@dataclass(eq=False)
class Node:
    op: Op
    out: Tensor
    srcs: tuple[Tensor, ...]
    weights: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class FFNBlock:
    """One layer's gated feed-forward, built by `Graph.ffn`: out = down(act(gate(x)) * up(x)).

    The four nodes stay ordinary graph nodes (gate, up, act, down, in that order) that any
    backend runs one by one; a backend with a `bind_ffn` method may instead serve the block
    whole (the offload module's sparse FFN), using the nodes' planned buffers."""
    layer: int
    act: Op                            # Op.SWIGLU or Op.GEGLU
    x: Tensor                          # (T, n_embd) input, normalized
    nodes: tuple[Node, Node, Node, Node]

    @property
    def weights(self) -> tuple[str, str, str]:
        """(gate, up, down) weight names."""
        return self.nodes[0].weights[0], self.nodes[1].weights[0], self.nodes[3].weights[0]

    @property
    def out(self) -> Tensor:
        return self.nodes[3].out


class GraphError(ValueError):
    """The model code and the GGUF file disagree (missing tensor, wrong shape)."""


class MissingTensorsError(GraphError):
    def __init__(self, arch: str, missing: Sequence[str]):
        self.missing = list(missing)
        super().__init__(f"{arch}: the GGUF file lacks {len(self.missing)} tensor(s) the model needs: "
                         + ", ".join(self.missing[:12]) + (" ..." if len(self.missing) > 12 else ""))


class Graph:
    """One forward pass over up to `n_tokens` tokens.

    `all_logits` False: the logits of the last token only (rows == 1); True: logits for every
    token. `embeddings` True: instead of logits, every token's final hidden state (after the
    output norm, llama.cpp's "embeddings"); the LM head is left out. Every-row outputs
    (`all_rows`) are written into a caller-supplied array (`Kind.EXTERNAL`). `row_exact` True:
    every token's row must be bit-identical to a one-token pass over it (verifying drafts), so
    backends run matrices whose batched kernel sums in another order one token at a time.
    `selected_rows` True: the output rows are the tokens the `inp_out_rows` input lists (a
    batch of several sequences: each one's last token), chosen when the program is bound.

    Inputs, filled by the engine before each run: the tokens' ids, their positions in their
    sequences, their sequences (rows of the KV cache's block tables) and the cache rows their
    keys and values go to (for a cache holding one sequence: 0 and the positions).
    """

    def __init__(self, arch: str, weight_shapes: Mapping[str, tuple[int, ...]], n_tokens: int,
                 all_logits: bool = False, embeddings: bool = False, row_exact: bool = False,
                 selected_rows: bool = False, n_ctx: int = 0):
        if n_tokens < 1:
            raise ValueError(f"a graph needs at least one token, got n_tokens={n_tokens}")
        self.arch = arch
        self.weight_shapes = weight_shapes
        self.n_tokens = n_tokens
        self.all_logits = all_logits
        self.embeddings = embeddings
        self.row_exact = row_exact
        self.n_ctx = n_ctx          # positions a sequence may hold (0: not said); phi3 picks its rope by it
        self.selected_rows = selected_rows and not (all_logits or embeddings)
        self.all_rows = all_logits or embeddings
        self.nodes: list[Node] = []
        self.ids = Tensor("inp_tokens", 1, kind=Kind.INPUT)  # (T,) token ids
        self.pos = Tensor("inp_pos", 1, kind=Kind.INPUT)     # (T,) positions in the sequence
        self.seq = Tensor("inp_seq", 1, kind=Kind.INPUT)     # (T,) each token's sequence
        self.slots = Tensor("inp_slots", 1, kind=Kind.INPUT)  # (T,) each token's KV cache row
        self.out_rows = Tensor("inp_out_rows", 1, kind=Kind.INPUT, selected=True)  # (R,) selected rows
        self.output: Tensor | None = None
        self.missing: list[str] = []
        self.ffn_blocks: list[FFNBlock] = []
        self._names: set[str] = {t.name for t in self.inputs}

    @property
    def inputs(self) -> tuple[Tensor, ...]:
        return self.ids, self.pos, self.seq, self.slots, self.out_rows

    # ---- weights ----------------------------------------------------------------------
    def has_weight(self, name: str) -> bool:
        return name in self.weight_shapes

    def _weight(self, name: str) -> tuple[int, ...] | None:
        """The weight's shape, or None (recorded as missing) when the file lacks it."""
        shape = self.weight_shapes.get(name)
        if shape is None and name not in self.missing:
            self.missing.append(name)
        return shape

    def _check(self, ok: bool, message: str) -> None:
        # after a missing weight, widths are placeholders: report the missing tensors instead
        if not ok and not self.missing:
            raise GraphError(f"{self.arch}: {message}")

    # ---- nodes ------------------------------------------------------------------------
    def _node(self, op: Op, name: str, width: int, srcs, weights=(), per_token=None, **params) -> Tensor:
        if name in self._names:
            raise GraphError(f"{self.arch}: two graph tensors are named {name!r}")
        self._names.add(name)
        if per_token is None:
            per_token = all(s.per_token for s in srcs)
        out = Tensor(name, width, per_token, selected=any(s.selected for s in srcs))
        self.nodes.append(Node(op, out, tuple(srcs), tuple(weights), params))
        return out

    @staticmethod
    def _stem(weight: str) -> str:
        return weight[: -len(".weight")] if weight.endswith(".weight") else weight

    def get_rows(self, table: str, name: str = "inp_embd") -> Tensor:
        shape = self._weight(table)
        width = shape[-1] if shape else 0
        return self._node(Op.GET_ROWS, name, width, (self.ids,), (table,), per_token=True)

    def mul_mat(self, weight: str, x: Tensor, name: str | None = None) -> Tensor:
        shape = self._weight(weight)
        rows = 0
        if shape is not None:
            self._check(len(shape) == 2, f"{weight} has shape {shape}, expected a matrix")
            rows, cols = shape if len(shape) == 2 else (0, 0)
            self._check(cols == x.width, f"{weight} {shape} cannot multiply {x} (width {x.width})")
        return self._node(Op.MUL_MAT, name or self._stem(weight), rows, (x,), (weight,))

    def add(self, a: Tensor, b: Tensor, name: str) -> Tensor:
        self._check(a.width == b.width and a.per_token == b.per_token and a.selected == b.selected,
                    f"cannot add {a} and {b}")
        return self._node(Op.ADD, name, a.width, (a, b))

    def add_bias(self, x: Tensor, bias: str, name: str | None = None) -> Tensor:
        shape = self._weight(bias)
        if shape is not None:
            self._check(shape == (x.width,), f"bias {bias} {shape} does not fit {x}")
        return self._node(Op.ADD_BIAS, name or f"{x.name}.biased", x.width, (x,), (bias,))

    def scale(self, x: Tensor, s: float, name: str) -> Tensor:
        return self._node(Op.SCALE, name, x.width, (x,), s=float(s))

    def softcap(self, x: Tensor, cap: float, name: str) -> Tensor:
        """cap * tanh(x / cap): soft-capped logits (Gemma 2)."""
        self._check(cap > 0, f"a soft cap must be positive, got {cap}")
        return self._node(Op.SOFTCAP, name, x.width, (x,), cap=float(cap))

    def rms_norm(self, x: Tensor, weight: str, eps: float, name: str | None = None) -> Tensor:
        """Normalize each `len(weight)`-wide group of x's rows: a whole row (`attn_norm`) or one
        attention head (`attn_q_norm`)."""
        shape = self._weight(weight)
        if shape is not None:
            self._check(len(shape) == 1 and shape[0] > 0 and x.width % shape[0] == 0,
                        f"norm weight {weight} {shape} does not divide {x}")
        return self._node(Op.RMS_NORM, name or self._stem(weight), x.width, (x,), (weight,), eps=float(eps))

    def rope(self, x: Tensor, *, head_dim: int, n_rot: int, base: float, freq_scale: float,
             neox: bool, freq_factors: str | None = None, yarn: Yarn = NO_YARN,
             name: str | None = None) -> Tensor:
        """Rotary embedding; freq_factors names a weight of n_rot / 2 divisors of the pairs'
        frequencies (Llama 3's rope_freqs.weight), as ggml's rope_ext takes them; yarn: YaRN's
        settings (backends/rope_table.py)."""
        self._check(x.width % head_dim == 0, f"rope head_dim {head_dim} does not divide {x}")
        if freq_factors is not None:
            shape = self._weight(freq_factors)
            self._check(shape is None or shape == (n_rot // 2,),
                        f"{freq_factors} {shape} is not one factor per rotated pair ({n_rot // 2})")
        return self._node(Op.ROPE, name or f"{x.name}.rope", x.width, (x, self.pos),
                          () if freq_factors is None else (freq_factors,), head_dim=head_dim,
                          n_rot=n_rot, base=float(base), freq_scale=float(freq_scale), neox=bool(neox),
                          freq_factors=freq_factors, yarn=yarn)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, *, layer: int, n_head: int, n_head_kv: int,
                  head_dim: int, head_dim_v: int, scale: float, window: int, name: str,
                  softcap: float = 0.0) -> Tensor:
        # the head counts and widths come from metadata: name the keys a mismatch may lie in
        heads, kv_heads, width, width_v = (f"{self.arch}.attention.{key}" for key in (
            "head_count", "head_count_kv", "key_length", "value_length"))
        self._check(q.width == n_head * head_dim, f"{q} is not {n_head} heads ({heads}) of {head_dim} ({width})")
        self._check(k.width == n_head_kv * head_dim,
                    f"{k} is not {n_head_kv} heads ({kv_heads}) of {head_dim} ({width})")
        self._check(v.width == n_head_kv * head_dim_v,
                    f"{v} is not {n_head_kv} heads ({kv_heads}) of {head_dim_v} ({width_v})")
        self._check(n_head % n_head_kv == 0, f"{n_head} query heads do not share {n_head_kv} KV heads")
        return self._node(Op.ATTENTION, name, n_head * head_dim_v, (q, k, v, self.pos, self.seq, self.slots),
                          layer=layer,
                          n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim, head_dim_v=head_dim_v,
                          scale=float(scale), window=int(window), softcap=float(softcap))

    def _glu(self, op: Op, gate: Tensor, up: Tensor, name: str) -> Tensor:
        self._check(gate.width == up.width, f"gate {gate} and up {up} differ")
        return self._node(op, name, gate.width, (gate, up))

    def swiglu(self, gate: Tensor, up: Tensor, name: str) -> Tensor:
        return self._glu(Op.SWIGLU, gate, up, name)

    def geglu(self, gate: Tensor, up: Tensor, name: str) -> Tensor:
        return self._glu(Op.GEGLU, gate, up, name)

    def ffn(self, x: Tensor, layer: int, act: Op = Op.SWIGLU) -> Tensor:
        """Layer `layer`'s gated FFN on x (T, n_embd) -> (T, n_embd): the one place every
        architecture builds it, so a backend can serve the whole block (see FFNBlock)."""
        if act not in (Op.SWIGLU, Op.GEGLU):
            raise GraphError(f"{self.arch}: an FFN activation must be SWIGLU or GEGLU, not {act}")
        p = f"blk.{layer}."
        first = len(self.nodes)
        gate = self.mul_mat(p + "ffn_gate.weight", x)                  # (T, n_ff)
        up = self.mul_mat(p + "ffn_up.weight", x)                      # (T, n_ff)
        h = self._glu(act, gate, up, name=p + "ffn_act")
        out = self.mul_mat(p + "ffn_down.weight", h)                   # (T, n_embd)
        self.ffn_blocks.append(FFNBlock(layer, act, x, tuple(self.nodes[first:])))
        return out

    def moe_ffn(self, x: Tensor, layer: int, n_used: int, norm: bool) -> Tensor:
        """Layer `layer`'s mixture-of-experts FFN on x (T, n_embd) -> (T, n_embd): the router
        `ffn_gate_inp` picks n_used of the experts stacked in `ffn_{gate,up,down}_exps`."""
        p = f"blk.{layer}."
        names = [p + s for s in ("ffn_gate_inp.weight", "ffn_gate_exps.weight", "ffn_up_exps.weight",
                                 "ffn_down_exps.weight")]
        router, gate, up, down = (self._weight(n) for n in names)
        if None not in (router, gate, up, down):
            n_expert = router[0] if len(router) == 2 else 0
            self._check(len(router) == 2 and router[1] == x.width, f"{names[0]} {router} does not route {x}")
            for name, shape in zip(names[1:3], (gate, up)):
                self._check(len(shape) == 3 and shape[0] == n_expert and shape[2] == x.width,
                            f"{name} {shape} is not {n_expert} experts of width {x.width}")
            self._check(len(down) == 3 and down[0] == n_expert and down[1] == x.width and down[2] == gate[1],
                        f"{names[3]} {down} does not fit {names[1]} {gate}")
            self._check(1 <= n_used <= n_expert, f"{n_used} experts used of {n_expert}")
        return self._node(Op.MOE_FFN, p + "ffn_moe_out", x.width, (x,), tuple(names), n_used=int(n_used),
                          norm=bool(norm))

    def output_rows(self, x: Tensor) -> Tensor:
        """The rows whose output is wanted: all of them, the last token's, or (selected_rows)
        those `inp_out_rows` lists. Models call it as early as possible (after the last layer's
        attention, as llama.cpp does): every later op then runs on those rows."""
        if self.all_rows or not x.per_token or x.selected:
            return x
        if self.selected_rows:
            return self._node(Op.SELECT_ROWS, f"{x.name}.selected", x.width, (x, self.out_rows))
        return self._node(Op.LAST_ROW, f"{x.name}.last", x.width, (x,), per_token=False)

    def set_output(self, out: Tensor) -> None:
        """The graph's result: logits, or with `embeddings` the final hidden states."""
        if self.all_rows:
            out.kind = Kind.EXTERNAL
        self.output = out

    def finish(self) -> Graph:
        """Raise for anything the model needed but the file lacks; the graph is then complete."""
        if self.missing:
            raise MissingTensorsError(self.arch, self.missing)
        if self.output is None:
            raise GraphError(f"{self.arch}: the model code set no output")
        return self

    def __repr__(self) -> str:
        return (f"Graph({self.arch}, n_tokens={self.n_tokens}, all_logits={self.all_logits}, "
                f"embeddings={self.embeddings}, {len(self.nodes)} nodes)")
