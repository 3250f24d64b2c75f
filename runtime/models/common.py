"""Graph pieces every architecture here shares."""
from __future__ import annotations


def output_weight(g) -> str:
    """The LM head: output.weight, or the token embeddings when the model ties them."""
    return "output.weight" if g.has_weight("output.weight") else "token_embd.weight"


def rope(g, cfg, x, il: int, freq_factors: str | None = None):
    """Rotate queries or keys of layer `il` with that layer's base and scale (and per-pair
    frequency divisors, a weight's name)."""
    return g.rope(x, head_dim=cfg.head_dim, n_rot=cfg.n_rot, base=cfg.layer_rope_base(il),
                  freq_scale=cfg.layer_rope_freq_scale(il), neox=cfg.rope_neox, freq_factors=freq_factors,
                  yarn=cfg.rope_yarn)


def attention(g, cfg, q, k, v, il: int):
    return g.attention(q, k, v, layer=il, n_head=cfg.n_head, n_head_kv=cfg.n_head_kv,
                       head_dim=cfg.head_dim, head_dim_v=cfg.head_dim_v, scale=cfg.attn_scale,
                       window=cfg.layer_window(il), name=f"blk.{il}.kqv_out", softcap=cfg.attn_logit_softcap)


def lm_head(g, cfg, x) -> None:
    """Final norm and output projection of the rows whose logits are wanted; for an embeddings
    graph the normed hidden state itself is the output (llama.cpp's t_embd)."""
    x = g.output_rows(x)
    x = g.rms_norm(x, "output_norm.weight", cfg.rms_eps, name="result_norm")
    if g.embeddings:
        g.set_output(x)
        return
    logits = g.mul_mat(output_weight(g), x, name="result_output")
    if logits.width != cfg.n_vocab and not g.missing:
        raise ValueError(f"{cfg.arch}: the output projection gives {logits.width} logits, but the vocabulary "
                         f"has {cfg.n_vocab} tokens ({cfg.arch}.vocab_size, or tokenizer.ggml.tokens)")
    if cfg.final_logit_softcap:
        logits = g.softcap(logits, cfg.final_logit_softcap, name="result_softcapped")
    g.set_output(logits)
