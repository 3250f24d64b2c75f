"""Gemma 2: Gemma 3's conversion (norm weights + 1, tokenizer keys) without per-head q/k norms,
with soft-capping of the attention scores and of the logits, and a sliding window on every
other layer."""
from __future__ import annotations

import gguf

from ..hf_config import HFConfig
from ..metadata import MetadataBuilder
from . import gemma3
from .base import Family

T = gguf.MODEL_TENSOR


def add_hparams(cfg: HFConfig, meta: MetadataBuilder) -> None:
    # Gemma 2's defaults where config.json omits a value (transformers' Gemma2Config)
    gemma3.add_gemma_defaults(cfg, meta, context_length=8192)
    meta.add_attn_logit_softcapping(float(cfg.get("attn_logit_softcapping", default=50.0)))
    meta.add_final_logit_softcapping(float(cfg.get("final_logit_softcapping", default=30.0)))
    meta.add_sliding_window(int(cfg.get("sliding_window", default=4096)))


FAMILY = Family(
    arch=gguf.MODEL_ARCH.GEMMA2,
    hf_architectures=("Gemma2ForCausalLM",),
    block_tensors=(T.ATTN_NORM, T.ATTN_Q, T.ATTN_K, T.ATTN_V, T.ATTN_OUT, T.ATTN_POST_NORM,
                   T.FFN_NORM, T.FFN_GATE, T.FFN_UP, T.FFN_DOWN, T.FFN_POST_NORM),
    add_hparams=add_hparams,
    transform=gemma3.transform,
    add_tokenizer_keys=gemma3.add_tokenizer_keys,
)
