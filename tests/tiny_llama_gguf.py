"""Tiny deterministic GGUF models that llama.cpp loads, for quantizer tests.

Shared by tests/test_quantize_model.py and tests/data/make_quantize_fixtures.py (which runs
llama.cpp's quantizer on the same files), so both sides quantize byte-identical inputs.
Only numpy and gguf-py are needed, so the fixture generator can run in any environment that
has llama-cpp-python.

Each model is shaped to reach a different set of llama.cpp's mix rules (quant/mix.py):

- "wide":   llama, n_embd 256, n_ff 768, 8 layers, GQA 4, F16 weights, separate output.weight.
  Every row length is a multiple of 256, so K-quants apply as planned; 8 layers make
  use_more_bits pick layers 0, 3, 6, 7; GQA 4 sends Q2_K's attn_v to Q4_K.
- "narrow": llama, n_embd 96, n_ff 160, 16 layers, no GQA, F32 weights, tied embeddings (no
  output.weight). Rows are multiples of 32 but not of 256, so every K-quant falls back to a
  32-block type; 16 layers make `i_layer < n_layer/16` true for layer 0.
- "moe":    llama with 8 experts (3-D expert tensors, a router that stays F32), 2 layers,
  BF16 weights: the 8-expert rules (attn_v and attn_k to Q8_0, ...), layer from tensor name.
- "falcon": falcon, fused attn_qkv, norms with biases, 16 layers, MQA, F16 weights: the
  falcon-specific rules (output always Q8_0, its ffn_down / attn_output choices).

The values are seeded normals with a per-row scale spread over two decades (as in real
weights), one all-zero row per matrix (zero blocks take the `d == 0` paths) and a few
outliers per matrix (a block's maximum then differs from its bulk).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T


@dataclass(frozen=True)
class TinyModelSpec:
    name: str
    arch: str
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    weight_type: T  # F32, F16 or BF16, for 2-D and 3-D weights; norms, biases, router: F32
    tied_embeddings: bool
    seed: int
    n_expert: int = 0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_embd_kv(self) -> int:
        return self.n_head_kv * self.head_dim


TINY_MODELS: dict[str, TinyModelSpec] = {
    spec.name: spec
    for spec in (
        TinyModelSpec("wide", "llama", n_embd=256, n_ff=768, n_layer=8, n_head=8, n_head_kv=2,
                      weight_type=T.F16, tied_embeddings=False, seed=1234),
        TinyModelSpec("narrow", "llama", n_embd=96, n_ff=160, n_layer=16, n_head=3, n_head_kv=3,
                      weight_type=T.F32, tied_embeddings=True, seed=4321),
        TinyModelSpec("moe", "llama", n_embd=256, n_ff=256, n_layer=2, n_head=8, n_head_kv=2,
                      weight_type=T.BF16, tied_embeddings=False, seed=2468, n_expert=8),
        TinyModelSpec("falcon", "falcon", n_embd=256, n_ff=256, n_layer=16, n_head=8, n_head_kv=1,
                      weight_type=T.F16, tied_embeddings=False, seed=1357),
    )
}

_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
_WORD_PIECES = ("▁the", "▁a", "▁of", "▁and", "▁to", "▁in", "▁is", "▁it", "▁that", "▁for",
                "▁on", "▁with", "▁as", "▁was", "▁he", "▁be", "▁at", "▁by", "▁i", "▁this",
                "e", "t", "a", "o", "n", "s", "▁", "er", "in", "th", "an", "re", "on")


def tiny_vocab() -> tuple[list[str], np.ndarray, np.ndarray]:
    """A SentencePiece-style vocabulary: specials, the 256 byte tokens, a few word pieces.

    Returns (tokens, scores f32[n], token_type i32[n]) with llama.cpp's token type codes
    (1 normal, 2 unknown, 3 control, 6 byte).
    """
    tokens = list(_SPECIAL_TOKENS) + [f"<0x{b:02X}>" for b in range(256)] + list(_WORD_PIECES)
    types = [2, 3, 3] + [6] * 256 + [1] * len(_WORD_PIECES)
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(_WORD_PIECES))]
    return tokens, np.array(scores, dtype=np.float32), np.array(types, dtype=np.int32)


class _Weights:
    """Draws the tensors of one model from its seeded generator, in file order."""

    def __init__(self, spec: TinyModelSpec):
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)

    def matrix(self, *shape: int) -> np.ndarray:
        """A weight of numpy shape (..., rows, cols), float32."""
        rng = self.rng
        rows = int(np.prod(shape[:-1]))
        row_scale = np.exp(rng.uniform(np.log(0.002), np.log(0.2), size=(rows, 1)))
        x = rng.standard_normal((rows, shape[-1])) * row_scale
        x[rng.integers(rows)] = 0.0
        flat = x.reshape(-1)
        flat[rng.integers(flat.size, size=max(1, flat.size // 4096))] *= 25.0
        return x.reshape(shape).astype(np.float32)

    def vector(self, center: float) -> np.ndarray:
        return (center + 0.1 * self.rng.standard_normal(self.spec.n_embd)).astype(np.float32)


def _llama_block(w: _Weights, p: str) -> dict[str, np.ndarray]:
    s = w.spec
    t = {p + "attn_norm.weight": w.vector(1.0),
         p + "attn_q.weight": w.matrix(s.n_embd, s.n_embd),
         p + "attn_k.weight": w.matrix(s.n_embd_kv, s.n_embd),
         p + "attn_v.weight": w.matrix(s.n_embd_kv, s.n_embd),
         p + "attn_output.weight": w.matrix(s.n_embd, s.n_embd),
         p + "ffn_norm.weight": w.vector(1.0)}
    if s.n_expert:
        t[p + "ffn_gate_inp.weight"] = w.matrix(s.n_expert, s.n_embd)
        t[p + "ffn_gate_exps.weight"] = w.matrix(s.n_expert, s.n_ff, s.n_embd)
        t[p + "ffn_up_exps.weight"] = w.matrix(s.n_expert, s.n_ff, s.n_embd)
        t[p + "ffn_down_exps.weight"] = w.matrix(s.n_expert, s.n_embd, s.n_ff)
    else:
        t[p + "ffn_gate.weight"] = w.matrix(s.n_ff, s.n_embd)
        t[p + "ffn_up.weight"] = w.matrix(s.n_ff, s.n_embd)
        t[p + "ffn_down.weight"] = w.matrix(s.n_embd, s.n_ff)
    return t


def _falcon_block(w: _Weights, p: str) -> dict[str, np.ndarray]:
    s = w.spec
    return {p + "attn_norm.weight": w.vector(1.0),
            p + "attn_norm.bias": w.vector(0.0),
            p + "attn_qkv.weight": w.matrix(s.n_embd + 2 * s.n_embd_kv, s.n_embd),
            p + "attn_output.weight": w.matrix(s.n_embd, s.n_embd),
            p + "ffn_up.weight": w.matrix(s.n_ff, s.n_embd),
            p + "ffn_down.weight": w.matrix(s.n_embd, s.n_ff)}


_BLOCK_BUILDERS: dict[str, Callable[[_Weights, str], dict[str, np.ndarray]]] = {
    "llama": _llama_block,
    "falcon": _falcon_block,
}
# tensors kept in F32 whatever the model's weight type (as converters write them)
_F32_SUFFIXES = ("norm.weight", "norm.bias", "ffn_gate_inp.weight")


def tiny_model_tensors(spec: TinyModelSpec) -> dict[str, np.ndarray]:
    """The model's tensors in file order, numpy shapes, all float32 (see `file_type_of`)."""
    w = _Weights(spec)
    n_vocab = len(tiny_vocab()[0])
    tensors = {"token_embd.weight": w.matrix(n_vocab, spec.n_embd)}
    for i in range(spec.n_layer):
        tensors.update(_BLOCK_BUILDERS[spec.arch](w, f"blk.{i}."))
    tensors["output_norm.weight"] = w.vector(1.0)
    if spec.arch == "falcon":
        tensors["output_norm.bias"] = w.vector(0.0)
    if not spec.tied_embeddings:
        tensors["output.weight"] = w.matrix(n_vocab, spec.n_embd)
    return tensors


def file_type_of(spec: TinyModelSpec, name: str, array: np.ndarray) -> T:
    if array.ndim < 2 or name.endswith(_F32_SUFFIXES):
        return T.F32
    return spec.weight_type


def _llama_file_type(weight_type: T) -> int:
    return int({T.F32: gguf.LlamaFileType.ALL_F32, T.F16: gguf.LlamaFileType.MOSTLY_F16,
                T.BF16: gguf.LlamaFileType.MOSTLY_BF16}[weight_type])


def write_tiny_model(path: str | Path, spec: TinyModelSpec | str) -> Path:
    """Write the tiny model `spec` (or its name in TINY_MODELS) as a GGUF file at `path`."""
    if isinstance(spec, str):
        spec = TINY_MODELS[spec]
    path = Path(path)
    tokens, scores, token_types = tiny_vocab()
    writer = gguf.GGUFWriter(str(path), spec.arch)
    writer.add_name(f"tiny-{spec.name}")
    writer.add_file_type(_llama_file_type(spec.weight_type))
    writer.add_context_length(256)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    if spec.arch == "falcon":
        writer.add_layer_norm_eps(1e-5)
    else:
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_rope_dimension_count(spec.head_dim)
        writer.add_rope_freq_base(10000.0)
    if spec.n_expert:
        writer.add_expert_count(spec.n_expert)
        writer.add_expert_used_count(2)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores.tolist())
    writer.add_token_types(token_types.tolist())
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    for name, array in tiny_model_tensors(spec).items():
        qtype = file_type_of(spec, name, array)
        if qtype == T.BF16:
            writer.add_tensor(name, gguf.quants.quantize(array, T.BF16), raw_dtype=T.BF16)
        else:
            writer.add_tensor(name, array.astype(np.float16 if qtype == T.F16 else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
