"""Qwen2: the generic decoder with q/k/v biases; its rope is GGML's NEOX mode, so no reordering."""
from __future__ import annotations

import gguf

from .base import Family

T = gguf.MODEL_TENSOR

FAMILY = Family(
    arch=gguf.MODEL_ARCH.QWEN2,
    hf_architectures=("Qwen2ForCausalLM",),
    block_tensors=(T.ATTN_NORM, T.ATTN_Q, T.ATTN_K, T.ATTN_V, T.ATTN_OUT,
                   T.FFN_NORM, T.FFN_GATE, T.FFN_UP, T.FFN_DOWN),
    block_biases=(T.ATTN_Q, T.ATTN_K, T.ATTN_V),
)
