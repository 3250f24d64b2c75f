"""The CPU backend: binds each graph node to Numba kernels over zero-copy weight views.

`bind(node, out, srcs, t)` turns one node into the kernel calls that compute it, as
`(function, args)` pairs with every array argument already resolved, so the executor's hot
loop is just `fn(*args)`. Weights stay in their quantized blocks inside the file mapping:
a matrix becomes a (rows, row_bytes) uint8 view handed to the registered quant kernels
(`matvec` for one token, `matmul` for a batch). Only small 1-D tensors (norm weights, biases)
are converted to float32 once, at first use.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
from gguf import GGMLQuantizationType

from ...quant import QTYPES
from ..graph import Node, Op
from ..kv_cache import BLOCK_SHIFT, CacheType, KVCache, row_width
from ..memory_limits import AvailableMemory, available_memory
from . import activations as A
from . import cpu_kernels as K
from .moe import expert_slices, moe_ffn
from .rope_table import NO_YARN, Yarn, rope_cos_sin

Call = tuple[Callable, tuple]

# A single query attends serially until the context is this long. Measured on 2 cores (SmolLM2,
# Gemma3, Qwen2 head shapes): at 64 keys serial and parallel tie (~10 us), from 128 keys the
# parallel driver is 1.2-1.9x faster.
ATTENTION_PARALLEL_MIN_KEYS = 128


class BackendError(ValueError):
    """A weight this backend cannot use (unsupported type, wrong size)."""


def _get_rows(table, ids, gathered, dequantize, out_flat, gathered_flat):
    """out = dequantize(table[ids]): gather the rows' bytes, then one dequantize call.

    table: u8 (n_vocab, row_bytes); ids: int64 (T,); gathered: u8 (T, row_bytes) scratch;
    out_flat, gathered_flat: 1-D views of the output f32 (T, n) and of `gathered`."""
    np.take(table, ids, axis=0, out=gathered)
    dequantize(out_flat, gathered_flat)


def _attention_one_query(out, q, k_cache, v_cache, pos, *rest):
    """Decode-time attention: serial while the context is short, parallel over heads after."""
    window = rest[4]
    keys = pos[0] + 1 if window <= 0 else min(pos[0] + 1, window)
    fn = K.attention_parallel if keys >= ATTENTION_PARALLEL_MIN_KEYS else K.attention
    fn(out, q, k_cache, v_cache, pos, *rest)


def _select_rows(out, x, rows):
    """out = x[rows]: f32 (R, n) from f32 (T, n) and int64 (R,)."""
    np.take(x, rows, axis=0, out=out)


def quant_type(ref):
    """The registered QuantType of a tensor (TensorRef), or a BackendError naming it."""
    qt = QTYPES.get(GGMLQuantizationType(int(ref.type)))
    if qt is None:
        raise BackendError(f"tensor {ref.name} has type {ref.type.name}, which has no registered kernels")
    return qt


def row_shape(ref) -> tuple[int, int]:
    """(rows, row_bytes) of a weight matrix (TensorRef), checked against its byte size."""
    n_rows = int(np.prod(ref.shape[:-1], dtype=np.int64))
    row_bytes = quant_type(ref).row_bytes(int(ref.shape[-1]))
    if ref.nbytes != n_rows * row_bytes:
        raise BackendError(f"tensor {ref.name}: {ref.nbytes} bytes for {n_rows} rows of {row_bytes}")
    return n_rows, row_bytes


class CpuBackend:
    name = "cpu"

    @staticmethod
    def cache_storage(requested: CacheType) -> CacheType:
        """The KV cache type kept for `requested`: here every type (kv_cache.CACHE_TYPES), as asked."""
        return requested

    def __init__(self, tensors: Mapping, kv: KVCache):
        self.tensors = tensors
        self.kv = kv
        self._rows: dict[str, np.ndarray] = {}
        self._vectors: dict[str, np.ndarray] = {}
        self._rope: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._attention_scratch: dict[tuple, np.ndarray] = {}

    # ---- memory ----------------------------------------------------------------------------
    @staticmethod
    def zeros(shape, dtype=np.float32) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    @staticmethod
    def available_memory() -> AvailableMemory | None:
        """Memory left where `zeros` allocates (the KV cache is checked against it)."""
        return available_memory()

    # ---- weights ---------------------------------------------------------------------------
    def _qtype(self, name: str):
        ref = self.tensors[name]
        return ref, quant_type(ref)

    def weight_bytes(self, name: str) -> np.ndarray:
        """A tensor's bytes as uint8 (nbytes,): here a view of the file mapping (no copy); a
        backend that keeps weights elsewhere (cpu_streaming) overrides this."""
        return self.tensors[name].data

    def rows(self, name: str) -> np.ndarray:
        """A weight matrix as uint8 (rows, row_bytes), no copy."""
        w = self._rows.get(name)
        if w is None:
            w = self._rows[name] = self.weight_bytes(name).reshape(row_shape(self.tensors[name]))
        return w

    def expert_fetch(self, name: str, n_expert: int):
        """e -> expert e's matrix of a stacked expert tensor (backends/moe.py); here a view."""
        return expert_slices(self.rows(name), n_expert)

    def vector(self, name: str) -> np.ndarray:
        """A small 1-D weight (norm, bias) as float32 (n,): F32 data viewed in place, other
        types dequantized once."""
        v = self._vectors.get(name)
        if v is None:
            ref, qt = self._qtype(name)
            raw = np.ascontiguousarray(self.weight_bytes(name)).reshape(-1)
            if qt.qtype == GGMLQuantizationType.F32:
                v = raw.view(np.float32)
            else:
                v = np.empty(int(np.prod(ref.shape)), dtype=np.float32)
                qt.dequantize(v, raw)
            self._vectors[name] = v
        return v

    def rope_table(self, n_rot: int, base: float, freq_scale: float, freq_factors: str | None = None,
                   yarn: Yarn = NO_YARN):
        """cos, sin tables of a rope (freq_factors: the name of its per-pair divisors, if any)."""
        key = (n_rot, base, freq_scale, freq_factors, yarn)
        if key not in self._rope:
            factors = None if freq_factors is None else self.vector(freq_factors)
            self._rope[key] = rope_cos_sin(self.kv.n_ctx, n_rot, base, freq_scale, factors, yarn)
        return self._rope[key]

    def attention_scratch(self, k_cache: np.ndarray) -> np.ndarray:
        """Attention's per-thread work rows for caches shaped like `k_cache`, shared by every
        layer and program (the ops run one at a time)."""
        key = k_cache.shape[1:]
        if key not in self._attention_scratch:
            self._attention_scratch[key] = K.attention_scratch(k_cache, self.kv.n_ctx)
        return self._attention_scratch[key]

    # ---- binding ---------------------------------------------------------------------------
    def bind(self, node: Node, out: np.ndarray, srcs: tuple[np.ndarray, ...], t: int,
             row_exact: bool = False) -> list[Call]:
        """The kernel calls computing `node` for `t` tokens into `out` from `srcs` (array views);
        with `row_exact`, each token's row bit-identical to a one-token pass (Graph.row_exact)."""
        if row_exact and node.op is Op.MUL_MAT and t > 1:
            return _bind_mul_mat_rows(self, node, out, srcs)
        return _BINDERS[node.op](self, node, out, srcs, t)


def _bind_get_rows(be: CpuBackend, node, out, srcs, t):
    name = node.weights[0]
    _, qt = be._qtype(name)
    table = be.rows(name)
    gathered = np.empty((t, table.shape[1]), dtype=np.uint8)  # per program, reused every run
    return [(_get_rows, (table, srcs[0], gathered, qt.dequantize, out.reshape(-1), gathered.reshape(-1)))]


def _bind_mul_mat(be: CpuBackend, node, out, srcs, t):
    name = node.weights[0]
    w = be.rows(name)
    _, qt = be._qtype(name)
    (x,) = srcs
    if x.shape[0] == 1:  # one row: the matrix-vector kernel (decode, or the last-token head)
        return [(qt.matvec, (out[0], w, x[0]))]
    return [(qt.matmul, (out, w, x))]


def _bind_mul_mat_rows(be: CpuBackend, node, out, srcs):
    """A matrix product whose every row is what matvec gives for it (QuantType.row_exact_matmul)."""
    name = node.weights[0]
    _, qt = be._qtype(name)
    return [(qt.row_exact_matmul, (out, be.rows(name), srcs[0]))]


def _bind_rope(be: CpuBackend, node, out, srcs, t):
    p = node.params
    cos, sin = be.rope_table(p["n_rot"], p["base"], p["freq_scale"], p["freq_factors"], p["yarn"])
    x, pos = srcs
    return [(K.rope, (out, x, pos, cos, sin, p["head_dim"], p["n_rot"], p["neox"]))]


def layer_cache(kv: KVCache, params: Mapping):
    """(k, v) cache arrays of an ATTENTION node's layer, checked against the node's head shapes."""
    layer = params["layer"]
    kc, vc = kv.k[layer], kv.v[layer]
    if kc.shape[0] != params["n_head_kv"] or row_width(kc) != params["head_dim"] \
            or row_width(vc) != params["head_dim_v"]:
        raise BackendError(f"layer {layer}: KV cache {tuple(kc.shape)} does not fit the attention node")
    return kc, vc


def _bind_attention(be: CpuBackend, node, out, srcs, t):
    p = node.params
    q, k, v, pos, seq, slots = srcs
    kc, vc = layer_cache(be.kv, p)
    attend = K.attention_parallel if t > 1 else _attention_one_query
    rot = (be.kv.k_rotation, be.kv.v_rotation)
    return [(K.kv_store, (kc, vc, k, v, slots, *rot)),
            (attend, (out, q, kc, vc, pos, seq, be.kv.tables, BLOCK_SHIFT, np.float32(p["scale"]), p["window"],
                      be.attention_scratch(kc), *rot, np.float32(p["softcap"])))]


def _bind_moe_ffn(be: CpuBackend, node, out, srcs, t):
    router_name, *expert_names = node.weights
    _, router_qt = be._qtype(router_name)
    n_expert = int(be.tensors[router_name].shape[0])
    n_ff = int(be.tensors[expert_names[0]].shape[1])
    experts = tuple(be.expert_fetch(name, n_expert) for name in expert_names)
    qts = tuple(be._qtype(name)[1] for name in expert_names)
    return [(moe_ffn, (out, srcs[0], be.rows(router_name), router_qt, experts, qts, n_expert, n_ff,
                       node.params["n_used"], node.params["norm"]))]


_BINDERS: dict[Op, Callable] = {
    Op.GET_ROWS: _bind_get_rows,
    Op.MUL_MAT: _bind_mul_mat,
    Op.ADD: lambda be, node, out, srcs, t: [(K.add, (out, *srcs))],
    Op.ADD_BIAS: lambda be, node, out, srcs, t: [(K.add_bias, (out, srcs[0], be.vector(node.weights[0])))],
    Op.SCALE: lambda be, node, out, srcs, t: [(K.scale, (out, srcs[0], np.float32(node.params["s"])))],
    Op.SOFTCAP: lambda be, node, out, srcs, t: [(K.softcap, (out, srcs[0], np.float32(node.params["cap"])))],
    Op.RMS_NORM: lambda be, node, out, srcs, t: [
        (K.rms_norm_rows if t > 1 else K.rms_norm, (out, srcs[0], be.vector(node.weights[0]), node.params["eps"]))],
    Op.ROPE: _bind_rope,
    Op.ATTENTION: _bind_attention,
    Op.SWIGLU: lambda be, node, out, srcs, t: [(A.swiglu_rows if t > 1 else A.swiglu, (out, *srcs))],
    Op.GEGLU: lambda be, node, out, srcs, t: [(A.geglu_rows if t > 1 else A.geglu, (out, *srcs, A.GELU_TABLE))],
    Op.LAST_ROW: lambda be, node, out, srcs, t: [(K.last_row, (out, srcs[0]))],
    Op.SELECT_ROWS: lambda be, node, out, srcs, t: [(_select_rows, (out, *srcs))],
    Op.MOE_FFN: _bind_moe_ffn,
}
