"""The torch backend: the same graph on torch tensors, on a CUDA or Apple GPU, or the CPU.

Chosen with `Model.load(..., backend="torch", device="auto"|"cuda"|"cuda:N"|"mps"|"cpu",
weights="dequantized"|"quantized")`. This module is imported only then: it is the one place
(with torch_dequant.py) that imports torch.

Memory placement:

- activations (the planner's arena) and the KV cache are float32 tensors on the device;
- the integer inputs (token ids, positions) stay host numpy arrays that the engine fills;
  each program uploads them once per run, in a call placed before their first reader. The
  attention op reads the host positions to size its key range, so a decode step never waits
  on the device: the only transfer back per token is the sampled token id (`sample_tensor`);
- the all-logits output is the caller's numpy array: on the CPU it is written in place,
  on a GPU computed on the device and copied back once per program run.

Weights, loaded tensor by tensor at first use (binding the decode program at engine load
touches them all) and dequantized on the device in chunks, so host memory stays near the
file's mapping plus one chunk:

- "dequantized" (default): each matrix once, in the device's compute dtype: bfloat16 on
  CUDA GPUs that have bf16 units (compute capability 8+), float16 on older ones and on MPS,
  float32 on the CPU. Matmul inputs are cast to it; outputs are float32.
- "quantized": matrices stay GGML blocks in device memory (uint8 (rows, row_bytes)) and are
  dequantized with torch ops (torch_dequant.py) chunk by chunk at every matmul: for GPUs with
  little memory. Float-typed matrices and types torch_dequant lacks are stored dense.

Norm weights and biases are float32 always. Not done here: Triton kernels for the quantized
matmuls, and CUDA graphs for the decode step (its key range is sized on the host per token).
"""
from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Callable, Mapping

import numba
import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType

from ...quant import QTYPES
from ..graph import Node, Op
from ..kv_cache import CACHE_TYPES, CacheType, KVCache
from ..memory_limits import AvailableMemory, available_memory
from .cpu import BackendError, layer_cache
from .rope_table import NO_YARN, Yarn, rope_cos_sin
from .torch_dequant import DEQUANTIZERS, FLOAT_TYPES, dequantize_rows

Call = tuple[Callable, tuple]

WEIGHT_MODES = ("dequantized", "quantized")
# Weights dequantized per step (at load, or per matmul when kept quantized): bounds the
# float32 temporaries on host and device to 64 MiB.
CHUNK_ELEMENTS = 1 << 24
_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}


# ---- device and dtype ------------------------------------------------------------------------

def resolve_device(device: str | None) -> torch.device:
    """"auto"/None: the first of cuda, mps, cpu that torch can use; otherwise the named device,
    checked to exist (BackendError if not)."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise BackendError(f"unknown torch device {device!r}; use auto, cuda, cuda:N, mps or cpu") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendError(f"device {device!r}: torch {torch.__version__} sees no CUDA GPU "
                               f"(a CPU-only build, or no driver); use device='cpu' or 'auto'")
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise BackendError(f"device {device!r}: only {torch.cuda.device_count()} CUDA GPU(s) present")
        return torch.device("cuda", index)
    if dev.type == "mps" and not _mps_available():
        raise BackendError(f"device {device!r}: this torch build has no usable MPS (Apple GPU) backend")
    if dev.type not in ("cuda", "mps", "cpu"):
        raise BackendError(f"device {device!r}: the torch backend runs on cuda, mps or cpu")
    return dev


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def compute_dtype(device: torch.device) -> torch.dtype:
    """The dtype dense weights are kept in: bf16 where the GPU computes it natively, fp16 on
    older GPUs and MPS, f32 on the CPU (whose bf16 matmuls are slow without AMX/AVX512-BF16)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


@functools.lru_cache(maxsize=None)
def _mm_has_f32_output(device: torch.device) -> bool:
    """Whether torch.mm takes out_dtype=float32 for half inputs here (recent CUDA builds): the
    products are then rounded once, to float32, instead of to the half type first."""
    a = torch.zeros(1, 1, dtype=compute_dtype(device), device=device)
    try:
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError, NotImplementedError):
        return False


def _mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b as float32 for half-precision a (t, n), b (n, m)."""
    if _mm_has_f32_output(a.device):
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a, b)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for timing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# ---- weights ---------------------------------------------------------------------------------

class DenseMatrix:
    """A weight matrix dequantized once: w (rows, n) in the compute dtype on the device."""

    def __init__(self, w: torch.Tensor):
        self.w = w
        self.wt = w.t()

    def matmul(self, out: torch.Tensor, x: torch.Tensor) -> None:
        """out f32 (t, rows) = x f32 (t, n) @ w.T"""
        if self.w.dtype == torch.float32:
            torch.mm(x, self.wt, out=out)
        else:
            out.copy_(_mm_f32(x.to(self.w.dtype), self.wt))

    def gather(self, out: torch.Tensor, ids: Input) -> None:
        """out f32 (t, n) = w[ids] for the t token ids of an Input."""
        if self.w.dtype == torch.float32:
            torch.index_select(self.w, 0, ids.dev, out=out)
        else:
            out.copy_(self.w.index_select(0, ids.dev))


class QuantizedMatrix:
    """A weight matrix kept as GGML blocks: raw u8 (rows, row_bytes) on the device, dequantized
    `step` rows at a time whenever it is used."""

    def __init__(self, raw: torch.Tensor, qtype: GGMLQuantizationType, n: int, dtype: torch.dtype):
        self.raw, self.qtype, self.n, self.dtype = raw, qtype, n, dtype
        self.step = max(1, CHUNK_ELEMENTS // n)

    def matmul(self, out: torch.Tensor, x: torch.Tensor) -> None:
        xc = x.to(self.dtype)
        for r0 in range(0, self.raw.shape[0], self.step):
            w = dequantize_rows(self.raw[r0:r0 + self.step], self.qtype, self.n).to(self.dtype)
            y = torch.mm(xc, w.t()) if self.dtype == torch.float32 else _mm_f32(xc, w.t())
            out[:, r0:r0 + y.shape[1]].copy_(y)

    def gather(self, out: torch.Tensor, ids: Input) -> None:
        out.copy_(dequantize_rows(self.raw.index_select(0, ids.dev), self.qtype, self.n))


@dataclass(frozen=True)
class Input:
    """An integer graph input (token ids or positions): `host` is the executor's int64 (T,)
    numpy view the engine fills, `dev` its device copy (the same memory on the CPU)."""

    host: np.ndarray
    dev: torch.Tensor


# ---- the backend -----------------------------------------------------------------------------

class TorchBackend:
    """Binds graph nodes to torch ops. Use `backend_class(device, weights)` for a configured
    subclass; its class attributes say where and how the weights live."""

    name = "torch"
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    weights: str = "dequantized"
    host_memory: bool = True  # the device computes in host memory: inputs and outputs need no copies

    def __init__(self, tensors: Mapping, kv: KVCache):
        if self.device.type == "cpu":
            # the engine's `threads` (Numba's count, all cores by default) bounds torch's pool too
            torch.set_num_threads(numba.get_num_threads())
        self.tensors = tensors
        self.kv = kv
        self._matrices: dict[str, DenseMatrix | QuantizedMatrix] = {}
        self._vectors: dict[str, torch.Tensor] = {}
        self._rope: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        # id(host view) -> its Input, while a program's calls hold the Input (which holds the
        # view, so the id stays unique); then the entry goes with the program
        self._inputs: weakref.WeakValueDictionary[int, Input] = weakref.WeakValueDictionary()

    @staticmethod
    def cache_storage(requested: CacheType) -> CacheType:
        """The KV cache type kept for `requested`: float32 tensors on the device for f32 and f16
        (the default's name; attention runs on float tensors), none for the quantized types."""
        if requested.block > 1:
            raise BackendError(f"the torch backend keeps its KV cache in float tensors; a {requested.name} "
                               f"cache (--cache-type-k/-v) needs the cpu backend")
        return CACHE_TYPES["f32"]

    # ---- memory ----------------------------------------------------------------------------
    @classmethod
    def zeros(cls, shape, dtype=np.float32):
        """Float buffers (arena, KV cache) on the device; integer inputs as host numpy arrays."""
        dt = np.dtype(dtype)
        if dt.kind in "iu":
            return np.zeros(shape, dtype=dt)
        if dt not in _TORCH_DTYPES:
            raise BackendError(f"the torch backend has no buffers of {dt}")
        return torch.zeros(shape, dtype=_TORCH_DTYPES[dt], device=cls.device)

    @classmethod
    def available_memory(cls) -> AvailableMemory | None:
        """Memory left where `zeros` allocates: a CUDA GPU's free memory, else the host's (Apple
        GPUs share it)."""
        if cls.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(cls.device)
            return AvailableMemory(free, f"free memory of {cls.device}")
        return available_memory()

    def synchronize(self) -> None:
        synchronize(self.device)

    # ---- weights ---------------------------------------------------------------------------
    def _raw_rows(self, name: str) -> tuple[np.ndarray, GGMLQuantizationType, int]:
        """A tensor's bytes as a u8 (rows, row_bytes) view of the mapping, its type and row length."""
        ref = self.tensors[name]
        qtype = GGMLQuantizationType(int(ref.type))
        qt = QTYPES.get(qtype)
        if qt is None and qtype not in DEQUANTIZERS:
            raise BackendError(f"tensor {name} has type {qtype.name}, which the torch backend cannot read")
        n = int(ref.shape[-1])
        rows = int(np.prod(ref.shape[:-1], dtype=np.int64))
        row_bytes = qt.row_bytes(n) if qt is not None else ref.data.size // max(rows, 1)
        if ref.data.size != rows * row_bytes:
            raise BackendError(f"tensor {name}: {ref.data.size} bytes for {rows} rows of {row_bytes}")
        return ref.data.reshape(rows, row_bytes), qtype, n

    def _dequantize(self, raw: np.ndarray, qtype: GGMLQuantizationType, n: int) -> torch.Tensor:
        """Host bytes u8 (rows, row_bytes) -> f32 (rows, n) on the device: on a GPU with torch
        ops there; on the CPU (or for a type torch_dequant lacks) with the registry's Numba
        kernel, several times faster than torch's integer ops on the CPU."""
        if qtype in DEQUANTIZERS and (self.device.type != "cpu" or qtype not in QTYPES):
            return dequantize_rows(torch.from_numpy(np.array(raw)).to(self.device), qtype, n)
        out = np.empty((raw.shape[0], n), dtype=np.float32)
        QTYPES[qtype].dequantize(out.reshape(-1), np.ascontiguousarray(raw).reshape(-1))
        return torch.from_numpy(out).to(self.device)

    def _upload(self, raw: np.ndarray) -> torch.Tensor:
        dev = torch.empty(raw.shape, dtype=torch.uint8, device=self.device)
        step = max(1, CHUNK_ELEMENTS // max(raw.shape[1], 1))
        for r0 in range(0, raw.shape[0], step):
            dev[r0:r0 + step].copy_(torch.from_numpy(np.array(raw[r0:r0 + step])))
        return dev

    def matrix(self, name: str) -> DenseMatrix | QuantizedMatrix:
        """The weight matrix `name` (a GET_ROWS table or a MUL_MAT weight), loaded once."""
        m = self._matrices.get(name)
        if m is None:
            raw, qtype, n = self._raw_rows(name)
            if self.weights == "quantized" and qtype in DEQUANTIZERS and qtype not in FLOAT_TYPES:
                m = QuantizedMatrix(self._upload(raw), qtype, n, self.dtype)
            else:
                w = torch.empty((raw.shape[0], n), dtype=self.dtype, device=self.device)
                step = max(1, CHUNK_ELEMENTS // n)
                for r0 in range(0, raw.shape[0], step):
                    w[r0:r0 + step].copy_(self._dequantize(raw[r0:r0 + step], qtype, n))
                m = DenseMatrix(w)
            self._matrices[name] = m
        return m

    def vector(self, name: str) -> torch.Tensor:
        """A small 1-D weight (norm, bias) as f32 (n,) on the device."""
        v = self._vectors.get(name)
        if v is None:
            raw, qtype, n = self._raw_rows(name)
            v = self._vectors[name] = self._dequantize(raw, qtype, n).reshape(-1)
        return v

    def rope_table(self, n_rot: int, base: float, freq_scale: float, freq_factors: str | None = None,
                   yarn: Yarn = NO_YARN) -> tuple[torch.Tensor, torch.Tensor]:
        key = (n_rot, base, freq_scale, freq_factors, yarn)
        if key not in self._rope:
            factors = None if freq_factors is None else self.vector(freq_factors).float().cpu().numpy()
            cos, sin = rope_cos_sin(self.kv.n_ctx, n_rot, base, freq_scale, factors, yarn)
            self._rope[key] = (torch.from_numpy(cos).to(self.device), torch.from_numpy(sin).to(self.device))
        return self._rope[key]

    # ---- binding ---------------------------------------------------------------------------
    def _input(self, host: np.ndarray, calls: list[Call]) -> Input:
        """The Input for a host input view. The first node of a program reading it adds the
        upload to `calls` (one per run); later readers in the program share the device copy.
        Every binder passes the Input itself (not just its tensor) into its calls."""
        found = self._inputs.get(id(host))
        if found is None:
            if host.dtype != np.int64:
                raise BackendError(f"graph inputs must be int64 arrays, got {host.dtype}")
            host_t = torch.from_numpy(host)
            if self.host_memory:
                dev = host_t
            else:
                dev = torch.empty(host.shape, dtype=torch.int64, device=self.device)
                calls.append((dev.copy_, (host_t,)))
            found = self._inputs[id(host)] = Input(host, dev)
        return found

    def bind(self, node: Node, out, srcs: tuple, t: int) -> list[Call]:
        """The torch calls computing `node` for `t` tokens into `out` from `srcs` (device tensors,
        host input arrays, and for the all-logits output a caller's numpy array as `out`)."""
        binder = _BINDERS.get(node.op)
        if binder is None:
            raise BackendError(f"the torch backend has no op {node.op.value}")
        calls: list[Call] = []
        if node.op is Op.ATTENTION:   # one sequence in the identity table: seq and slots are not read
            srcs = srcs[:4]
        args = tuple(self._input(s, calls) if isinstance(s, np.ndarray) else s for s in srcs)
        if not isinstance(out, np.ndarray):
            return calls + binder(self, node, out, args, t)
        host_out = torch.from_numpy(out)  # the caller's array (graph.Kind.EXTERNAL)
        if self.host_memory:
            return calls + binder(self, node, host_out, args, t)
        staging = torch.empty(out.shape, dtype=torch.float32, device=self.device)
        return calls + binder(self, node, staging, args, t) + [(host_out.copy_, (staging,))]


@functools.lru_cache(maxsize=None)
def _configured(device: torch.device, weights: str) -> type[TorchBackend]:
    return type(f"TorchBackend[{device}, {weights}]", (TorchBackend,),
                {"device": device, "dtype": compute_dtype(device), "weights": weights,
                 "host_memory": device.type == "cpu"})


def backend_class(device: str | None = None, weights: str | None = None) -> type[TorchBackend]:
    """The torch backend for `device` (see resolve_device) keeping weights `weights`
    ("dequantized" by default, or "quantized"); the same arguments give the same class."""
    weights = weights or "dequantized"
    if weights not in WEIGHT_MODES:
        raise BackendError(f"weights must be one of {', '.join(WEIGHT_MODES)}, got {weights!r}")
    return _configured(resolve_device(device), weights)


# ---- ops (the calls a program runs; every tensor argument already resolved) -------------------

def _rms_norm(out, x, w, eps):
    """Each len(w)-wide group of x's rows divided by its root mean square, times w. Alias-safe."""
    xg = x.view(x.shape[0], -1, w.shape[0])
    scale = torch.rsqrt(xg.square().mean(-1, keepdim=True) + eps)
    torch.mul(xg * scale, w, out=out.view(xg.shape))


def _rope(out, x, pos: Input, cos, sin, head_dim, first, second, tail):
    """Rotate the (first, second) dims of every head by the angles at each token's position;
    dims from `tail` on are copied (None when out aliases x). Alias-safe."""
    t = x.shape[0]
    c, s = cos[pos.dev].unsqueeze(1), sin[pos.dev].unsqueeze(1)    # (t, 1, n_rot / 2)
    xh, oh = x.view(t, -1, head_dim), out.view(t, -1, head_dim)
    a, b = xh[..., first], xh[..., second]
    ra = a * c - b * s
    rb = a * s + b * c
    oh[..., first] = ra
    oh[..., second] = rb
    if tail is not None:
        oh[..., tail:] = xh[..., tail:]


def _attention(out, q, k, v, pos: Input, k_cache, v_cache, gqa, scale, window, softcap):
    """Store k, v at their positions, then causal attention of q over the cache (scores
    soft-capped, cap * tanh(s / cap), where softcap > 0: computed out of SDPA then).

    q (t, n_head * dk), k (t, n_kv * dk), v (t, n_kv * dv), out (t, n_head * dv);
    caches (n_kv, n_ctx, d). The key range comes from the host positions (no device sync);
    the mask from the device ones. Query heads are grouped by the KV head they share, so a
    KV head's keys are read once for all of its queries.
    """
    t = q.shape[0]
    n_kv, _, dk = k_cache.shape
    dv = v_cache.shape[2]
    k_cache.index_copy_(1, pos.dev, k.view(t, n_kv, dk).transpose(0, 1))
    v_cache.index_copy_(1, pos.dev, v.view(t, n_kv, dv).transpose(0, 1))
    hi = int(pos.host.max()) + 1
    lo = 0 if window <= 0 else max(0, int(pos.host.min()) - window + 1)
    qg = q.view(t, n_kv, gqa, dk).permute(1, 2, 0, 3).reshape(n_kv, gqa * t, dk)
    mask = None
    if t > 1:  # one query sees exactly [lo, hi): no mask needed
        behind = pos.dev.view(t, 1) - torch.arange(lo, hi, device=q.device)   # (t, keys)
        visible = behind >= 0
        if window > 0:
            visible &= behind < window
        mask = visible.repeat(gqa, 1)                                         # rows as qg's
    if softcap > 0:
        scores = torch.tanh(qg @ k_cache[:, lo:hi].transpose(1, 2) * (scale / softcap)) * softcap
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        o = torch.softmax(scores.float(), dim=-1).to(qg.dtype) @ v_cache[:, lo:hi]
    else:
        o = F.scaled_dot_product_attention(qg, k_cache[:, lo:hi], v_cache[:, lo:hi], attn_mask=mask, scale=scale)
    out.view(t, n_kv, gqa, dv).copy_(o.view(n_kv, gqa, t, dv).permute(2, 0, 1, 3))


def _add(out, a, b):
    """out = a + b (b a matrix of a's shape, or a bias row). Alias-safe."""
    torch.add(a, b, out=out)


def _scale(out, x, s):
    torch.mul(x, s, out=out)


def _softcap(out, x, cap):
    torch.mul(torch.tanh(x / cap), cap, out=out)


def _swiglu(out, gate, up):
    torch.mul(F.silu(gate), up, out=out)


def _geglu(out, gate, up):
    # llama.cpp's GEGLU (as the cpu backend's): gelu of the input rounded to half, rounded to
    # half (ggml's GGML_GELU_FP16 table), 0 below -10 and the identity above 10
    g = F.gelu(gate.to(torch.float16).float(), approximate="tanh").to(torch.float16).to(gate.dtype)
    g = torch.where(gate <= -10, torch.zeros_like(gate), torch.where(gate >= 10, gate, g))
    torch.mul(g, up, out=out)


def _last_row(out, x):
    out.copy_(x[-1:])


# ---- binders: node -> calls ------------------------------------------------------------------

def _bind_rope(be: TorchBackend, node, out, srcs, t):
    p = node.params
    cos, sin = be.rope_table(p["n_rot"], p["base"], p["freq_scale"], p["freq_factors"], p["yarn"])
    x, pos = srcs
    n_rot, half = p["n_rot"], p["n_rot"] // 2
    first, second = (slice(0, half), slice(half, n_rot)) if p["neox"] else (slice(0, n_rot, 2), slice(1, n_rot, 2))
    tail = n_rot if n_rot < p["head_dim"] and out.data_ptr() != x.data_ptr() else None
    return [(_rope, (out, x, pos, cos, sin, p["head_dim"], first, second, tail))]


def _bind_attention(be: TorchBackend, node, out, srcs, t):
    p = node.params
    q, k, v, pos = srcs       # one sequence in the identity table: its cache rows are its positions
    kc, vc = layer_cache(be.kv, p)
    gqa = p["n_head"] // p["n_head_kv"]
    return [(_attention, (out, q, k, v, pos, kc, vc, gqa, p["scale"], p["window"], p["softcap"]))]


_BINDERS: dict[Op, Callable] = {
    Op.GET_ROWS: lambda be, node, out, srcs, t: [(be.matrix(node.weights[0]).gather, (out, srcs[0]))],
    Op.MUL_MAT: lambda be, node, out, srcs, t: [(be.matrix(node.weights[0]).matmul, (out, srcs[0]))],
    Op.ADD: lambda be, node, out, srcs, t: [(_add, (out, *srcs))],
    Op.ADD_BIAS: lambda be, node, out, srcs, t: [(_add, (out, srcs[0], be.vector(node.weights[0])))],
    Op.SCALE: lambda be, node, out, srcs, t: [(_scale, (out, srcs[0], node.params["s"]))],
    Op.SOFTCAP: lambda be, node, out, srcs, t: [(_softcap, (out, srcs[0], node.params["cap"]))],
    Op.RMS_NORM: lambda be, node, out, srcs, t: [
        (_rms_norm, (out, srcs[0], be.vector(node.weights[0]), node.params["eps"]))],
    Op.ROPE: _bind_rope,
    Op.ATTENTION: _bind_attention,
    Op.SWIGLU: lambda be, node, out, srcs, t: [(_swiglu, (out, *srcs))],
    Op.GEGLU: lambda be, node, out, srcs, t: [(_geglu, (out, *srcs))],
    Op.LAST_ROW: lambda be, node, out, srcs, t: [(_last_row, (out, srcs[0]))],
}


# ---- sampling on the device ------------------------------------------------------------------

def sample_tensor(sampler, logits: torch.Tensor, history) -> int:
    """Run `sampler` (runtime.sampling.Sampler) on a torch logits tensor (n_vocab,).

    Plain greedy (no bias, no penalties) takes the argmax where the logits are: only the token
    id crosses to the host. Any other chain copies the logits to the host once and runs there.
    """
    if sampler.stages == ("greedy",):
        best = torch.argmax(logits)
        # -1 if the winner is NaN/inf (torch's argmax picks a NaN), checked in the same transfer
        token = int(torch.where(torch.isfinite(logits[best]), best, -1))
        if token < 0:
            raise ValueError("no token can be sampled: the logits hold NaN/inf or every token is banned")
        return token
    return sampler(logits.detach().to("cpu", torch.float32).numpy(), history)
