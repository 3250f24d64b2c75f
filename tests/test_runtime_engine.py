"""The Engine on tiny generated GGUF models (llama, qwen2, gemma3) against a float64 numpy
forward pass written here from the architectures' definitions; plus decode/prefill/chunking
consistency, cache truncation and input errors."""
import math

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from lanternlm.formats.writer import write_gguf
from lanternlm.quant import quantize
from lanternlm.runtime.engine import ContextFullError, Engine
from lanternlm.runtime.generate import KVContext
from lanternlm.runtime.graph import MissingTensorsError

N_VOCAB, N_EMBD, N_HEAD, N_HEAD_KV, HEAD_DIM, N_FF, N_LAYER = 64, 64, 4, 2, 16, 96, 3
EPS = 1e-5
WINDOW = 4  # gemma3: local layers see 4 keys; pattern 2 -> layers 0 and 2 local, 1 global


def tiny_model(arch, seed=0, head_dim=HEAD_DIM):
    """kv metadata and float32 weights (name -> array) of a random tiny model (head_dim: the
    heads' width, set in the metadata when not the default)."""
    rng = np.random.default_rng(seed)

    def w(*shape, scale=None):
        scale = scale if scale is not None else 1.0 / math.sqrt(shape[-1])
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    kv = {
        f"{arch}.context_length": 256, f"{arch}.embedding_length": N_EMBD, f"{arch}.block_count": N_LAYER,
        f"{arch}.feed_forward_length": N_FF, f"{arch}.attention.head_count": N_HEAD,
        f"{arch}.attention.head_count_kv": N_HEAD_KV, f"{arch}.attention.layer_norm_rms_epsilon": EPS,
        f"{arch}.rope.freq_base": 10000.0 if arch == "llama" else 1e6,
        "tokenizer.ggml.tokens": [f"<t{i}>" for i in range(N_VOCAB)],
    }
    q, kvw = N_HEAD * head_dim, N_HEAD_KV * head_dim
    if head_dim != HEAD_DIM:
        kv.update({f"{arch}.attention.key_length": head_dim, f"{arch}.attention.value_length": head_dim})
    weights = {"token_embd.weight": w(N_VOCAB, N_EMBD, scale=1.0), "output_norm.weight": 1 + w(N_EMBD, scale=0.1)}
    if arch != "gemma3":
        weights["output.weight"] = w(N_VOCAB, N_EMBD)
    else:
        kv.update({"gemma3.attention.key_length": head_dim, "gemma3.attention.value_length": head_dim,
                   "gemma3.attention.sliding_window": WINDOW, "gemma3.attention.sliding_window_pattern": 2})
        weights["token_embd.weight"] *= 0.1
    for il in range(N_LAYER):
        p = f"blk.{il}."
        weights.update({
            p + "attn_norm.weight": 1 + w(N_EMBD, scale=0.1), p + "ffn_norm.weight": 1 + w(N_EMBD, scale=0.1),
            p + "attn_q.weight": w(q, N_EMBD), p + "attn_k.weight": w(kvw, N_EMBD), p + "attn_v.weight": w(kvw, N_EMBD),
            p + "attn_output.weight": w(N_EMBD, q), p + "ffn_gate.weight": w(N_FF, N_EMBD),
            p + "ffn_up.weight": w(N_FF, N_EMBD), p + "ffn_down.weight": w(N_EMBD, N_FF)})
        if arch == "qwen2":
            weights.update({p + "attn_q.bias": w(q, scale=0.5), p + "attn_k.bias": w(kvw, scale=0.5),
                            p + "attn_v.bias": w(kvw, scale=0.5)})
        if arch == "gemma3":
            weights.update({p + "attn_q_norm.weight": 1 + w(head_dim, scale=0.1),
                            p + "attn_k_norm.weight": 1 + w(head_dim, scale=0.1),
                            p + "post_attention_norm.weight": 1 + w(N_EMBD, scale=0.1),
                            p + "post_ffw_norm.weight": 1 + w(N_EMBD, scale=0.1)})
    return kv, weights


def write_model(path, arch, kv, weights, embd_type=T.Q8_0, drop=()):
    """Write the model with token_embd in `embd_type`; returns the weights as the file holds them."""
    tensors, stored = [], {}
    for name, arr in weights.items():
        if name in drop:
            continue
        if name == "token_embd.weight" and embd_type != T.F32:
            raw = quantize(arr, embd_type.name)
            stored[name] = gguf.quants.dequantize(raw, embd_type).reshape(arr.shape)
            tensors.append((name, raw, embd_type, arr.shape))
        else:
            stored[name] = arr
            tensors.append((name, arr, T.F32, arr.shape))
    write_gguf(path, kv, tensors, arch=arch)
    return stored


# ---- float64 reference forward ----------------------------------------------------------------

def rms(x, w):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * w


def rope(x, n_heads, base, neox):
    t = x.shape[0]
    xh = x.reshape(t, n_heads, HEAD_DIM).copy()
    half = HEAD_DIM // 2
    angle = np.outer(np.arange(t), base ** (-np.arange(half) * 2.0 / HEAD_DIM))[:, None, :]
    a, b = (np.arange(half), np.arange(half) + half) if neox else (np.arange(0, HEAD_DIM, 2), np.arange(1, HEAD_DIM, 2))
    xa, xb = xh[..., a].copy(), xh[..., b].copy()
    xh[..., a] = xa * np.cos(angle) - xb * np.sin(angle)
    xh[..., b] = xa * np.sin(angle) + xb * np.cos(angle)
    return xh.reshape(t, -1)


def attend(q, k, v, scale, window):
    t = q.shape[0]
    q, k, v = (a.reshape(t, -1, HEAD_DIM) for a in (q, k, v))
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    visible = (j <= i) & ((i - j < window) if window else True)
    out = np.empty_like(q)
    for h in range(N_HEAD):
        kh = h * N_HEAD_KV // N_HEAD
        s = np.where(visible, q[:, h] @ k[:, kh].T * scale, -np.inf)
        p = np.exp(s - s.max(1, keepdims=True))
        out[:, h] = (p / p.sum(1, keepdims=True)) @ v[:, kh]
    return out.reshape(t, -1)


def reference_hidden(arch, W, ids):
    """float64 final hidden states (after the output norm) at every position."""
    W = {k: v.astype(np.float64) for k, v in W.items()}
    gelu_exact = lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    half = lambda x: x.astype(np.float16).astype(np.float64)
    # llama.cpp's GEGLU: gelu of the input rounded to half, rounded to half; 0 / x outside (-10, 10)
    gelu = lambda x: np.where(x <= -10, 0.0, np.where(x >= 10, x, half(gelu_exact(half(x)))))
    silu = lambda x: x / (1 + np.exp(-x))
    x = W["token_embd.weight"][ids]
    if arch == "gemma3":
        x = x * np.float32(math.sqrt(N_EMBD))
    for il in range(N_LAYER):
        p = f"blk.{il}."
        h = rms(x, W[p + "attn_norm.weight"])
        q, k, v = (h @ W[p + f"attn_{n}.weight"].T for n in "qkv")
        if arch == "qwen2":
            q, k, v = q + W[p + "attn_q.bias"], k + W[p + "attn_k.bias"], v + W[p + "attn_v.bias"]
        window, base = 0, (10000.0 if arch == "llama" else 1e6)
        if arch == "gemma3":
            q = rms(q.reshape(len(ids), N_HEAD, HEAD_DIM), W[p + "attn_q_norm.weight"]).reshape(len(ids), -1)
            k = rms(k.reshape(len(ids), N_HEAD_KV, HEAD_DIM), W[p + "attn_k_norm.weight"]).reshape(len(ids), -1)
            local = il % 2 == 0
            window, base = (WINDOW, 10000.0) if local else (0, 1e6)
        q, k = rope(q, N_HEAD, base, arch != "llama"), rope(k, N_HEAD_KV, base, arch != "llama")
        a = attend(q, k, v, 1 / math.sqrt(HEAD_DIM), window) @ W[p + "attn_output.weight"].T
        if arch == "gemma3":
            a = rms(a, W[p + "post_attention_norm.weight"])
        x = x + a
        h = rms(x, W[p + "ffn_norm.weight"])
        act = gelu if arch == "gemma3" else silu
        f = (act(h @ W[p + "ffn_gate.weight"].T) * (h @ W[p + "ffn_up.weight"].T)) @ W[p + "ffn_down.weight"].T
        if arch == "gemma3":
            f = rms(f, W[p + "post_ffw_norm.weight"])
        x = x + f
    return rms(x, W["output_norm.weight"])


def reference_logits(arch, W, ids, q8_activations=False):
    """float64 logits; q8_activations: round what enters a legacy-quantized matrix to Q8_0."""
    h = reference_hidden(arch, W, ids)
    out = W.get("output.weight", W["token_embd.weight"]).astype(np.float64)
    if q8_activations and "output.weight" not in W:
        h = q8_rounded(h)  # the tied output matrix is the Q8_0 token_embd
    return h @ out.T


def q8_rounded(h):
    """h (t, n) as llama.cpp's CPU backend (and ours) feeds it to a Q4_0..Q8_0 matrix: per 32
    values, d = f16(amax / 127) and q = round-half-even(h * 127 / amax) (quant/legacy_int8.py)."""
    b = h.astype(np.float32).reshape(len(h), -1, 32)
    amax = np.abs(b).max(axis=-1, keepdims=True)
    inverse = np.where(amax > 0, np.float32(127) / np.maximum(amax, np.float32(1e-30)), 0).astype(np.float32)
    d = (amax / np.float32(127)).astype(np.float16).astype(np.float64)
    return (np.rint(b * inverse) * d).reshape(h.shape)


IDS = [5, 17, 3, 60, 22, 22, 9, 41, 0, 63, 12]


@pytest.fixture(scope="module", params=["llama", "qwen2", "gemma3"])
def model(request, tmp_path_factory):
    arch = request.param
    kv, weights = tiny_model(arch)
    path = tmp_path_factory.mktemp(arch) / f"{arch}.gguf"
    stored = write_model(path, arch, kv, weights)
    return arch, path, stored


def test_default_f16_kv_cache_holds_half_bits_and_stays_near_the_reference(model):
    arch, path, W = model
    eng = Engine.load(path, n_ctx=32)  # kv_type="f16", llama.cpp's default cache type
    assert eng.kv.k[0].dtype == np.uint16 and eng.kv.nbytes == Engine.load(path, n_ctx=32, kv_type="f32").kv.nbytes // 2
    got = eng.logits(IDS)
    want = reference_logits(arch, W, IDS, q8_activations=True)
    np.testing.assert_allclose(got, want, atol=2e-2 * np.abs(want).max())
    with pytest.raises(ValueError, match="KV cache type 'q4'"):
        Engine.load(path, n_ctx=32, kv_type="q4")


def test_logits_match_float64_reference(model):
    arch, path, W = model
    eng = Engine.load(path, n_ctx=32, kv_type="f32")  # the reference keeps keys and values unrounded
    assert eng.cfg.arch == arch and eng.cfg.n_vocab == N_VOCAB
    got = eng.logits(IDS)
    want = reference_logits(arch, W, IDS, q8_activations=True)
    assert got.shape == (len(IDS), N_VOCAB) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max())
    assert eng.n_past == len(IDS)


def test_decode_and_chunked_prefill_equal_one_prefill(model):
    arch, path, _ = model
    eng = Engine.load(path, n_ctx=32, n_batch=4)  # 11 tokens -> chunks of 4, 4, 3
    every = eng.logits(IDS)
    eng.reset()
    last = eng.eval(IDS)
    np.testing.assert_allclose(last, every[-1], rtol=1e-5, atol=1e-5)
    eng.reset()
    for i, tok in enumerate(IDS):
        step = eng.eval([tok])
        assert step.shape == (N_VOCAB,)
        np.testing.assert_allclose(step, every[i], rtol=1e-5, atol=1e-5)
    assert eng.n_past == len(IDS)


def test_embeddings_match_float64_hidden_states(model):
    arch, path, W = model
    want = reference_hidden(arch, W, IDS)
    for n_batch in (512, 4):                         # one batch; chunks of 4, 4, 3 over the cache
        eng = Engine.load(path, n_ctx=32, n_batch=n_batch, kv_type="f32")
        got = eng.embeddings(IDS)
        assert got.shape == (len(IDS), N_EMBD) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max())
    eng.logits(IDS)                                  # the logits graphs still run beside it
    with pytest.raises(ValueError, match="needs .* arena floats"):
        eng.executor.add("too_big", eng._build(8, all_logits=True))   # 8 tokens > n_batch 4


def test_truncate_reuses_the_cached_prefix(model):
    _, path, _ = model
    eng = Engine.load(path, n_ctx=32)
    fresh = eng.logits(IDS)[-1].copy()
    eng.reset()
    eng.eval([1, 2, 3, 4, 5, 6, 7])  # a different history, shares no tokens
    eng.truncate(0)
    eng.eval(IDS[:6])
    eng.eval([50, 51])               # a continuation we then take back
    eng.truncate(6)
    assert eng.n_past == 6
    np.testing.assert_allclose(eng.eval(IDS[6:]), fresh, rtol=1e-5, atol=1e-5)


def interrupt_once(program, at: int) -> None:
    """Make `program` raise KeyboardInterrupt before its kernel number `at`, once (as Ctrl-C
    does: Python raises it between two kernels)."""
    fn, args = program.calls[at]

    def interrupted(*a):
        program.calls[at] = (fn, args)
        raise KeyboardInterrupt

    program.calls[at] = (interrupted, args)


def test_an_interrupted_eval_keeps_the_tokens_the_cache_completed(model):
    _, path, _ = model
    first, more = IDS[:3], IDS[3:] + [7]           # `more`: 9 tokens -> chunks of 4, 4 and 1

    def engine_and_context():
        eng = Engine.load(path, n_ctx=32, n_batch=4)
        return eng, KVContext(eng, 32)

    eng, ctx = engine_and_context()
    ctx.prefill(first)
    interrupt_once(eng.decode_program, len(eng.decode_program.calls) // 2)   # inside the third chunk
    with pytest.raises(KeyboardInterrupt):
        ctx.prefill(first + more)
    assert ctx.ids == first + more[:8] and eng.n_past == 11         # not an emptied cache
    logits, reused = ctx.prefill(first + more + [9])
    assert reused == 11                                               # only the rest is evaluated

    # the same chunks, never interrupted: bit-identical, so the kept cache was intact
    ref, ref_ctx = engine_and_context()
    for n in (3, 11):
        ref_ctx.prefill((first + more)[:n])
    want, _ = ref_ctx.prefill(first + more + [9])
    np.testing.assert_array_equal(logits, want)


def test_input_errors(model):
    _, path, _ = model
    eng = Engine.load(path, n_ctx=8)
    with pytest.raises(ContextFullError, match="context of 8"):
        eng.eval(list(range(9)))
    eng.eval([1, 2, 3, 4, 5])
    with pytest.raises(ContextFullError):
        eng.eval([1, 2, 3, 4])
    assert eng.n_past == 5
    with pytest.raises(ValueError, match="outside the vocabulary"):
        eng.eval([N_VOCAB])
    with pytest.raises(ValueError, match="non-empty"):
        eng.eval([])
    with pytest.raises(TypeError):
        eng.eval([1.5])
    with pytest.raises(ValueError):
        eng.truncate(6)
    eng.reset()
    assert eng.n_past == 0


def test_missing_tensor_and_unknown_architecture(tmp_path):
    kv, weights = tiny_model("llama")
    path = tmp_path / "broken.gguf"
    write_model(path, "llama", kv, weights, drop=("blk.2.ffn_gate.weight", "output_norm.weight"))
    with pytest.raises(MissingTensorsError, match="blk.2.ffn_gate.weight.*output_norm.weight|output_norm.*blk.2"):
        Engine.load(path)
    kv = {k.replace("llama.", "rwkv6."): v for k, v in kv.items()}
    write_model(path, "rwkv6", kv, weights)
    with pytest.raises(ValueError, match="unsupported model architecture 'rwkv6'"):
        Engine.load(path)


def test_decode_reuses_its_buffers(model):
    """The decode program is bound once; each step's logits live in the shared arena (the
    documented internal buffer, overwritten by the next call)."""
    _, path, _ = model
    eng = Engine.load(path, n_ctx=32)
    eng.eval(IDS[:5])
    first = eng.eval([7])
    bound = dict(eng.executor._programs)
    values = first.copy()
    second = eng.eval([8])
    assert np.shares_memory(first, eng.executor.arena) and np.shares_memory(second, first)
    assert not np.array_equal(first, values)  # overwritten in place by the next step
    for tok in IDS:
        eng.eval([tok])
    assert eng.executor._programs == bound
