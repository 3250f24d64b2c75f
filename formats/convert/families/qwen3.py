"""Qwen3: Qwen2 without q/k/v biases, with each query and key head RMS-normed (q_norm, k_norm)."""
from __future__ import annotations

import gguf

from .base import Family

T = gguf.MODEL_TENSOR

FAMILY = Family(
    arch=gguf.MODEL_ARCH.QWEN3,
    hf_architectures=("Qwen3ForCausalLM",),
    block_tensors=(T.ATTN_NORM, T.ATTN_Q, T.ATTN_Q_NORM, T.ATTN_K, T.ATTN_K_NORM, T.ATTN_V, T.ATTN_OUT,
                   T.FFN_NORM, T.FFN_GATE, T.FFN_UP, T.FFN_DOWN),
)
