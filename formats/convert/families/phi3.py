"""Phi-3 / Phi-3.5 / Phi-4-mini: q, k, v fused in `attn_qkv` and gate, up in `ffn_up` (written
fused, as the checkpoint and llama.cpp's files have them), NEOX rope over the first
partial_rotary_factor of each head, a sliding window where the config sets one, and LongRoPE:
the config's short and long per-pair factors become `rope_factors_short.weight` /
`rope_factors_long.weight`, with the original context and the cos/sin magnitude factor, as
llama.cpp's converter writes them."""
from __future__ import annotations

import math

import gguf
import numpy as np

from ..checkpoint import ConvertError
from ..hf_config import HFConfig
from ..metadata import MetadataBuilder
from .base import Family

T = gguf.MODEL_TENSOR
LONGROPE = ("longrope", "su")   # "su": the name Phi-3's first configs gave it


def n_rot(cfg: HFConfig) -> int:
    fraction = cfg.get("partial_rotary_factor", default=cfg.rope_parameters().get("partial_rotary_factor", 1.0))
    return int(cfg.head_dim * float(fraction))


def _longrope(cfg: HFConfig) -> dict | None:
    params = cfg.rope_parameters()
    return params if params.get("rope_type") in LONGROPE else None


def _original_context(cfg: HFConfig, params: dict) -> int:
    return int(params.get("original_max_position_embeddings")
               or cfg.require("original_max_position_embeddings"))


def add_hparams(cfg: HFConfig, meta: MetadataBuilder) -> None:
    meta.add_vocab_size(int(cfg.require("vocab_size")))
    meta.add_rope_dimension_count(n_rot(cfg))
    if (window := cfg.get("sliding_window")) is not None:
        meta.add_sliding_window(int(window))
    params = _longrope(cfg)
    if params is None:
        return
    original = _original_context(cfg, params)
    scale = int(cfg.require("max_position_embeddings")) / original
    # transformers' (and llama.cpp's) magnitude factor unless the config gives one
    attn_factor = params.get("attention_factor")
    if attn_factor is None:
        attn_factor = math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1.0 else 1.0
    meta.add_rope_scaling_attn_factors(float(attn_factor))
    meta.add_rope_scaling_orig_ctx_len(original)


def extra_tensors(cfg: HFConfig):
    params = _longrope(cfg)
    if params is None:
        return
    for key, tensor in (("long_factor", T.ROPE_FACTORS_LONG), ("short_factor", T.ROPE_FACTORS_SHORT)):
        factors = np.asarray(params.get(key), dtype=np.float32)
        if factors.shape != (n_rot(cfg) // 2,):
            raise ConvertError(f"config.json: longrope {key} has {factors.size} values; the rope rotates "
                               f"{n_rot(cfg) // 2} pairs")
        yield gguf.TENSOR_NAMES[tensor] + ".weight", factors


FAMILY = Family(
    arch=gguf.MODEL_ARCH.PHI3,
    hf_architectures=("Phi3ForCausalLM",),
    block_tensors=(T.ATTN_NORM, T.ATTN_QKV, T.ATTN_OUT, T.FFN_NORM, T.FFN_UP, T.FFN_DOWN),
    add_hparams=add_hparams,
    extra_tensors=extra_tensors,
    rope_types=LONGROPE,
)
