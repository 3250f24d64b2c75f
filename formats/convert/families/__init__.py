"""Model families the converter supports, one small module each, found by HF architecture name.

Each module defines `FAMILY`, a `Family` saying which GGUF architecture it writes and what it
does beyond the generic conversion: extra hyperparameters, tensor rewrites (llama's q/k
permutation, gemma's norm offset), tensors it generates (llama3 rope factors), tokenizer keys.
"""
from __future__ import annotations

from ..checkpoint import ConvertError
from .base import Family
from . import gemma2, gemma3, llama, mistral, phi3, qwen2, qwen3, qwen3moe

__all__ = ["Family", "FAMILIES", "family_for"]

# HF `architectures[0]` -> family
FAMILIES: dict[str, Family] = {
    hf_name: module.FAMILY
    for module in (llama, mistral, phi3, qwen2, qwen3, qwen3moe, gemma2, gemma3)
    for hf_name in module.FAMILY.hf_architectures
}


def family_for(config: dict) -> tuple[str, Family]:
    """(HF architecture name, family) for a config.json, or a ConvertError naming it."""
    names = config.get("architectures")
    if not isinstance(names, list) or not names or not isinstance(names[0], str):
        raise ConvertError("config.json names no model architecture (no 'architectures' list)")
    try:
        return names[0], FAMILIES[names[0]]
    except KeyError:
        raise ConvertError(f"unsupported architecture {names[0]!r} in config.json; supported: "
                           f"{', '.join(sorted(FAMILIES))}") from None
