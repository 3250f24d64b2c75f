"""CPU backend kernels against float64 numpy formulas written independently of them."""
import math

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from lanternlm.quant import QTYPES, quantize
from lanternlm.runtime.backends import cpu_kernels as K
from lanternlm.runtime.backends.cpu import _get_rows
from lanternlm.runtime.backends.rope_table import rope_cos_sin
from lanternlm.runtime.backends.kv_rows import hadamard, hadamard_reference
from lanternlm.runtime.kv_cache import CACHE_TYPES, Q8_0_BLOCK, rotation_block

rng = np.random.default_rng(1234)


def randn(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---- norms and elementwise ------------------------------------------------------------------

@pytest.mark.parametrize("rms_norm", [K.rms_norm, K.rms_norm_rows])
@pytest.mark.parametrize("group", [64, 256])
def test_rms_norm_rows_and_heads(group, rms_norm):
    x = randn(3, 256, scale=3.0)
    w = randn(group) + 1.0
    eps = 1e-6
    out = np.empty_like(x)
    rms_norm(out, x, w, eps)
    xg = x.astype(np.float64).reshape(3, -1, group)
    want = xg / np.sqrt((xg ** 2).mean(-1, keepdims=True) + eps) * w
    np.testing.assert_allclose(out, want.reshape(3, 256), rtol=2e-6, atol=2e-6)
    inplace = x.copy()
    rms_norm(inplace, inplace, w, eps)  # the planner may alias out and x
    np.testing.assert_array_equal(inplace, out)


def test_add_scale_last_row():
    g, u = randn(2, 96, scale=4.0), randn(2, 96)
    out = np.empty_like(g)
    K.add(out, g, u)
    np.testing.assert_array_equal(out, g + u)
    bias = randn(96)
    K.add_bias(out, g, bias)
    np.testing.assert_array_equal(out, g + bias[None, :])
    K.scale(out, g, np.float32(0.5))
    np.testing.assert_array_equal(out, g * np.float32(0.5))
    last = np.empty((1, 96), np.float32)
    K.last_row(last, g)
    np.testing.assert_array_equal(last[0], g[-1])


# ---- rope -----------------------------------------------------------------------------------

def rope_reference(x, pos, head_dim, n_rot, base, neox, freq_scale=1.0):
    """Rotate pairs as complex numbers by pos * freq_scale * base^(-2i/n_rot), in float64."""
    t, width = x.shape
    xh = x.astype(np.float64).reshape(t, width // head_dim, head_dim).copy()
    half = n_rot // 2
    angle = np.outer(pos * freq_scale, base ** (-2.0 * np.arange(half) / n_rot))[:, None, :]
    if neox:
        first, second = np.arange(half), np.arange(half) + half
    else:
        first, second = np.arange(0, n_rot, 2), np.arange(1, n_rot, 2)
    z = (xh[..., first] + 1j * xh[..., second]) * np.exp(1j * angle)
    xh[..., first], xh[..., second] = z.real, z.imag
    return xh.reshape(t, width)


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("n_rot", [64, 32])  # 32: partial rotation, the rest passes through
def test_rope_matches_complex_rotation(neox, n_rot):
    head_dim, base = 64, 10000.0
    pos = np.array([0, 1, 7, 300], dtype=np.int64)
    x = randn(4, 3 * head_dim)
    cos, sin = rope_cos_sin(512, n_rot, base)
    out = np.empty_like(x)
    K.rope(out, x, pos, cos, sin, head_dim, n_rot, neox)
    np.testing.assert_allclose(out, rope_reference(x, pos, head_dim, n_rot, base, neox), atol=2e-4)
    inplace = x.copy()
    K.rope(inplace, inplace, pos, cos, sin, head_dim, n_rot, neox)
    np.testing.assert_array_equal(inplace, out)


def test_rope_adjacent_pairs_by_hand():
    """NORM mode rotates (x0, x1) at position 1 by angle 1 for the first pair."""
    cos, sin = rope_cos_sin(4, 4, 10000.0)
    x = np.array([[1.0, 0.0, 0.0, 1.0]], np.float32)
    out = np.empty_like(x)
    K.rope(out, x, np.array([1]), cos, sin, 4, 4, False)
    second = 10000.0 ** -0.5  # angle of the second pair at position 1
    np.testing.assert_allclose(out[0], [math.cos(1), math.sin(1), -math.sin(second), math.cos(second)],
                               atol=1e-6)


def test_rope_table_linear_scale_and_ggml_float32_angles():
    cos, sin = rope_cos_sin(2048, 64, 1e6, freq_scale=0.25)
    pos = np.arange(2048)[:, None]
    angle = pos * 0.25 * 1e6 ** (-2.0 * np.arange(32) / 64)
    # float32 angles drift from the exact ones by a few ulps of the angle, as in ggml
    np.testing.assert_allclose(cos, np.cos(angle), atol=2e-3)
    np.testing.assert_allclose(sin, np.sin(angle), atol=2e-3)
    np.testing.assert_allclose(cos[:16], np.cos(angle[:16]), atol=2e-6)
    with pytest.raises(ValueError):
        rope_cos_sin(8, 7, 1e4)


def test_rope_table_frequency_factors_divide_each_pairs_angle():
    """ggml's rope_ext with frequency factors (Llama 3): pair i turns at theta_i / factor_i."""
    factors = np.linspace(1.0, 8.0, 32).astype(np.float32)
    cos, sin = rope_cos_sin(512, 64, 5e5, freq_factors=factors)
    angle = np.arange(512)[:, None] * 5e5 ** (-2.0 * np.arange(32) / 64) / factors
    np.testing.assert_allclose(cos, np.cos(angle), atol=2e-4)
    np.testing.assert_allclose(sin, np.sin(angle), atol=2e-4)
    plain, _ = rope_cos_sin(512, 64, 5e5)
    assert np.abs(plain - cos).max() > 0.5


# ---- attention ------------------------------------------------------------------------------

def attention_reference(q, k_all, v_all, pos, n_head, n_head_kv, scale, window, softcap=0.0):
    """Masked softmax attention in float64 over every cached position (scores soft-capped,
    softcap * tanh(s / softcap), where softcap > 0)."""
    t = q.shape[0]
    dk = k_all.shape[1] // n_head_kv
    dv = v_all.shape[1] // n_head_kv
    out = np.zeros((t, n_head * dv))
    for i in range(t):
        p = pos[i]
        keys = np.arange(p + 1)
        if window:
            keys = keys[p - keys < window]
        for h in range(n_head):
            kh = h // (n_head // n_head_kv)
            qh = q[i, h * dk:(h + 1) * dk].astype(np.float64)
            kk = k_all[keys, kh * dk:(kh + 1) * dk].astype(np.float64)
            s = kk @ qh * scale
            if softcap:
                s = softcap * np.tanh(s / softcap)
            w = np.exp(s - s.max())
            out[i, h * dv:(h + 1) * dv] = (w / w.sum()) @ v_all[keys, kh * dv:(kh + 1) * dv]
    return out


def one_sequence(pos):
    """(seq, tables, shift) for a cache holding one sequence in order: the identity table."""
    return np.zeros(len(pos), np.int64), np.arange(4, dtype=np.int32)[None], 5


@pytest.mark.parametrize("softcap", [0.0, 2.0])
@pytest.mark.parametrize("window", [0, 5])
@pytest.mark.parametrize("driver", ["serial", "parallel"])
def test_attention_gqa_causal_chunk_after_cache(window, driver, softcap):
    n_head, n_head_kv, dk, dv, n_ctx = 4, 2, 16, 8, 32
    n_past, t = 9, 6  # a prefill chunk appended to 9 cached tokens
    k_all = randn(n_past + t, n_head_kv * dk)
    v_all = randn(n_past + t, n_head_kv * dv)
    q = randn(t, n_head * dk)
    kc = np.zeros((n_head_kv, n_ctx, dk), np.float32)
    vc = np.zeros((n_head_kv, n_ctx, dv), np.float32)
    K.kv_store(kc, vc, k_all[:n_past], v_all[:n_past], np.arange(n_past), 0, 0)
    pos = np.arange(n_past, n_past + t)
    K.kv_store(kc, vc, k_all[n_past:], v_all[n_past:], pos, 0, 0)
    kc[:, n_past + t:] = 1e6  # stale entries past the sequence must never be read
    out = np.empty((t, n_head * dv), np.float32)
    fn = K.attention if driver == "serial" else K.attention_parallel
    fn(out, q, kc, vc, pos, *one_sequence(pos), np.float32(0.25), window, K.attention_scratch(kc, n_ctx), 0, 0, softcap)
    want = attention_reference(q, k_all, v_all, pos, n_head, n_head_kv, 0.25, window, softcap)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("driver", ["serial", "parallel"])
def test_paged_attention_reads_each_sequence_through_its_block_table(driver):
    """Two sequences in one pool of 4-row blocks, scattered and interleaved; one batch holds a
    decode token of the first and a prefill chunk of the second: every query attends to its
    own sequence only, as if that sequence were alone in a contiguous cache."""
    n_head, n_head_kv, dk, dv, shift = 4, 2, 16, 8, 2
    lengths = (11, 7)
    tables = np.array([[5, 0, 7, 0], [2, 6, 1, 0]], np.int32)   # blocks of each sequence, in order
    kc = np.full((n_head_kv, 8 << shift, dk), 1e6, np.float32)  # rows no table lists must never be read
    vc = np.full((n_head_kv, 8 << shift, dv), 1e6, np.float32)
    k_all = [randn(n, n_head_kv * dk) for n in lengths]
    v_all = [randn(n, n_head_kv * dv) for n in lengths]

    def rows(s, positions):
        return (tables[s, positions >> shift].astype(np.int64) << shift) | (positions & ((1 << shift) - 1))

    # the cache already holds sequence 0's first 10 tokens and sequence 1's first 3
    for s, n in ((0, 10), (1, 3)):
        K.kv_store(kc, vc, k_all[s][:n], v_all[s][:n], rows(s, np.arange(n)), 0, 0)
    seq = np.array([0, 1, 1, 1, 1], np.int64)
    pos = np.array([10, 3, 4, 5, 6], np.int64)
    k_new = np.stack([k_all[s][p] for s, p in zip(seq, pos)])
    v_new = np.stack([v_all[s][p] for s, p in zip(seq, pos)])
    slots = np.array([rows(s, np.array([p]))[0] for s, p in zip(seq, pos)])
    K.kv_store(kc, vc, k_new, v_new, slots, 0, 0)
    q = randn(5, n_head * dk)
    out = np.empty((5, n_head * dv), np.float32)
    fn = K.attention if driver == "serial" else K.attention_parallel
    fn(out, q, kc, vc, pos, seq, tables, shift, np.float32(0.25), 0, K.attention_scratch(kc, 16), 0, 0, 0.0)
    for s in (0, 1):
        mine = seq == s
        want = attention_reference(q[mine], k_all[s], v_all[s], pos[mine], n_head, n_head_kv, 0.25, 0)
        np.testing.assert_allclose(out[mine], want, rtol=1e-5, atol=1e-5)


def half(a):
    return a.astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("window", [0, 5])
@pytest.mark.parametrize("driver", ["serial", "parallel"])
def test_attention_f16_cache_rounds_keys_values_and_query_like_llama_cpp(window, driver):
    """An f16 cache holds numpy's half rounding of K and V, and the query is rounded to half for
    the K.Q dots (llama.cpp's non-flash path); the softmax weights stay float32."""
    n_head, n_head_kv, dk, dv, n_ctx = 4, 2, 16, 8, 32
    k_all = randn(12, n_head_kv * dk, scale=3.0)
    v_all = randn(12, n_head_kv * dv)
    k_all[0, 0] = 1e-6  # a half subnormal
    q = randn(4, n_head * dk, scale=3.0)
    kc = np.zeros((n_head_kv, n_ctx, dk), np.uint16)
    vc = np.zeros((n_head_kv, n_ctx, dv), np.uint16)
    pos = np.arange(8, 12)
    K.kv_store(kc, vc, k_all[:8], v_all[:8], np.arange(8), 0, 0)
    K.kv_store(kc, vc, k_all[8:], v_all[8:], pos, 0, 0)
    kh = kc[:, :12].view(np.float16).astype(np.float32).transpose(1, 0, 2).reshape(12, -1)
    np.testing.assert_array_equal(kh, half(k_all))
    np.testing.assert_array_equal(vc[:, :12].transpose(1, 0, 2).reshape(12, -1),
                                  half(v_all).astype(np.float16).view(np.uint16))
    out = np.empty((4, n_head * dv), np.float32)
    fn = K.attention if driver == "serial" else K.attention_parallel
    fn(out, q, kc, vc, pos, *one_sequence(pos), np.float32(0.25), window, K.attention_scratch(kc, n_ctx), 0, 0, 0.0)
    want = attention_reference(half(q), half(k_all), half(v_all), pos, n_head, n_head_kv, 0.25, window)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    # unrounded queries give a different answer: the rounding is really there
    exact = attention_reference(q, half(k_all), half(v_all), pos, n_head, n_head_kv, 0.25, window)
    assert np.abs(want - exact).max() > 1e-4


def blocks_as_rows(cache, rows):
    """The first `rows` positions of a block-record cache as (rows, n_head_kv * width) f32,
    dequantized by gguf-py, and their bytes as (rows * n_head_kv, row_bytes)."""
    qtype = T.Q8_0 if cache.dtype == Q8_0_BLOCK else T.Q4_0
    raw = np.ascontiguousarray(cache[:, :rows].transpose(1, 0, 2)).view(np.uint8).reshape(rows * cache.shape[0], -1)
    return gguf.quants.dequantize(raw, qtype).reshape(rows, -1), raw


def q8_0_query(x, width):
    """llama.cpp's x86 quantize_row_q8_0, in numpy: per 32 values d = f16(amax / 127) and
    codes rint(x * 127 / amax), read back as d * code (the operand a q8_0/q4_0 key meets)."""
    blocks = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    codes = np.rint(blocks * np.where(amax > 0, np.float32(127) / np.maximum(amax, 1e-30), 0))
    d = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
    return (codes * d).reshape(x.shape)


def test_hadamard_matches_the_sylvester_matrix_and_undoes_itself():
    x = randn(3 * 128)
    for block in (64, 128):
        y = x.copy()
        hadamard(y, block)
        np.testing.assert_allclose(y, hadamard_reference(x, block), rtol=1e-5, atol=1e-5)
        hadamard(y, block)
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5)
    y = x.copy()
    hadamard(y, 0)
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("rotate", [False, True])
@pytest.mark.parametrize("k_type, v_type", [("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q8_0", "f16"), ("f16", "q4_0")])
@pytest.mark.parametrize("driver", ["serial", "parallel"])
def test_attention_on_a_quantized_cache_reads_gguf_py_blocks(k_type, v_type, driver, rotate):
    """A q8_0 / q4_0 cache holds gguf-py's quantization of each head row (Hadamard-rotated as
    llama.cpp does, when asked), byte for byte; the query meets quantized keys as a Q8_0 row
    (llama.cpp converts it to the keys' vec_dot type), and rotated values are turned back."""
    n_head, n_head_kv, dk, dv, n_ctx = 4, 2, 128, 64, 24
    kt, vt = CACHE_TYPES[k_type], CACHE_TYPES[v_type]
    k_rot = rotation_block(kt, dk, keys=True) if rotate else 0
    v_rot = rotation_block(vt, dv, keys=False) if rotate else 0
    k_all = randn(12, n_head_kv * dk, scale=3.0)
    v_all = randn(12, n_head_kv * dv)
    q = randn(4, n_head * dk, scale=3.0)
    kc = np.zeros((n_head_kv, n_ctx, kt.elements(dk)), kt.dtype)
    vc = np.zeros((n_head_kv, n_ctx, vt.elements(dv)), vt.dtype)
    pos = np.arange(8, 12)
    K.kv_store(kc, vc, k_all[:8], v_all[:8], np.arange(8), k_rot, v_rot)
    K.kv_store(kc, vc, k_all[8:], v_all[8:], pos, k_rot, v_rot)

    def stored(cache, values, name, block):
        if name == "f16":
            return half(values)
        qtype = T.Q8_0 if name == "q8_0" else T.Q4_0
        rotated = hadamard_reference(values, block).astype(np.float32) if block else values
        got, raw = blocks_as_rows(cache, 12)
        want_bytes = gguf.quants.quantize(rotated.reshape(12 * cache.shape[0], -1), qtype)
        np.testing.assert_array_equal(raw, want_bytes)
        np.testing.assert_array_equal(got, gguf.quants.dequantize(want_bytes, qtype).reshape(values.shape))
        return got

    k_held = stored(kc, k_all, k_type, k_rot)
    v_held = stored(vc, v_all, v_type, v_rot)
    q_rotated = hadamard_reference(q, k_rot).astype(np.float32) if k_rot else q
    q_operand = q8_0_query(q_rotated, dk) if kt.block > 1 else half(q)
    out = np.empty((4, n_head * dv), np.float32)
    fn = K.attention if driver == "serial" else K.attention_parallel
    fn(out, q, kc, vc, pos, *one_sequence(pos), np.float32(0.125), 0, K.attention_scratch(kc, n_ctx), k_rot, v_rot, 0.0)
    want = attention_reference(q_operand, k_held, v_held, pos, n_head, n_head_kv, 0.125, 0)
    if v_rot:
        want = hadamard_reference(want, v_rot)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    if kt.block > 1:  # the query's quantization is really there
        plain = attention_reference(q_rotated, k_held, v_held, pos, n_head, n_head_kv, 0.125, 0)
        plain = hadamard_reference(plain, v_rot) if v_rot else plain
        assert np.abs(want - plain).max() > 1e-4


def test_attention_single_key_returns_its_value():
    kc = np.zeros((1, 4, 3), np.float32)
    vc = np.zeros((1, 4, 2), np.float32)
    K.kv_store(kc, vc, np.array([[1.0, 2.0, 3.0]], np.float32), np.array([[5.0, -7.0]], np.float32),
               np.array([0]), 0, 0)
    out = np.empty((1, 4), np.float32)
    pos = np.array([0])
    K.attention(out, randn(1, 6, scale=50.0), kc, vc, pos, *one_sequence(pos), np.float32(1.0), 0,
                K.attention_scratch(kc, 4), 0, 0, 0.0)
    np.testing.assert_array_equal(out, [[5.0, -7.0, 5.0, -7.0]])


# ---- embeddings -----------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", [T.F32, T.F16, T.Q8_0, T.Q4_1, T.Q5_0, T.Q4_K, T.Q6_K])
def test_get_rows_dequantizes_like_gguf_py(qtype):
    n_vocab, n = 10, 256
    table = quantize(randn(n_vocab, n), qtype.name) if qtype not in (T.F32, T.F16) else \
        randn(n_vocab, n).astype(np.float16 if qtype == T.F16 else np.float32).view(np.uint8)
    table = np.ascontiguousarray(table).reshape(n_vocab, -1)
    ids = np.array([3, 0, 9, 3], dtype=np.int64)
    out = np.empty((4, n), np.float32)
    gathered = np.empty((4, table.shape[1]), np.uint8)
    _get_rows(table, ids, gathered, QTYPES[qtype].dequantize, out.reshape(-1), gathered.reshape(-1))
    want = gguf.quants.dequantize(table, qtype).reshape(n_vocab, n)[ids]
    np.testing.assert_array_equal(out, want)


# ---- mixture of experts ---------------------------------------------------------------------

def test_moe_route_takes_the_top_softmax_entries_and_renormalizes():
    from lanternlm.runtime.backends.moe import route

    logits = np.array([[1.0, 3.0, 2.0, 3.0]], np.float32)       # a tie: the lower id first
    p = np.exp(logits[0] - 3.0) / np.exp(logits[0] - 3.0).sum()
    experts, weights = route(logits, 2, norm=False)
    assert experts.tolist() == [[1, 3]]
    np.testing.assert_allclose(weights[0], [p[1], p[3]], rtol=1e-6)
    _, normed = route(logits, 3, norm=True)
    np.testing.assert_allclose(normed[0], np.array([p[1], p[3], p[2]]) / (p[1] + p[3] + p[2]), rtol=1e-6)


@pytest.mark.parametrize("t", [1, 5])
def test_moe_ffn_equals_each_token_through_its_experts(t):
    """The kernel (each expert once over its tokens, quantized matrices) against the naive
    twin: every token through its own top-2 experts, dequantized weights, float64."""
    from lanternlm.quant import QTYPES, dequantize
    from lanternlm.runtime.backends.moe import expert_slices, moe_ffn, route

    n_expert, n, n_ff = 6, 64, 96
    q8 = QTYPES[T.Q8_0]
    router = randn(n_expert, n)
    gate, up = (quantize(randn(n_expert * n_ff, n), "Q8_0") for _ in range(2))
    down = quantize(randn(n_expert * n, n_ff), "Q8_0")
    x = randn(t, n, scale=2.0)
    out = np.empty((t, n), np.float32)
    experts = tuple(expert_slices(m, n_expert) for m in (gate, up, down))
    moe_ffn(out, x, router.view(np.uint8).reshape(n_expert, -1), QTYPES[T.F32], experts, (q8, q8, q8),
            n_expert, n_ff, 2, True)
    g, u = (dequantize(m, "Q8_0", (n_expert, n_ff, n)).astype(np.float64) for m in (gate, up))
    d = dequantize(down, "Q8_0", (n_expert, n, n_ff)).astype(np.float64)
    experts, weights = route(x @ router.T, 2, True)
    for i in range(t):
        want = np.zeros(n)
        for e, w in zip(experts[i], weights[i]):
            a, b = g[e] @ x[i], u[e] @ x[i]
            want += w * (d[e] @ (a / (1 + np.exp(-a)) * b))
        np.testing.assert_allclose(out[i], want, rtol=2e-2, atol=2e-2 * np.abs(want).max())
