"""Config from GGUF metadata, graph building (names, shape checks, missing tensors) and the
buffer planner (no two live tensors share memory; in-place reuse; arena smaller than naive)."""
import math

import numpy as np
import pytest

from lanternlm.formats.metadata import MetadataError
from lanternlm.runtime.config import ConfigError, ModelConfig
from lanternlm.runtime.graph import INPLACE_OPS, Graph, GraphError, Kind, MissingTensorsError, Op
from lanternlm.runtime.models import ARCHITECTURES, UnknownArchitectureError
from lanternlm.runtime.planner import plan, tensor_size


def llama_kv(arch="llama", **extra):
    kv = {
        "general.architecture": arch,
        f"{arch}.context_length": 8192,
        f"{arch}.embedding_length": 64,
        f"{arch}.block_count": 3,
        f"{arch}.feed_forward_length": 96,
        f"{arch}.attention.head_count": 4,
        f"{arch}.attention.head_count_kv": 2,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-5,
        f"{arch}.rope.freq_base": 100000.0,
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(50)],
    }
    kv.update(extra)
    return kv


def llama_shapes(cfg, tied=False, bias=False):
    e, q, kv, ff = cfg.n_embd, cfg.n_embd_q, cfg.n_embd_kv, cfg.n_ff
    shapes = {"token_embd.weight": (cfg.n_vocab, e), "output_norm.weight": (e,)}
    if not tied:
        shapes["output.weight"] = (cfg.n_vocab, e)
    for il in range(cfg.n_layer):
        p = f"blk.{il}."
        shapes.update({p + "attn_norm.weight": (e,), p + "attn_q.weight": (q, e), p + "attn_k.weight": (kv, e),
                       p + "attn_v.weight": (kv, e), p + "attn_output.weight": (e, q), p + "ffn_norm.weight": (e,),
                       p + "ffn_gate.weight": (ff, e), p + "ffn_up.weight": (ff, e), p + "ffn_down.weight": (e, ff)})
        if bias:
            shapes.update({p + "attn_q.bias": (q,), p + "attn_k.bias": (kv,), p + "attn_v.bias": (kv,)})
    return shapes


def build(cfg, shapes, n_tokens=8, all_logits=False, embeddings=False):
    g = Graph(cfg.arch, shapes, n_tokens, all_logits, embeddings)
    ARCHITECTURES[cfg.arch].module.build(g, cfg)
    return g.finish()


# ---- config ---------------------------------------------------------------------------------

def test_llama_config_and_derived_fields():
    cfg = ModelConfig.from_kv(llama_kv())
    assert (cfg.n_vocab, cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.n_head_kv) == (50, 64, 3, 4, 2)
    assert (cfg.head_dim, cfg.head_dim_v, cfg.n_rot, cfg.n_gqa, cfg.n_embd_kv) == (16, 16, 16, 2, 32)
    assert cfg.rope_base == 100000.0 and not cfg.rope_neox and not cfg.attn_qkv_bias
    assert cfg.attn_scale == pytest.approx(0.25)
    assert cfg.swa_layers == (False,) * 3 and cfg.layer_window(2) == 0
    with pytest.raises(Exception):
        cfg.n_embd = 3  # frozen


def test_qwen2_alias_is_llama_with_biases_and_neox():
    cfg = ModelConfig.from_kv(llama_kv("qwen2"))
    assert ARCHITECTURES["qwen2"].module is ARCHITECTURES["llama"].module
    assert cfg.rope_neox and cfg.attn_qkv_bias


def test_gemma3_layer_pattern_scale_and_rope_bases():
    kv = llama_kv("gemma3", **{"gemma3.block_count": 18, "gemma3.attention.key_length": 256,
                               "gemma3.attention.value_length": 256, "gemma3.attention.sliding_window": 512,
                               "gemma3.rope.freq_base": 1e6, "gemma3.embedding_length": 640,
                               "gemma3.attention.head_count": 4, "gemma3.attention.head_count_kv": 1})
    cfg = ModelConfig.from_kv(kv)
    assert [il for il in range(18) if not cfg.swa_layers[il]] == [5, 11, 17]  # every 6th is global
    assert cfg.layer_window(0) == 512 and cfg.layer_window(5) == 0
    assert cfg.layer_rope_base(0) == 10000.0 and cfg.layer_rope_base(5) == 1e6
    assert cfg.attn_scale == pytest.approx(1 / 16)  # 1/sqrt(head_dim 256), not 1/sqrt(640/4)
    assert cfg.embd_scale == pytest.approx(math.sqrt(640), rel=1e-7) and cfg.rope_neox
    kv["gemma3.attention.sliding_window_pattern"] = np.array([True, False] * 9)
    assert ModelConfig.from_kv(kv).swa_layers == (True, False) * 9


def test_linear_rope_scaling_applies_to_global_layers():
    cfg = ModelConfig.from_kv(llama_kv(**{"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 8.0}))
    assert cfg.layer_rope_freq_scale(0) == 0.125 and cfg.rope_yarn.ext_factor == 0.0
    yarn = ModelConfig.from_kv(llama_kv(**{"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0,
                                           "llama.rope.scaling.original_context_length": 512}))
    assert yarn.rope_freq_scale == 0.25 and yarn.rope_yarn.ext_factor == 1.0 and yarn.rope_yarn.n_ctx_orig == 512
    with pytest.raises(ConfigError, match="llama.rope.scaling.type: rope scaling 'longrope' is not supported"):
        ModelConfig.from_kv(llama_kv(**{"llama.rope.scaling.type": "longrope", "llama.rope.scaling.factor": 4.0}))


def test_config_errors_name_the_problem():
    kv = llama_kv()
    del kv["llama.attention.layer_norm_rms_epsilon"]
    with pytest.raises(MetadataError, match="lacks llama.attention.layer_norm_rms_epsilon"):
        ModelConfig.from_kv(kv)
    with pytest.raises(UnknownArchitectureError, match="mamba"):
        ModelConfig.from_kv(llama_kv("mamba"))
    with pytest.raises(ConfigError, match="not a multiple of n_head_kv 3"):
        ModelConfig.from_kv(llama_kv(**{"llama.attention.head_count_kv": 3}))
    with pytest.raises(ConfigError, match="varies per layer"):
        ModelConfig.from_kv(llama_kv(**{"llama.feed_forward_length": np.array([96, 128, 96])}))


# ---- graph ----------------------------------------------------------------------------------

def test_graph_nodes_are_named_after_gguf_tensors():
    cfg = ModelConfig.from_kv(llama_kv())
    g = build(cfg, llama_shapes(cfg))
    names = {n.out.name for n in g.nodes}
    assert {"inp_embd", "blk.0.attn_norm", "blk.0.attn_q", "blk.2.ffn_down", "blk.2.l_out",
            "result_norm", "result_output"} <= names
    mm = [n for n in g.nodes if n.op is Op.MUL_MAT]
    assert len(mm) == 7 * 3 + 1 and mm[-1].weights == ("output.weight",)
    assert g.output.name == "result_output" and not g.output.per_token  # last token only
    tied = build(cfg, llama_shapes(cfg, tied=True))
    assert tied.output.name == "result_output" and tied.nodes[-1].weights == ("token_embd.weight",)
    every = build(cfg, llama_shapes(cfg), all_logits=True)
    assert every.output.per_token and every.output.kind is Kind.EXTERNAL


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_embeddings_graph_ends_at_the_final_norm_of_every_token(arch):
    cfg = ModelConfig.from_kv(llama_kv(arch))
    g = build(cfg, llama_shapes(cfg, bias=arch == "qwen2"), embeddings=True)
    assert g.output is g.nodes[-1].out and g.nodes[-1].op is Op.RMS_NORM
    assert g.output.name == "result_norm" and g.output.width == cfg.n_embd
    assert g.output.per_token and g.output.kind is Kind.EXTERNAL       # every row, into the caller's array
    assert not any(n.op is Op.LAST_ROW for n in g.nodes)                # no row dropped before the norm
    assert all(n.weights != ("output.weight",) for n in g.nodes)        # no LM head
    plan(g)                                                             # every computed tensor is used


def test_pooling_type_is_read_and_checked():
    assert ModelConfig.from_kv(llama_kv()).pooling_type == -1           # the file says nothing
    assert ModelConfig.from_kv(llama_kv(**{"llama.pooling_type": 3})).pooling_type == 3
    with pytest.raises(MetadataError, match="llama.pooling_type"):   # checked where it is read
        ModelConfig.from_kv(llama_kv(**{"llama.pooling_type": 9}))


def test_missing_tensors_are_all_listed():
    cfg = ModelConfig.from_kv(llama_kv("qwen2"))
    shapes = llama_shapes(cfg, bias=True)
    for name in ("blk.1.ffn_up.weight", "blk.2.attn_k.bias", "output_norm.weight"):
        del shapes[name]
    with pytest.raises(MissingTensorsError) as err:
        build(cfg, shapes)
    assert set(err.value.missing) == {"blk.1.ffn_up.weight", "blk.2.attn_k.bias", "output_norm.weight"}
    assert "blk.1.ffn_up.weight" in str(err.value)


def test_rope_factors_reach_every_rope_and_must_fit_the_rotated_pairs():
    cfg = ModelConfig.from_kv(llama_kv())
    g = build(cfg, {**llama_shapes(cfg), "rope_freqs.weight": (cfg.n_rot // 2,)})
    ropes = [n for n in g.nodes if n.op is Op.ROPE]
    assert ropes and all(n.params["freq_factors"] == "rope_freqs.weight" for n in ropes)
    assert all(n.weights == ("rope_freqs.weight",) for n in ropes)
    with pytest.raises(GraphError, match="rope_freqs.weight"):
        build(cfg, {**llama_shapes(cfg), "rope_freqs.weight": (cfg.n_rot,)})


def test_shape_mismatch_names_the_tensor():
    cfg = ModelConfig.from_kv(llama_kv())
    shapes = llama_shapes(cfg)
    shapes["blk.1.ffn_down.weight"] = (64, 95)
    with pytest.raises(GraphError, match="blk.1.ffn_down.weight"):
        build(cfg, shapes)


# ---- planner --------------------------------------------------------------------------------

def live_ranges(g):
    """Per activation: (first node writing it, last node reading it); the output lives to the end."""
    first, last = {}, {}
    for i, node in enumerate(g.nodes):
        first.setdefault(node.out, i)
        for s in node.srcs:
            last[s] = i
    last[g.output] = len(g.nodes)
    return {t: (first[t], last.get(t, first[t])) for t in first if t.kind is Kind.ACTIVATION}


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("n_tokens", [1, 16])
def test_plan_never_overlaps_live_tensors(arch, n_tokens):
    kv = llama_kv(arch, **({"gemma3.attention.sliding_window": 4} if arch == "gemma3" else {}))
    cfg = ModelConfig.from_kv(kv)
    shapes = llama_shapes(cfg, tied=True)
    if arch == "gemma3":
        for il in range(cfg.n_layer):
            p = f"blk.{il}."
            shapes.update({p + "attn_q_norm.weight": (cfg.head_dim,), p + "attn_k_norm.weight": (cfg.head_dim,),
                           p + "post_attention_norm.weight": (cfg.n_embd,), p + "post_ffw_norm.weight": (cfg.n_embd,)})
    g = build(cfg, shapes, n_tokens)
    p = plan(g)
    ranges = live_ranges(g)
    inplace_pairs = {(n.srcs[0], n.out) for n in g.nodes if n.op in INPLACE_OPS}
    span = {t: (p.offsets[t.name], p.offsets[t.name] + t.rows(n_tokens) * t.width) for t in ranges}
    tensors = list(ranges)
    for i, a in enumerate(tensors):
        assert span[a][0] % 16 == 0 and span[a][1] <= p.size
        for b in tensors[i + 1:]:
            (a0, a1), (b0, b1) = ranges[a], ranges[b]
            overlap_time = a0 < b1 and b0 < a1  # b written while a still to be read, or vice versa
            overlap_mem = span[a][0] < span[b][1] and span[b][0] < span[a][1]
            if overlap_time and overlap_mem:
                assert (a, b) in inplace_pairs and a1 == b0, f"{a.name} and {b.name} share memory while live"
    shared = sum(1 for a, b in inplace_pairs if a in span and span[a][0] == span[b][0])
    assert shared >= 3 * cfg.n_layer  # rope, residual adds and activations run in place
    assert p.size < p.naive_size / 4
    assert p.size >= max(tensor_size(t, n_tokens) for t in ranges)
