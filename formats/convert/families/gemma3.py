"""Gemma 3 (text): norm weights stored as w + 1, interleaved sliding-window and global layers."""
from __future__ import annotations

import gguf
import numpy as np

from ..hf_config import HFConfig
from ..metadata import MetadataBuilder
from .base import Family

T = gguf.MODEL_TENSOR

# llama.cpp assumes every 6th Gemma 3 layer is global and the others use the sliding window
LLAMA_CPP_SWA_PATTERN = 6


def _swa_flags(cfg: HFConfig) -> list[bool] | None:
    layer_types = cfg.get("layer_types")
    if not isinstance(layer_types, list):
        return None
    return [kind == "sliding_attention" for kind in layer_types]


def add_gemma_defaults(cfg: HFConfig, meta: MetadataBuilder, context_length: int) -> None:
    """What Gemma configs may leave out, with transformers' defaults: the context, the norm
    epsilon and the head width (256)."""
    meta.add_context_length(int(cfg.get("max_position_embeddings", default=context_length)))
    meta.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", default=1e-6)))
    head_dim = int(cfg.get("head_dim", default=256))
    meta.add_key_length(head_dim)
    meta.add_value_length(head_dim)


def add_hparams(cfg: HFConfig, meta: MetadataBuilder) -> None:
    add_gemma_defaults(cfg, meta, context_length=131072)   # Gemma3TextConfig's
    meta.add_rope_freq_base(float(cfg.rope_theta() or 1_000_000.0))
    if (theta_swa := cfg.rope_theta_swa()) is not None:
        meta.add_rope_freq_base_swa(theta_swa)
    if cfg.get("final_logit_softcapping"):
        meta.add_final_logit_softcapping(float(cfg.get("final_logit_softcapping")))
    pattern = cfg.get("sliding_window_pattern", "_sliding_window_pattern")
    if pattern != 1 and cfg.get("sliding_window") is not None:
        meta.add_sliding_window(int(cfg.get("sliding_window")))
        flags = _swa_flags(cfg)
        assumed = [(il + 1) % LLAMA_CPP_SWA_PATTERN != 0 for il in range(cfg.n_layer)]
        if flags is not None and flags != assumed:
            # only written when the layers differ from what llama.cpp assumes
            meta.add_sliding_window_pattern(flags)


def transform(hf_name: str, data: np.ndarray, cfg: HFConfig) -> np.ndarray:
    # Gemma3RMSNorm multiplies by (1 + w); GGUF stores the factor itself
    if hf_name.endswith("norm.weight"):
        return data + np.float32(1.0)
    return data


def add_tokenizer_keys(vocab, meta: MetadataBuilder) -> None:
    if vocab.model == "llama":
        meta.add_add_space_prefix(False)  # Gemma's SentencePiece model adds no dummy prefix


FAMILY = Family(
    arch=gguf.MODEL_ARCH.GEMMA3,
    hf_architectures=("Gemma3ForCausalLM",),
    block_tensors=(T.ATTN_NORM, T.ATTN_Q, T.ATTN_K, T.ATTN_V, T.ATTN_OUT, T.ATTN_Q_NORM,
                   T.ATTN_K_NORM, T.ATTN_POST_NORM, T.FFN_NORM, T.FFN_GATE, T.FFN_UP,
                   T.FFN_DOWN, T.FFN_POST_NORM),
    add_hparams=add_hparams,
    transform=transform,
    add_tokenizer_keys=add_tokenizer_keys,
)
