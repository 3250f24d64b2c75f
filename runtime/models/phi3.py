"""Phi-3, Phi-3.5 and Phi-4-mini: llama's decoder with fused projections and LongRoPE.

What differs from llama (models/llama.py), as llama.cpp reads the files:
- q, k and v are one matrix, `attn_qkv` (q rows, then k, then v), and the FFN's gate and up are
  one, `ffn_up` (2 * n_ff rows, gate first). `prepare_tensors` adds views of those row ranges
  under the separate llama names, so the graph, every backend and the offload module see the
  ordinary layout and no kernel knows about fusion.
- the rope is NEOX-ordered (rotate-half, as Hugging Face stores the model) over the first
  rope.dimension_count dims of each head (Phi-4-mini rotates 3/4 of them).
- LongRoPE where the file has `rope_factors_short.weight` / `rope_factors_long.weight`: the
  pairs' frequencies are divided by one set of factors, and cos and sin are multiplied by
  rope.scaling.attn_factor. As in llama.cpp, a context longer than
  rope.scaling.original_context_length takes the long factors for every position, a shorter
  one the short factors (transformers decides per forward pass by the sequence's length).
- a sliding window over the keys in every layer where the file sets one (Phi-3-mini-4k).
"""
from __future__ import annotations

from dataclasses import replace

from gguf import GGML_QUANT_SIZES

from ..backends.rope_table import Yarn
from . import llama

SHORT, LONG = "rope_factors_short.weight", "rope_factors_long.weight"


def hparams(kv, fields: dict) -> dict:
    out = {"rope_neox": True, **llama.hparams(kv, fields)}
    attn_factor = kv.float("rope.scaling.attn_factor", 1.0)
    n_ctx_orig = kv.int("rope.scaling.original_context_length", fields["n_ctx_train"])
    # ext_factor 0: no YaRN ramp, only the magnitude factor on cos and sin
    out["rope_yarn"] = Yarn(ext_factor=0.0, attn_factor=attn_factor, n_ctx_orig=n_ctx_orig)
    return out


def rope_factors(g, cfg) -> str | None:
    """The LongRoPE factors for the graph's context (None where the file has none)."""
    if not g.has_weight(SHORT) and not g.has_weight(LONG):
        return None
    return LONG if g.n_ctx > cfg.rope_yarn.n_ctx_orig else SHORT


def build(g, cfg) -> None:
    llama.build(g, cfg, freq_factors=rope_factors(g, cfg))


def _rows(ref, r0: int, r1: int, name: str):
    """A view of rows r0..r1 of matrix `ref` as a tensor of its own (offset and bytes included)."""
    block, type_size = GGML_QUANT_SIZES[ref.type]
    row_bytes = ref.shape[-1] // block * type_size
    return replace(ref, name=name, shape=(r1 - r0, *ref.shape[1:]), offset=ref.offset + r0 * row_bytes,
                   nbytes=(r1 - r0) * row_bytes, data=ref.data[r0 * row_bytes:r1 * row_bytes])


def prepare_tensors(tensors: dict, cfg) -> None:
    """Add the separate q, k, v and gate, up views of fused matrices to `tensors` (in place;
    done once: a file whose matrices are already separate is left as it is)."""
    for il in range(cfg.n_layer):
        p = f"blk.{il}."
        qkv = tensors.get(p + "attn_qkv.weight")
        if qkv is not None and p + "attn_q.weight" not in tensors:
            q, k = cfg.n_embd_q, cfg.n_embd_kv
            tensors[p + "attn_q.weight"] = _rows(qkv, 0, q, p + "attn_q.weight")
            tensors[p + "attn_k.weight"] = _rows(qkv, q, q + k, p + "attn_k.weight")
            tensors[p + "attn_v.weight"] = _rows(qkv, q + k, qkv.shape[0], p + "attn_v.weight")
        up = tensors.get(p + "ffn_up.weight")
        if up is not None and p + "ffn_gate.weight" not in tensors and up.shape[0] == 2 * cfg.n_ff:
            tensors[p + "ffn_gate.weight"] = _rows(up, 0, cfg.n_ff, p + "ffn_gate.weight")
            tensors[p + "ffn_up.weight"] = _rows(up, cfg.n_ff, 2 * cfg.n_ff, p + "ffn_up.weight")


__all__ = ["hparams", "build", "prepare_tensors"]
