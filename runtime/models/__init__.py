"""Model definitions, one small module per architecture, all exporting the same two names:

    hparams(kv: config.KV, fields: dict) -> dict
        config fields this architecture reads or derives itself (on top of the generic ones);
    build(g: graph.Graph, cfg: ModelConfig) -> None
        the forward pass, as graph builder calls, ending with g.set_output(logits)
        (common.lm_head, which outputs the final hidden states instead for g.embeddings).

`ARCHITECTURES` maps a GGUF `general.architecture` to the module implementing its forward and
the config overrides that distinguish it (as mlx-lm's aliases do): qwen2 is llama with q/k/v
biases and NEOX-ordered rope, qwen3 llama with NEOX rope and q/k heads RMS-normed; gemma2
runs gemma3's forward with its own settings; phi3 is llama over views of its fused matrices.
A module may also export `prepare_tensors(tensors, cfg)` (see Architecture.prepare_tensors).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Mapping

from . import gemma2, gemma3, llama, phi3


@dataclass(frozen=True)
class Architecture:
    module: ModuleType
    overrides: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    def prepare_tensors(self, tensors: dict, cfg) -> None:
        """The module's `prepare_tensors(tensors, cfg)`, where it has one: views it adds to the
        file's tensors before a graph is built (phi3's fused matrices, split by rows)."""
        prepare = getattr(self.module, "prepare_tensors", None)
        if prepare is not None:
            prepare(tensors, cfg)


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(llama),
    "qwen2": Architecture(llama, MappingProxyType({"rope_neox": True, "attn_qkv_bias": True})),
    "qwen3": Architecture(llama, MappingProxyType({"rope_neox": True, "attn_qk_norm": True})),
    # qwen3 with a mixture-of-experts FFN whose top-k weights llama.cpp always renormalizes
    "qwen3moe": Architecture(llama, MappingProxyType({"rope_neox": True, "attn_qk_norm": True,
                                                      "moe_norm_weights": True})),
    "gemma2": Architecture(gemma2),
    "gemma3": Architecture(gemma3),
    "phi3": Architecture(phi3),
}


class UnknownArchitectureError(ValueError):
    pass


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unsupported model architecture {name!r} (general.architecture); "
            f"supported: {', '.join(sorted(ARCHITECTURES))}"
        ) from None


__all__ = ["ARCHITECTURES", "Architecture", "UnknownArchitectureError", "get_architecture"]
