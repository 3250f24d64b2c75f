"""Llama: pre-norm decoder with RMSNorm, rotary attention (GQA) and a SwiGLU feed-forward.

Also serves qwen2, qwen3, qwen3moe and phi3 (see models.ARCHITECTURES): the same forward with
q/k/v biases (qwen2) or each q/k head RMS-normed before the rope (qwen3), NEOX-ordered rope, and
for qwen3moe a mixture of experts in place of the FFN (Graph.moe_ffn, backends/moe.py). Llama
GGUFs use adjacent-pair rope because the converter permuted the rows of Q and K to undo
Hugging Face's rotate-half layout.
"""
from __future__ import annotations

from ..graph import Op
from .common import attention, lm_head, rope


def hparams(kv, fields: dict) -> dict:
    """A sliding window over the keys in every layer where the file sets one (Mistral), with
    the model's one rope."""
    window = kv.int("attention.sliding_window", 0)
    if window <= 0:
        return {}
    return {"sliding_window": window, "swa_layers": (True,) * fields["n_layer"],
            "rope_base_swa": fields["rope_base"], "rope_freq_scale_swa": fields["rope_freq_scale"]}


def build(g, cfg, freq_factors: str | None = None) -> None:
    """freq_factors: a weight of per-pair frequency divisors (phi3's LongRoPE); by default
    Llama 3.1+'s (rope type "llama3"), which the converter stores as rope_freqs.weight."""
    factors = freq_factors or ("rope_freqs.weight" if g.has_weight("rope_freqs.weight") else None)
    x = g.get_rows("token_embd.weight", name="inp_embd")            # (T, n_embd)
    for il in range(cfg.n_layer):
        p = f"blk.{il}."
        h = g.rms_norm(x, p + "attn_norm.weight", cfg.rms_eps)      # (T, n_embd)
        q = g.mul_mat(p + "attn_q.weight", h)                       # (T, n_head * head_dim)
        k = g.mul_mat(p + "attn_k.weight", h)                       # (T, n_head_kv * head_dim)
        v = g.mul_mat(p + "attn_v.weight", h)                       # (T, n_head_kv * head_dim_v)
        if cfg.attn_qkv_bias:
            q = g.add_bias(q, p + "attn_q.bias")
            k = g.add_bias(k, p + "attn_k.bias")
            v = g.add_bias(v, p + "attn_v.bias")
        if cfg.attn_qk_norm:
            q = g.rms_norm(q, p + "attn_q_norm.weight", cfg.rms_eps)   # per head (head_dim wide)
            k = g.rms_norm(k, p + "attn_k_norm.weight", cfg.rms_eps)
        q = rope(g, cfg, q, il, factors)
        k = rope(g, cfg, k, il, factors)
        a = attention(g, cfg, q, k, v, il)                          # (T, n_head * head_dim_v)
        a = g.mul_mat(p + "attn_output.weight", a)                  # (T, n_embd)
        if il == cfg.n_layer - 1:  # past attention, only the rows whose logits are wanted matter
            a, x = g.output_rows(a), g.output_rows(x)
        x = g.add(x, a, name=p + "ffn_inp")
        h = g.rms_norm(x, p + "ffn_norm.weight", cfg.rms_eps)
        if cfg.n_expert:                                            # mixture of experts (qwen3moe)
            f = g.moe_ffn(h, il, cfg.n_expert_used, cfg.moe_norm_weights)
        else:
            f = g.ffn(h, il, Op.SWIGLU)                             # (T, n_embd)
        x = g.add(x, f, name=p + "l_out")                           # (T, n_embd)
    lm_head(g, cfg, x)
