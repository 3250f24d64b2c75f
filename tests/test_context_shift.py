"""Context shift (runtime/context_shift.py): dropped tokens, moved and re-rotated keys.

Oracles. In a one-layer model the cache after a shift is exactly what a fresh evaluation of the
kept tokens at their new positions makes (deeper layers' entries were computed attending to the
dropped tokens, in llama.cpp too), so the next logits must equal that fresh evaluation's: with a
float32 cache up to the float32 rounding of one more rotation (1e-4 of the logit scale), with
llama.cpp's f16 cache up to the second f16 rounding of the moved keys (measured up to 1.6e-2 of
the logit scale on these models; tolerance 2e-2, and a shift that does not re-rotate is off by
more than five times that, checked). In a three-layer gemma3 model (sliding
layers rotate with base 1e4, the global one with 1e6) every layer's moved keys must equal the old
keys rotated back by the shift with float64 angles computed here from the model's bases.
"""
import numpy as np
import pytest

from lanternlm.runtime.context_shift import shift_cache, shift_cache_reference
from lanternlm.runtime.engine import Engine
from test_offload_streaming import write_mixed_model
from test_runtime_engine import HEAD_DIM

IDS = [3, 17, 42, 5, 9, 33, 60, 1, 2, 8, 11, 50, 7, 21, 34, 55, 12, 4, 6, 10]
N_KEEP, N_DISCARD = 3, 7
KEPT = IDS[:N_KEEP] + IDS[N_KEEP + N_DISCARD:]


def scale(logits):
    return float(np.abs(logits).max())


YARN = {"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0, "rope.scaling.original_context_length": 8}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "qwen2-yarn"])
@pytest.mark.parametrize("kv_type, rtol", [("f32", 1e-4), ("f16", 2e-2), ("q8_0", 2e-2)])
def test_logits_after_a_shift_equal_a_fresh_evaluation_of_the_kept_tokens(tmp_path, arch, kv_type, rtol):
    # heads of 64: a q8_0 cache needs whole blocks of 32, and rotates heads of 64 (kv_cache.py);
    # with YaRN the rope tables carry a magnitude factor, which a shift must not apply again
    arch, _, variant = arch.partition("-")
    extra = {f"{arch}.{key}": value for key, value in YARN.items()} if variant == "yarn" else None
    path = write_mixed_model(tmp_path / f"{arch}.gguf", arch, n_layer=1, head_dim=64, extra_kv=extra)
    eng = Engine.load(path, n_ctx=32, threads=1, kv_type=kv_type)
    eng.eval(IDS)
    eng.shift(N_KEEP, N_DISCARD)
    assert eng.n_past == len(KEPT)
    got = eng.eval([13]).copy()
    want = Engine.load(path, n_ctx=32, threads=1, kv_type=kv_type).eval(KEPT + [13]).copy()
    np.testing.assert_allclose(got, want, atol=rtol * scale(want))
    # moving the entries without re-rotating the keys is far off: the test can fail
    wrong = Engine.load(path, n_ctx=32, threads=1, kv_type=kv_type)
    wrong.eval(IDS)
    for k, v in zip(wrong.kv.k, wrong.kv.v):
        k[:, N_KEEP:len(KEPT)] = k[:, N_KEEP + N_DISCARD:len(IDS)].copy()
        v[:, N_KEEP:len(KEPT)] = v[:, N_KEEP + N_DISCARD:len(IDS)].copy()
    wrong.truncate(len(KEPT))
    assert np.abs(wrong.eval([13]) - want).max() > 5 * rtol * scale(want)


def test_each_layer_rotates_with_its_own_rope(tmp_path):
    eng = Engine.load(write_mixed_model(tmp_path / "g.gguf", "gemma3"), n_ctx=32, threads=1, kv_type="f32")
    eng.eval(IDS)
    old_k = [k.copy() for k in eng.kv.k]
    old_v = [v.copy() for v in eng.kv.v]
    eng.shift(N_KEEP, N_DISCARD)
    moved = slice(N_KEEP + N_DISCARD, len(IDS))
    for layer, base in enumerate((1e4, 1e6, 1e4)):            # local, global, local (pattern 2)
        angles = N_DISCARD * base ** (-2.0 * np.arange(HEAD_DIM // 2) / HEAD_DIM)     # float64
        c, s = np.cos(angles), np.sin(angles)
        k = old_k[layer][:, moved].astype(np.float64)
        x0, x1 = k[..., :HEAD_DIM // 2], k[..., HEAD_DIM // 2:]                       # NEOX pairs
        want = np.concatenate([x0 * c + x1 * s, x1 * c - x0 * s], axis=-1)
        got = eng.kv.k[layer][:, N_KEEP:len(KEPT)]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        np.testing.assert_array_equal(eng.kv.v[layer][:, N_KEEP:len(KEPT)], old_v[layer][:, moved])
        np.testing.assert_array_equal(eng.kv.k[layer][:, :N_KEEP], old_k[layer][:, :N_KEEP])


@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("half", [True, False])
def test_shift_kernel_equals_its_numpy_twin(neox, half):
    rng = np.random.default_rng(0)
    k = rng.standard_normal((2, 16, 8)).astype(np.float32)
    v = rng.standard_normal((2, 16, 8)).astype(np.float32)
    angle = rng.uniform(0, 3, 3).astype(np.float32)
    cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    if half:        # numpy's float16 rounds to nearest even, as the cache's encoding does
        back = lambda a: np.asarray(a, dtype=np.float32).astype(np.float16).view(np.uint16)  # noqa: E731
        to = lambda bits: bits.view(np.float16).astype(np.float32)  # noqa: E731
        k, v = back(k), back(v)
    else:
        to = back = lambda a: np.asarray(a, dtype=np.float32)
    k2, v2 = k.copy(), v.copy()
    shift_cache(k, v, 2, 5, 14, cos, sin, 6, neox, 0)
    shift_cache_reference(k2, v2, 2, 5, 14, cos, sin, 6, neox, 0, to, back)
    np.testing.assert_array_equal(k[:, :9], k2[:, :9])
    np.testing.assert_array_equal(v[:, :9], v2[:, :9])


def test_shift_kernel_on_a_rotated_q8_0_cache_equals_its_numpy_twin():
    """Quantized, Hadamard-rotated keys are read back, turned back, shifted, rotated and quantized
    again: as the twin does with gguf-py's Q8_0 and the Hadamard matrix, within a code step."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize, quantize

    from lanternlm.runtime.kv_cache import Q8_0_BLOCK

    rng = np.random.default_rng(1)
    to = lambda blocks: dequantize(np.ascontiguousarray(blocks).view(np.uint8), T.Q8_0).reshape(blocks.shape[:-1] + (-1,))  # noqa: E731
    back = lambda a: quantize(np.asarray(a, dtype=np.float32), T.Q8_0).view(Q8_0_BLOCK).reshape(a.shape[:-1] + (-1,))  # noqa: E731
    k = back(rng.standard_normal((2, 16, 64)).astype(np.float32))
    v = back(rng.standard_normal((2, 16, 64)).astype(np.float32))
    angle = rng.uniform(0, 3, 32).astype(np.float32)
    cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    k2, v2 = k.copy(), v.copy()
    shift_cache(k, v, 2, 5, 14, cos, sin, 64, True, 64)
    shift_cache_reference(k2, v2, 2, 5, 14, cos, sin, 64, True, 64, to, back)
    step = np.abs(to(k2[:, :9])).max() / 127
    np.testing.assert_allclose(to(k[:, :9]), to(k2[:, :9]), atol=1.01 * step)
    assert (to(k[:, 2:9]) != to(k[:, 7:14])).any()  # the moved keys did change
    np.testing.assert_array_equal(v[:, :9], v2[:, :9])


def test_a_shift_past_the_cache_is_refused(tmp_path):
    eng = Engine.load(write_mixed_model(tmp_path / "m.gguf", "llama"), n_ctx=32, threads=1)
    eng.eval(IDS[:5])
    with pytest.raises(ValueError, match="cannot drop"):
        eng.shift(2, 4)


def test_generation_goes_on_past_a_full_context(smollm2_path):
    from lanternlm.runtime.model import Model

    m = Model.load(smollm2_path, n_ctx=48, threads=1, context_shift=True, n_keep=4)
    out = m.create_completion("Once upon a time, in a small village by the sea,", max_tokens=80, temperature=0)
    assert out["usage"]["completion_tokens"] == 80 and out["choices"][0]["finish_reason"] == "length"
    assert m.engine.n_past == len(m.context.ids) <= 48
    plain = Model.load(smollm2_path, n_ctx=48, threads=1)
    out = plain.create_completion("Once upon a time, in a small village by the sea,", max_tokens=80, temperature=0)
    assert out["usage"]["completion_tokens"] < 48
    with pytest.raises(ValueError, match="n_keep"):
        Model.load(smollm2_path, n_ctx=48, n_keep=48)


def test_stopping_after_a_shift_leaves_only_what_was_taken(smollm2_path):
    """A consumer that stops after a shift (with prompt-lookup drafts in flight) leaves the cache
    holding the kept prompt and the taken tokens, less what the shift dropped."""
    from lanternlm.runtime.generate import KVContext, generate_step

    eng = Engine.load(smollm2_path, n_ctx=40, threads=1, draft="ngram")
    context = KVContext(eng, 40)
    prompt = [1, 504, 3000, 1500, 504, 3000, 1500, 504, 3000, 1500]
    steps = generate_step(context, prompt, lambda logits, h: int(np.argmax(logits)), max_tokens=60,
                          context_shift=2)
    taken = [next(steps) for _ in range(45)]
    steps.close()
    assert eng.n_past == len(context.ids) < 40
    assert context.ids[:2] == prompt[:2] and context.ids[-5:] == (prompt + taken)[-6:-1]
