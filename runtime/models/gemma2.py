"""Gemma 2: Gemma 3's layer (norms before and after attention and feed-forward, GELU-gated
feed-forward, embeddings scaled by sqrt(n_embd)) without the per-head q/k norms, with every
other layer on the sliding window (layers 0, 2, 4, ...), one rope for all layers, and the
attention scores and the output logits soft-capped: c * tanh(s / c).

llama.cpp's defaults where the file does not say: caps 50 (scores) and 30 (logits), and the
attention scale 1 / sqrt(head_dim), but 1 / sqrt(n_embd / n_head) for the 27B model (46 layers).
"""
from __future__ import annotations

from .gemma3 import build, gemma_scales  # noqa: F401  (build: the same forward; cfg.attn_qk_norm stays off)


def hparams(kv, fields: dict) -> dict:
    n_layer = fields["n_layer"]
    window = kv.int("attention.sliding_window", 0)
    return dict(
        rope_neox=True,
        sliding_window=window,
        swa_layers=tuple(window > 0 and il % 2 == 0 for il in range(n_layer)),
        rope_base_swa=fields["rope_base"],
        rope_freq_scale_swa=fields["rope_freq_scale"],
        **gemma_scales(fields, big_model_layers=46),
        attn_logit_softcap=kv.float("attn_logit_softcapping", 50.0),
        final_logit_softcap=kv.float("final_logit_softcapping", 30.0),
    )
