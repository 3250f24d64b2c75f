"""Llama: the generic decoder, with q/k rows reordered for GGML's rope and llama3 rope factors."""
from __future__ import annotations

import math

import gguf
import numpy as np

from ..hf_config import HFConfig
from ..metadata import MetadataBuilder
from .base import Family

T = gguf.MODEL_TENSOR


def add_hparams(cfg: HFConfig, meta: MetadataBuilder) -> None:
    meta.add_vocab_size(int(cfg.require("vocab_size")))
    meta.add_rope_dimension_count(cfg.head_dim)


def interleave_rope_halves(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder a q or k projection's rows (weight (n_heads*head_dim, n_in) or bias) per head.

    HF Llama rotates dimension i of a head with dimension i + head_dim/2 ("rotate_half");
    GGML's normal rope mode rotates adjacent pairs (2i, 2i+1). Moving row i to 2i and row
    i + head_dim/2 to 2i + 1 makes the adjacent-pair rope compute the same attention scores.
    """
    head_dim = w.shape[0] // n_heads
    half = head_dim // 2
    within_head = np.stack([np.arange(half), np.arange(half) + half], axis=1).reshape(-1)
    rows = (np.arange(n_heads)[:, None] * head_dim + within_head[None, :]).reshape(-1)
    return w[rows]


def transform(hf_name: str, data: np.ndarray, cfg: HFConfig) -> np.ndarray:
    if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        return interleave_rope_halves(data, cfg.n_head)
    if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        return interleave_rope_halves(data, cfg.n_head_kv)
    return data


def llama3_rope_factors(cfg: HFConfig) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1's rope scaling (HF's "llama3" rope type), f32 (head_dim/2,).

    Wavelengths shorter than original_ctx / high_freq_factor keep their frequency, longer than
    original_ctx / low_freq_factor are slowed by `factor`, and the band between blends the two.
    """
    params = cfg.rope_parameters()
    base = float(params.get("rope_theta") or cfg.rope_theta() or 10000.0)
    dim = cfg.head_dim
    factor = float(params.get("factor", 8.0))
    low = float(params.get("low_freq_factor", 1.0))
    high = float(params.get("high_freq_factor", 4.0))
    original_ctx = float(params.get("original_max_position_embeddings",
                                    cfg.get("original_max_position_embeddings", default=8192)))
    inv_freq = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    wavelength = 2 * math.pi / inv_freq
    smooth = (original_ctx / wavelength - low) / (high - low)
    blended = 1.0 / ((1.0 - smooth) / factor + smooth)
    factors = np.where(wavelength < original_ctx / high, 1.0,
                       np.where(wavelength > original_ctx / low, factor, blended))
    return factors.astype(np.float32)


def extra_tensors(cfg: HFConfig):
    if cfg.rope_parameters().get("rope_type") == "llama3":
        yield gguf.TENSOR_NAMES[T.ROPE_FREQS] + ".weight", llama3_rope_factors(cfg)


def add_tokenizer_keys(vocab, meta: MetadataBuilder) -> None:
    prefix_space = vocab.tokenizer_config.get("add_prefix_space")
    if isinstance(prefix_space, bool):
        meta.add_add_space_prefix(prefix_space)


FAMILY = Family(
    arch=gguf.MODEL_ARCH.LLAMA,
    hf_architectures=("LlamaForCausalLM",),
    block_tensors=(T.ATTN_NORM, T.ATTN_Q, T.ATTN_K, T.ATTN_V, T.ATTN_OUT,
                   T.FFN_NORM, T.FFN_GATE, T.FFN_UP, T.FFN_DOWN),
    add_hparams=add_hparams,
    transform=transform,
    extra_tensors=extra_tensors,
    add_tokenizer_keys=add_tokenizer_keys,
    rope_types=("llama3",),
)
