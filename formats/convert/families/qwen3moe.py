"""Qwen3-MoE: Qwen3's attention (q/k head norms) with a mixture-of-experts FFN in every layer:
a router (`mlp.gate` -> ffn_gate_inp) and experts whose per-expert projections
(`mlp.experts.E.{gate,up,down}_proj`) are stacked into one 3-D tensor each
(ffn_{gate,up,down}_exps, experts first), as llama.cpp's converter writes them."""
from __future__ import annotations

import re

import gguf

from ..checkpoint import ConvertError
from ..hf_config import HFConfig
from ..metadata import MetadataBuilder
from .base import Family

T = gguf.MODEL_TENSOR
_EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")


def stacked(hf_name: str) -> tuple[str, int] | None:
    m = _EXPERT.match(hf_name)
    if m is None:
        return None
    return f"blk.{m[1]}.ffn_{m[3]}_exps.weight", int(m[2])


def add_hparams(cfg: HFConfig, meta: MetadataBuilder) -> None:
    meta.add_vocab_size(int(cfg.require("vocab_size")))
    if cfg.get("mlp_only_layers") or int(cfg.get("decoder_sparse_step", default=1)) != 1:
        raise ConvertError("config.json: layers with a dense FFN (mlp_only_layers, decoder_sparse_step) are "
                           "not supported for qwen3moe; llama.cpp's files have experts in every layer")
    meta.add_expert_count(int(cfg.require("num_experts", "num_local_experts")))
    meta.add_expert_used_count(int(cfg.require("num_experts_per_tok")))
    meta.add_expert_feed_forward_length(int(cfg.require("moe_intermediate_size")))


FAMILY = Family(
    arch=gguf.MODEL_ARCH.QWEN3MOE,
    hf_architectures=("Qwen3MoeForCausalLM",),
    block_tensors=(T.ATTN_NORM, T.ATTN_Q, T.ATTN_Q_NORM, T.ATTN_K, T.ATTN_K_NORM, T.ATTN_V, T.ATTN_OUT,
                   T.FFN_NORM, T.FFN_GATE_INP, T.FFN_GATE_EXP, T.FFN_UP_EXP, T.FFN_DOWN_EXP),
    add_hparams=add_hparams,
    stacked=stacked,
)
