"""Mistral: Llama's layout (llama.cpp writes it as a llama file) with a sliding window over the
keys in every layer when the config sets one (`llama.attention.sliding_window`)."""
from __future__ import annotations

from dataclasses import replace

from ..hf_config import HFConfig
from ..metadata import MetadataBuilder
from . import llama


def add_hparams(cfg: HFConfig, meta: MetadataBuilder) -> None:
    llama.add_hparams(cfg, meta)
    if (window := cfg.get("sliding_window")) is not None:
        meta.add_sliding_window(int(window))


FAMILY = replace(llama.FAMILY, hf_architectures=("MistralForCausalLM",), add_hparams=add_hparams)
