"""`convert_hf_to_gguf` against transformers: tiny random llama / qwen2 / gemma3 checkpoints are
converted to f32 GGUF files, run with our Engine and tokenized with our tokenizer, and compared
with transformers' logits and the HF tokenizer's ids. Each case also exercises one checkpoint
form: an untied lm_head, sharded weights with an index, a padded vocabulary, bfloat16 weights,
a SentencePiece tokenizer, and each recognised BPE pre-tokenizer.
"""
import json
import shutil

import numpy as np
import pytest
import torch
from gguf import GGUFValueType as V
from gguf import TokenType

from tiny_hf_checkpoints import (CHAT_TEMPLATE, CORPUS, GEMMA_CHAT_TEMPLATE,  # noqa: E402
                                 build_checkpoint, hf_logits, use_ggml_gelu)

from lanternlm.formats.convert import convert_hf_to_gguf  # noqa: E402
from lanternlm.formats.convert.families.llama import interleave_rope_halves  # noqa: E402
from lanternlm.formats.gguf import read_gguf  # noqa: E402

# case -> (family, build options)
CASES = {
    "llama": ("llama", {}),                                            # untied, Llama 3 BPE
    "qwen2": ("qwen2", {"extra_vocab": 7, "max_shard_size": "40KB"}),  # biases, shards, padding
    "qwen3": ("qwen3", {}),                                            # q/k head norms, tied head
    "mistral": ("mistral", {}),                                        # a sliding window of 8 keys
    "gemma2": ("gemma2", {}),                                          # soft caps, alternating windows
    "phi3": ("phi3", {}),                                              # fused qkv and gate_up, a window
    "qwen3moe": ("qwen3moe", {}),                                      # 8 experts, 2 per token
    "gemma3": ("gemma3", {"dtype": torch.bfloat16}),                   # bf16 weights, SentencePiece
    "llama-smollm": ("llama", {"tokenizer": "smollm"}),                # SmolLM's pre-tokenizer
}
LOGIT_TEXTS = ["Hello world! The quick brown fox 123", "def add(a, b):\n    return a + b\n"]
TOKENIZER_TEXTS = CORPUS + [
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<tool> call and <start_of_turn>user\nhello<end_of_turn>",
    " leading space and trailing space ",
    "numbers 1 22 333 4444 55555 and 3.14159",
    "",
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """case -> (TinyCheckpoint, GGUFFile, path) of its f32 conversion, built on first use."""
    cache = {}

    def get(case):
        if case not in cache:
            family, options = CASES[case]
            root = tmp_path_factory.mktemp(case)
            ckpt = build_checkpoint(family, root / "hf", **options)
            path = convert_hf_to_gguf(ckpt.path, root / "model.gguf", outtype="f32").path
            cache[case] = (ckpt, read_gguf(path), path)
        return cache[case]

    return get


@pytest.mark.parametrize("case", ["llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3", "qwen3moe"])
def test_logits_match_transformers(converted, case):
    from lanternlm.runtime.engine import Engine

    ckpt, _, path = converted(case)
    # f32 weights and an f32 KV cache: the engine computes in float32 throughout, as transformers
    # does (the default f16 cache, llama.cpp's, would round keys and values)
    engine = Engine.load(path, n_ctx=128, kv_type="f32")
    if case.startswith("gemma"):
        use_ggml_gelu(ckpt.model)  # GEGLU as llama.cpp (and so the engine) computes it
    for text in LOGIT_TEXTS:
        ids = ckpt.tokenizer.encode(text)
        ref = hf_logits(ckpt, ids)
        ours = engine.logits(ids)
        assert ours.shape == ref.shape
        assert ref.std() > 0.5  # the random model's logits spread: the comparison can fail
        np.testing.assert_array_less(np.abs(ours - ref).max(), 1e-3)
        engine.reset()           # decode: one token at a time through the KV cache
        decoded = np.stack([engine.eval([t]).copy() for t in ids])
        np.testing.assert_array_less(np.abs(decoded - ref).max(), 1e-3)


@pytest.mark.parametrize("add_special", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_tokenizer_matches_hf(converted, case, add_special):
    from lanternlm.formats.tokenizer import load_tokenizer

    ckpt, gguf_file, _ = converted(case)
    ours = load_tokenizer(gguf_file.kv)
    for text in TOKENIZER_TEXTS:
        expected = ckpt.tokenizer.encode(text, add_special_tokens=add_special)
        assert ours.encode(text, add_special=add_special, parse_special=True) == expected, text


def f32_tensor(gguf_file, name):
    ref = gguf_file.tensors[name]
    assert ref.type.name == "F32", name
    return ref.data.view(np.float32).reshape(ref.shape)


def _kv(gguf_file, key):
    return gguf_file.kv[key], gguf_file.kv_types[key]


def test_llama_metadata(converted):
    ckpt, f, _ = converted("llama")
    n_vocab = ckpt.model.config.vocab_size
    expected = {
        "general.architecture": ("llama", V.STRING),
        "general.file_type": (0, V.UINT32),
        "general.quantization_version": (2, V.UINT32),
        "llama.block_count": (2, V.UINT32),
        "llama.context_length": (256, V.UINT32),
        "llama.embedding_length": (64, V.UINT32),
        "llama.feed_forward_length": (128, V.UINT32),
        "llama.attention.head_count": (4, V.UINT32),
        "llama.attention.head_count_kv": (2, V.UINT32),
        "llama.rope.freq_base": (10000.0, V.FLOAT32),
        "llama.rope.dimension_count": (16, V.UINT32),
        "llama.vocab_size": (n_vocab, V.UINT32),
        "tokenizer.ggml.model": ("gpt2", V.STRING),
        "tokenizer.ggml.pre": ("llama-bpe", V.STRING),
        "tokenizer.ggml.bos_token_id": (ckpt.tokenizer.bos_token_id, V.UINT32),
        "tokenizer.ggml.eos_token_id": (ckpt.tokenizer.eos_token_id, V.UINT32),
        "tokenizer.ggml.add_bos_token": (True, V.BOOL),
        "tokenizer.chat_template": (CHAT_TEMPLATE, V.STRING),
    }
    for key, value in expected.items():
        assert _kv(f, key) == value, key
    assert f.kv["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert f.kv_array_types["tokenizer.ggml.token_type"] == V.INT32
    types = f.kv["tokenizer.ggml.token_type"]
    tokens = f.kv["tokenizer.ggml.tokens"]
    assert len(tokens) == n_vocab
    assert types[tokens.index("<|im_start|>")] == TokenType.CONTROL
    assert types[tokens.index("<tool>")] == TokenType.USER_DEFINED  # added, not special
    assert types[tokens.index("\u0120the")] == TokenType.NORMAL  # byte-level " the"
    merges = json.loads((ckpt.path / "tokenizer.json").read_text())["model"]["merges"]
    assert f.kv["tokenizer.ggml.merges"] == [" ".join(pair) for pair in merges]
    # untied: both the embedding and the head are stored
    assert {"token_embd.weight", "output.weight"} <= set(f.tensors)


def test_qwen2_metadata_padding_and_tied_head(converted):
    ckpt, f, _ = converted("qwen2")
    assert _kv(f, "general.architecture") == ("qwen2", V.STRING)
    assert _kv(f, "tokenizer.ggml.pre") == ("qwen2", V.STRING)
    assert _kv(f, "tokenizer.ggml.eos_token_id") == (ckpt.tokenizer.eos_token_id, V.UINT32)
    tokens, types = f.kv["tokenizer.ggml.tokens"], f.kv["tokenizer.ggml.token_type"]
    n_tokenizer = len(ckpt.tokenizer)
    assert len(tokens) == n_tokenizer + 7 == ckpt.model.config.vocab_size
    assert tokens[n_tokenizer:] == [f"[PAD{i}]" for i in range(n_tokenizer, n_tokenizer + 7)]
    assert all(t == TokenType.UNUSED for t in types[n_tokenizer:])
    assert "output.weight" not in f.tensors  # tie_word_embeddings: the head is token_embd
    assert tuple(f.tensors["token_embd.weight"].shape) == (n_tokenizer + 7, 64)
    for kind in ("q", "k", "v"):
        assert f"blk.1.attn_{kind}.bias" in f.tensors


def test_gemma3_metadata_and_norm_offset(converted):
    ckpt, f, _ = converted("gemma3")
    expected = {
        "general.architecture": ("gemma3", V.STRING),
        "gemma3.rope.freq_base": (1_000_000.0, V.FLOAT32),
        "gemma3.rope.freq_base_swa": (10000.0, V.FLOAT32),
        "gemma3.attention.sliding_window": (64, V.UINT32),
        "gemma3.attention.key_length": (16, V.UINT32),
        "gemma3.attention.value_length": (16, V.UINT32),
        "tokenizer.ggml.model": ("llama", V.STRING),
        "tokenizer.ggml.pre": ("default", V.STRING),
        "tokenizer.ggml.add_space_prefix": (False, V.BOOL),
        "tokenizer.ggml.bos_token_id": (2, V.UINT32),
        "tokenizer.ggml.eos_token_id": (1, V.UINT32),
        "tokenizer.ggml.padding_token_id": (0, V.UINT32),
        "tokenizer.chat_template": (GEMMA_CHAT_TEMPLATE, V.STRING),
    }
    for key, value in expected.items():
        assert _kv(f, key) == value, key
    tokens, types = f.kv["tokenizer.ggml.tokens"], f.kv["tokenizer.ggml.token_type"]
    assert types[tokens.index("<start_of_turn>")] == TokenType.CONTROL
    assert types[tokens.index("<0x41>")] == TokenType.BYTE
    assert len(f.kv["tokenizer.ggml.scores"]) == len(tokens)
    assert "output.weight" not in f.tensors
    # every norm is stored as 1 + w (Gemma3RMSNorm's factor); the model holds w
    hf_norm = ckpt.model.model.layers[1].post_feedforward_layernorm.weight.detach().numpy()
    np.testing.assert_array_equal(f32_tensor(f, "blk.1.post_ffw_norm.weight"), hf_norm + 1)


def test_llama_q_k_rows_are_reordered_for_ggml_rope(converted):
    ckpt, f, _ = converted("llama")
    # hand-computed: per head of 4 rows, HF's rotate-half pairs (0,2),(1,3) become adjacent
    rows = np.arange(8)[:, None].repeat(3, axis=1)
    np.testing.assert_array_equal(interleave_rope_halves(rows, 2)[:, 0], [0, 2, 1, 3, 4, 6, 5, 7])
    attn = ckpt.model.model.layers[0].self_attn
    q = attn.q_proj.weight.detach().numpy()     # 4 heads of 16 rows
    k = attn.k_proj.weight.detach().numpy()     # 2 heads
    stored_q = f32_tensor(f, "blk.0.attn_q.weight")
    stored_k = f32_tensor(f, "blk.0.attn_k.weight")
    np.testing.assert_array_equal(stored_q[1], q[8])       # head 0: row 1 <- row half (8)
    np.testing.assert_array_equal(stored_q[16 + 2], q[16 + 1])
    np.testing.assert_array_equal(stored_k[16 + 3], k[16 + 8 + 1])
    np.testing.assert_array_equal(f32_tensor(f, "blk.0.attn_v.weight"),
                                  attn.v_proj.weight.detach().numpy())


def test_llama3_rope_factors_match_transformers(tmp_path):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    ckpt = build_checkpoint("llama", tmp_path / "hf", rope_parameters=rope)
    f = read_gguf(convert_hf_to_gguf(ckpt.path, tmp_path / "m.gguf", outtype="f16").path)
    factors = f32_tensor(f, "rope_freqs.weight")
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](ckpt.model.config, "cpu")
    dim = 16
    plain = 1.0 / (500000.0 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    expected = (plain / scaled.double()).numpy()
    assert expected.min() == pytest.approx(1.0) and expected.max() == pytest.approx(8.0)  # all 3 bands
    np.testing.assert_allclose(factors, expected, rtol=1e-5)
    assert "llama.rope.scaling.type" not in f.kv


@pytest.mark.parametrize("factor", [8.0, 32.0])
def test_llama3_rope_scaling_matches_transformers_beyond_the_original_context(tmp_path, factor):
    """A Llama 3.1-style checkpoint (rope type llama3, rope_freqs.weight in the file) runs, and
    its logits match transformers' at every position of a text four times longer than the
    original context the scaling stretches (16 tokens here), where the scaled frequencies rule."""
    from lanternlm.runtime.engine import Engine

    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": factor, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    ckpt = build_checkpoint("llama", tmp_path / "hf", rope_parameters=rope, max_position_embeddings=256)
    path = convert_hf_to_gguf(ckpt.path, tmp_path / "m.gguf", outtype="f32").path
    ids = ckpt.tokenizer.encode(" ".join(CORPUS))[:64]
    assert len(ids) == 64
    engine = Engine.load(path, n_ctx=128, kv_type="f32")
    ref = hf_logits(ckpt, ids)
    assert ref.std() > 0.5
    np.testing.assert_array_less(np.abs(engine.logits(ids) - ref).max(), 1e-3)
    engine.reset()
    decoded = np.stack([engine.eval([t]).copy() for t in ids])
    np.testing.assert_array_less(np.abs(decoded - ref).max(), 1e-3)
    # without the factors the far positions are wrong: the test can fail
    plain = build_checkpoint("llama", tmp_path / "plain", rope_parameters={"rope_type": "default",
                                                                          "rope_theta": 10000.0})
    assert np.abs(hf_logits(plain, ids)[-16:] - ref[-16:]).max() > 1e-2


def test_mistral_is_a_llama_file_with_a_sliding_window(converted, tmp_path):
    """llama.cpp writes Mistral as llama; the window (8 keys here) is what makes its logits match
    transformers (test_logits_match_transformers): without it they differ by several logits."""
    ckpt, f, path = converted("mistral")
    assert f.kv["general.architecture"] == "llama" and f.kv["llama.attention.sliding_window"] == 8
    ids = ckpt.tokenizer.encode(LOGIT_TEXTS[1])
    assert len(ids) > 16
    unwindowed = build_checkpoint("mistral", tmp_path / "hf", sliding_window=None)
    assert np.abs(hf_logits(unwindowed, ids) - hf_logits(ckpt, ids)).max() > 1.0


def test_gemma2_soft_caps_and_windows_are_in_the_file_and_matter(converted, tmp_path):
    """The caps (2 and 3 here) and the window (8 keys on layers 0, 2, ...) are written as
    llama.cpp names them; without either cap transformers' logits move by more than a logit,
    so test_logits_match_transformers checks them."""
    ckpt, f, _ = converted("gemma2")
    assert f.kv["gemma2.attn_logit_softcapping"] == 2.0 and f.kv["gemma2.final_logit_softcapping"] == 3.0
    assert f.kv["gemma2.attention.sliding_window"] == 8
    ids = ckpt.tokenizer.encode(LOGIT_TEXTS[1])
    ref = hf_logits(ckpt, ids)
    for i, cap in enumerate(("attn_logit_softcapping", "final_logit_softcapping")):
        uncapped = build_checkpoint("gemma2", tmp_path / str(i), **{cap: None})
        assert np.abs(hf_logits(uncapped, ids) - ref).max() > 1.0, cap


def test_yarn_rope_scaling_matches_transformers_beyond_the_original_context(tmp_path):
    """Qwen2.5's long-context configuration (rope type yarn, factor 4 over an original context
    of 16 tokens here): logits match transformers' at every position of 64 tokens, prefill and
    decode; plain linear scaling would not."""
    from lanternlm.runtime.engine import Engine

    rope = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16}
    ckpt = build_checkpoint("qwen2", tmp_path / "hf", rope_parameters=rope)
    f = read_gguf(path := convert_hf_to_gguf(ckpt.path, tmp_path / "m.gguf", outtype="f32").path)
    assert f.kv["qwen2.rope.scaling.type"] == "yarn" and f.kv["qwen2.rope.scaling.original_context_length"] == 16
    ids = ckpt.tokenizer.encode(" ".join(CORPUS))[:64]
    engine = Engine.load(path, n_ctx=128, kv_type="f32")
    ref = hf_logits(ckpt, ids)
    np.testing.assert_array_less(np.abs(engine.logits(ids) - ref).max(), 1e-3)
    engine.reset()
    decoded = np.stack([engine.eval([t]).copy() for t in ids])
    np.testing.assert_array_less(np.abs(decoded - ref).max(), 1e-3)
    linear = build_checkpoint("qwen2", tmp_path / "linear", rope_parameters={**rope, "rope_type": "linear"})
    assert np.abs(hf_logits(linear, ids) - ref).max() > 1e-2


def test_embedding_rows_beyond_the_vocabulary_are_dropped(converted, tmp_path):
    # Gemma checkpoints carry embedding rows past the tokenizer's ids; the file keeps vocab_size rows
    ckpt, f, _ = converted("qwen2")
    src = shutil.copytree(ckpt.path, tmp_path / "hf")
    config = json.loads((src / "config.json").read_text())
    config["vocab_size"] -= 5
    (src / "config.json").write_text(json.dumps(config))
    cut = read_gguf(convert_hf_to_gguf(src, tmp_path / "cut.gguf", outtype="f32").path)
    embd = f32_tensor(cut, "token_embd.weight")
    assert embd.shape[0] == len(cut.kv["tokenizer.ggml.tokens"]) == config["vocab_size"]
    np.testing.assert_array_equal(embd, f32_tensor(f, "token_embd.weight")[:config["vocab_size"]])


def test_gemma2_on_the_torch_backend_matches_the_cpu_backend(converted):
    """The torch backend soft-caps attention scores out of SDPA, and the logits with its op."""
    from lanternlm.runtime.engine import Engine

    ckpt, _, path = converted("gemma2")
    ids = ckpt.tokenizer.encode(LOGIT_TEXTS[1])
    cpu = Engine.load(path, n_ctx=64, kv_type="f32").logits(ids)
    on_torch = Engine.load(path, n_ctx=64, backend="torch", device="cpu").logits(ids)
    np.testing.assert_allclose(on_torch, cpu, atol=1e-3 * np.abs(cpu).max())


def test_phi3_fused_matrices_are_in_the_file_as_llama_cpp_writes_them(converted):
    """attn_qkv and ffn_up (gate rows first) stay fused in the file; the engine reads their
    row ranges as q, k, v and gate, up (test_logits_match_transformers checks the result)."""
    ckpt, f, _ = converted("phi3")
    assert f.kv["general.architecture"] == "phi3" and f.kv["phi3.attention.sliding_window"] == 8
    assert f.tensors["blk.0.attn_qkv.weight"].shape == (64 + 2 * 32, 64)
    assert f.tensors["blk.0.ffn_up.weight"].shape == (2 * 128, 64)
    assert "blk.0.attn_q.weight" not in f.tensors and "blk.0.ffn_gate.weight" not in f.tensors
    gate_up = ckpt.model.model.layers[0].mlp.gate_up_proj.weight.detach().numpy()
    np.testing.assert_array_equal(f32_tensor(f, "blk.0.ffn_up.weight"), gate_up)


@pytest.mark.parametrize("partial", [1.0, 0.75])
def test_phi3_longrope_matches_transformers_with_short_and_long_factors(tmp_path, partial):
    """Phi-3.5 / Phi-4-mini's LongRoPE (original context 16 here, 64 positions): a context
    within the original takes the short factors, a longer one the long factors, each with the
    magnitude factor on cos and sin, as transformers picks them by the sequence's length; with
    the other factors the logits would differ. partial 0.75: Phi-4-mini rotates 3/4 of a head."""
    from lanternlm.runtime.engine import Engine

    pairs = int(16 * partial) // 2
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 16,
            "short_factor": [1.0 + 0.25 * i for i in range(pairs)],
            "long_factor": [2.0 + 1.5 * i for i in range(pairs)], "partial_rotary_factor": partial}
    ckpt = build_checkpoint("phi3", tmp_path / "hf", rope_parameters=rope, max_position_embeddings=64,
                            original_max_position_embeddings=16, partial_rotary_factor=partial,
                            sliding_window=None)
    f = read_gguf(path := convert_hf_to_gguf(ckpt.path, tmp_path / "m.gguf", outtype="f32").path)
    assert f.kv["phi3.rope.scaling.original_context_length"] == 16
    assert f.kv["phi3.rope.dimension_count"] == int(16 * partial)
    np.testing.assert_allclose(f.kv["phi3.rope.scaling.attn_factor"], (1 + np.log(4) / np.log(16)) ** 0.5, rtol=1e-6)
    np.testing.assert_array_equal(f32_tensor(f, "rope_factors_long.weight"), rope["long_factor"])
    ids = ckpt.tokenizer.encode(" ".join(CORPUS))
    short_ids, long_ids = ids[:16], ids[:40]
    assert len(long_ids) == 40
    ref_short, ref_long = hf_logits(ckpt, short_ids), hf_logits(ckpt, long_ids)
    for n_ctx, ids_, ref in ((16, short_ids, ref_short), (64, long_ids, ref_long)):
        engine = Engine.load(path, n_ctx=n_ctx, kv_type="f32")
        assert ref.std() > 0.5
        np.testing.assert_array_less(np.abs(engine.logits(ids_) - ref).max(), 1e-3)
        engine.reset()
        decoded = np.stack([engine.eval([t]).copy() for t in ids_])
        np.testing.assert_array_less(np.abs(decoded - ref).max(), 1e-3)
    # the two sets of factors really differ where it shows: the first 16 positions
    assert np.abs(ref_long[:16] - ref_short).max() > 1e-2


def test_qwen3moe_experts_are_stacked_and_routing_matters(converted, tmp_path):
    """Each layer's 8 experts are one 3-D tensor per projection (experts first), as llama.cpp
    writes them; the routing picks different experts for different tokens, and running every
    token through the same two experts would give other logits (so the match with transformers
    in test_logits_match_transformers checks the router)."""
    from lanternlm.runtime.backends.moe import route
    from lanternlm.runtime.engine import Engine

    ckpt, f, path = converted("qwen3moe")
    assert f.kv["qwen3moe.expert_count"] == 8 and f.kv["qwen3moe.expert_used_count"] == 2
    assert f.kv["qwen3moe.expert_feed_forward_length"] == 32
    from lanternlm.formats.info import describe

    summary = describe(f)                        # what `lantern info` shows
    assert (summary["architecture"], summary["experts"], summary["experts_used"]) == ("qwen3moe", 8, 2)
    assert f.tensors["blk.1.ffn_gate_exps.weight"].shape == (8, 32, 64)
    assert f.tensors["blk.1.ffn_down_exps.weight"].shape == (8, 64, 32)
    from safetensors.numpy import load_file

    saved = load_file(ckpt.path / "model.safetensors")       # one tensor per expert and projection
    stacked = f32_tensor(f, "blk.1.ffn_up_exps.weight")
    for e in range(8):
        np.testing.assert_array_equal(stacked[e], saved[f"model.layers.1.mlp.experts.{e}.up_proj.weight"])
    ids = ckpt.tokenizer.encode(LOGIT_TEXTS[0])
    engine = Engine.load(path, n_ctx=64, kv_type="f32")
    engine.logits(ids)
    h = engine.executor.program("prefill_all", len(ids), out=np.empty((len(ids), engine.cfg.n_vocab), np.float32))
    h.ids[:] = ids
    h.place(0)
    h.run()
    x = h.views["blk.0.ffn_norm"]
    router = f32_tensor(f, "blk.0.ffn_gate_inp.weight")
    experts, weights = route(x @ router.T, 2, True)
    assert len({tuple(sorted(e)) for e in experts.tolist()}) > 1
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)


def test_qwen3moe_experts_stream_by_expert_under_a_ram_budget(converted):
    """With a RAM budget too small for every expert, stacked expert tensors stream: the logits
    are bit-identical to the in-RAM engine's, and a decode step reads only the experts the
    router picks (2 of 8 here), not whole expert tensors."""
    from lanternlm.runtime.engine import Engine

    _, f, path = converted("qwen3moe")
    ids = [int(i) for i in np.arange(3, 19)]
    ref = Engine.load(path, n_ctx=64, kv_type="f32", draft=False).logits(ids)
    engine = Engine.load(path, n_ctx=64, kv_type="f32", ram_budget="80%", draft=False)
    streamed = engine.backend.residency.streamed
    experts = [n for n in streamed if n.endswith("_exps.weight")]
    assert experts, "the budget must leave some expert tensors on disk"
    np.testing.assert_array_equal(engine.logits(ids), ref)
    engine.reset()
    engine.eval(ids[:4])
    reads = []                                   # (offset, bytes) of every read from the file
    read_into = engine.backend.reader.read_into
    engine.backend.reader.read_into = lambda buf, offset, n: reads.append((offset, n)) or read_into(buf, offset, n)
    engine.eval([ids[4]])
    for name in experts:                         # one decode token: 2 of the 8 experts, each read once
        ref_ = f.tensors[name]
        per_expert = ref_.nbytes // 8
        hits = [(o - ref_.offset) // per_expert for o, n in reads if ref_.offset <= o < ref_.offset + ref_.nbytes]
        assert len(hits) == 2 and len(set(hits)) == 2, (name, hits)
        assert all(n == per_expert for o, n in reads if ref_.offset <= o < ref_.offset + ref_.nbytes)
