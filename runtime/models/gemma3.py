"""Gemma 3: RMSNorm before and after both attention and feed-forward, per-head q/k norms,
GELU-gated feed-forward, embeddings scaled by sqrt(n_embd), and interleaved local
(sliding-window) and global attention layers with different rope bases.

The GGUF converter already added Gemma's "+1" to every norm weight, so norms here are plain
x / rms(x) * w.
"""
from __future__ import annotations

import math

import numpy as np

from ..graph import Op
from .common import attention, lm_head, rope

DEFAULT_SWA_PATTERN = 6  # five local layers, then one global, when the file does not say


def gemma_scales(fields: dict, big_model_layers: int) -> dict:
    """Gemma's attention and embedding scales. llama.cpp reads query_pre_attn_scalar as the
    head width, except for the 27B model (`big_model_layers` layers), which scales by
    n_embd / n_head; embeddings are multiplied by sqrt(n_embd), rounded to float32."""
    head_dim = fields["head_dim"] or fields["n_embd"] // fields["n_head"]
    scale_dim = fields["n_embd"] // fields["n_head"] if fields["n_layer"] == big_model_layers else head_dim
    return dict(attn_scale=1.0 / math.sqrt(scale_dim), embd_scale=float(np.sqrt(np.float32(fields["n_embd"]))))


def hparams(kv, fields: dict) -> dict:
    n_layer = fields["n_layer"]
    window = kv.int("attention.sliding_window", 0)
    pattern = kv.get("attention.sliding_window_pattern", DEFAULT_SWA_PATTERN)
    if window <= 0:
        swa_layers = (False,) * n_layer
    elif isinstance(pattern, tuple):  # newer converters write one flag per layer
        swa_layers = pattern
    else:  # every `pattern`-th layer is global, the others local
        swa_layers = tuple(pattern == 0 or il % pattern < pattern - 1 for il in range(n_layer))
    return dict(
        rope_neox=True,
        attn_qk_norm=True,
        sliding_window=window,
        swa_layers=swa_layers,
        rope_base_swa=kv.float("rope.freq_base_swa", 10000.0),
        **gemma_scales(fields, big_model_layers=62),
    )


def build(g, cfg) -> None:
    x = g.get_rows("token_embd.weight", name="inp_embd")
    x = g.scale(x, cfg.embd_scale, name="inp_scaled")                 # (T, n_embd)
    for il in range(cfg.n_layer):
        p = f"blk.{il}."
        h = g.rms_norm(x, p + "attn_norm.weight", cfg.rms_eps)
        q = g.mul_mat(p + "attn_q.weight", h)                         # (T, n_head * head_dim)
        k = g.mul_mat(p + "attn_k.weight", h)                         # (T, n_head_kv * head_dim)
        v = g.mul_mat(p + "attn_v.weight", h)
        if cfg.attn_qk_norm:                                          # Gemma 3 (not 2)
            q = g.rms_norm(q, p + "attn_q_norm.weight", cfg.rms_eps)  # per head
            k = g.rms_norm(k, p + "attn_k_norm.weight", cfg.rms_eps)
        q = rope(g, cfg, q, il)
        k = rope(g, cfg, k, il)
        a = attention(g, cfg, q, k, v, il)
        a = g.mul_mat(p + "attn_output.weight", a)                    # (T, n_embd)
        if il == cfg.n_layer - 1:  # past attention, only the rows whose logits are wanted matter
            a, x = g.output_rows(a), g.output_rows(x)
        a = g.rms_norm(a, p + "post_attention_norm.weight", cfg.rms_eps)
        x = g.add(x, a, name=p + "sa_out")
        h = g.rms_norm(x, p + "ffn_norm.weight", cfg.rms_eps)
        f = g.ffn(h, il, Op.GEGLU)                                    # (T, n_embd)
        f = g.rms_norm(f, p + "post_ffw_norm.weight", cfg.rms_eps)
        x = g.add(x, f, name=p + "l_out")
    lm_head(g, cfg, x)
