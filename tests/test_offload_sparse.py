"""The sparse FFN served from an offload plan's bundles (offload/sparse_ffn.py, cpu_sparse.py).

Oracles: a float64 numpy FFN over the bundles' own dequantized values (up rows in F32, so the
up products are exact); the all-pinned layer for every other arrangement of pinned bundles,
cache slots and reads (the same sums in another order); the in-RAM engine on a model whose
ffn_down holds the plan's requantized down columns, for a plan that keeps every neuron.
"""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from lanternlm.formats.gguf import read_gguf
from lanternlm.formats.writer import write_gguf
from lanternlm.offload.bundles import make_bundles, unbundle
from lanternlm.offload.direct_io import DirectReader
from lanternlm.offload.plan_file import LayerPlan, PlanError, file_sha256, write_plan
from lanternlm.offload.sparse_ffn import (SparseFFN, accumulate_q8_0_columns,
                                          accumulate_q8_0_columns_reference)
from lanternlm.quant import dequantize, quantize
from lanternlm.runtime.engine import Engine
from test_runtime_engine import N_FF, N_LAYER, tiny_model

IDS = [3, 17, 42, 5, 9, 33, 60, 1, 2, 8]
N_EMBD_T, N_FF_T, T_TOKENS = 64, 256, 3


def test_q8_0_column_accumulation_matches_its_twin():
    rng = np.random.default_rng(0)
    cols = quantize(rng.standard_normal((40, 96)).astype(np.float32), "Q8_0")
    h = rng.standard_normal((3, 40)).astype(np.float32)
    h[:, ::3] = 0.0                                           # skipped rows
    got, want = np.full((3, 96), 0.5, np.float32), np.full((3, 96), 0.5, np.float32)
    accumulate_q8_0_columns(got, cols, h)
    accumulate_q8_0_columns_reference(want, cols, h)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.fixture
def layer_file(tmp_path):
    """One layer's bundles (F32 up rows, Q8_0 down columns) in a file, after 4196 other bytes."""
    rng = np.random.default_rng(1)
    up = rng.standard_normal((N_FF_T, N_EMBD_T)).astype(np.float32)
    down = rng.standard_normal((N_EMBD_T, N_FF_T)).astype(np.float32)
    order = rng.permutation(N_FF_T).astype(np.int32)
    bundles = make_bundles(up.view(np.uint8).reshape(N_FF_T, -1), down, order)
    path = tmp_path / "bundles.bin"
    offset = 4196
    path.write_bytes(b"\x01" * offset + bundles.tobytes())
    return LayerPlan(order, T.F32, bundles), path, offset


def reference_ffn(layer, x, a):
    """float64: sum over neurons of a * (up . x) * down, from the bundles' own values."""
    up, down = unbundle(layer.bundles, layer.up_type, N_EMBD_T)          # plan order
    u = x.astype(np.float64) @ up.T.astype(np.float64)
    return (a[:, layer.order] * u) @ down.astype(np.float64)


def activations(rng, share_off=0.6):
    a = rng.standard_normal((T_TOKENS, N_FF_T)).astype(np.float32)
    a[rng.random(a.shape) < share_off] = 0.0
    return a


@pytest.mark.parametrize("pinned, slots", [(N_FF_T, 0), (100, 100), (0, N_FF_T), (32, 64), (0, 8)])
def test_sparse_ffn_equals_the_float_ffn_of_its_bundles(layer_file, pinned, slots):
    layer, path, offset = layer_file
    ffn = SparseFFN(layer, N_EMBD_T, pinned, slots, DirectReader(path), offset, T_TOKENS)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T_TOKENS, N_EMBD_T)).astype(np.float32)
    out = np.empty((T_TOKENS, N_EMBD_T), np.float32)
    for _ in range(4):                        # new active sets: hits, misses, evictions, overflow
        a = activations(rng)
        ffn.run(out, x, a)
        want = reference_ffn(layer, x, a)
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        ffn.run(out[:1], x[:1], a[:1])        # one token: the matvec path
        np.testing.assert_allclose(out[:1], reference_ffn(layer, x[:1], a[:1]), rtol=1e-4,
                                   atol=1e-4 * np.abs(want).max())


def test_the_cache_refills_and_counts(layer_file):
    layer, path, offset = layer_file
    reader = DirectReader(path)
    ffn = SparseFFN(layer, N_EMBD_T, 0, 64, reader, offset, T_TOKENS)
    x = np.random.default_rng(3).standard_normal((1, N_EMBD_T)).astype(np.float32)
    out = np.empty((1, N_EMBD_T), np.float32)
    a = np.zeros((1, N_FF_T), np.float32)
    first = layer.order[:40]                  # 40 neurons at adjacent plan positions: one read
    a[0, first] = 1.0
    ffn.run(out, x, a)
    assert (ffn.cache.hits, ffn.cache.misses, ffn.read_bundles, reader.reads) == (0, 40, 40, 1)
    ffn.run(out, x, a)                        # the same neurons again: all hits, no read
    assert (ffn.cache.hits, ffn.cache.misses, reader.reads) == (40, 40, 1)
    np.testing.assert_allclose(out, reference_ffn(layer, x, a), rtol=1e-4, atol=1e-4)
    b = np.zeros_like(a)
    b[0, layer.order[100:140]] = 1.0          # 40 new neurons: 24 free slots, then the 16 least
    ffn.run(out, x, b)                        # recently used of the first set are replaced
    assert set(ffn.cache.neuron[ffn.cache.neuron >= 0]) == set(layer.order[100:140]) | \
        set(layer.order[:40]) - set(layer.order[:16])
    np.testing.assert_allclose(out, reference_ffn(layer, x, b), rtol=1e-4, atol=1e-4)
    ffn.run(out, x, a)                        # back to the first set: 16 must be read again
    assert ffn.cache.misses == 40 + 40 + 16
    np.testing.assert_allclose(out, reference_ffn(layer, x, a), rtol=1e-4, atol=1e-4)


# ---- the engine with a plan ------------------------------------------------------------------

def write_f32_model(path, arch, down=None):
    """A tiny F32 model; `down`: layer -> replacement ffn_down (n_embd, n_ff)."""
    kv, weights = tiny_model(arch)
    tensors = []
    for name, arr in weights.items():
        for il, w in (down or {}).items():
            if name == f"blk.{il}.ffn_down.weight":
                arr = w
        tensors.append((name, arr, T.F32, arr.shape))
    write_gguf(path, kv, tensors, arch=arch)
    return path


def plan_keeping_every_neuron(model, path):
    """A plan with thresholds 0 (no neuron is ever off), hotness order random; returns the
    down matrices its bundles hold (dequantized Q8_0 columns), per layer."""
    g = read_gguf(model)
    rng = np.random.default_rng(4)
    orders, bundles, types, downs = [], [], [], {}
    for il in range(N_LAYER):
        up, down = g.tensors[f"blk.{il}.ffn_up.weight"], g.tensors[f"blk.{il}.ffn_down.weight"]
        order = rng.permutation(N_FF).astype(np.int32)
        b = make_bundles(np.asarray(up.data).reshape(N_FF, -1), dequantize(down.data, down.type, down.shape), order)
        cols = unbundle(b, up.type, up.shape[1])[1]                       # plan order
        restored = np.empty_like(cols)
        restored[order] = cols
        downs[il] = np.ascontiguousarray(restored.T)
        orders.append(order)
        types.append(up.type)
        bundles.append(b)
    quality = dict(kld_mean=0.0, ppl_dense=1.0, ppl_sparse=1.0, same_top_percent=100.0, sparsity_mean=0.0,
                   tokens=1.0)
    write_plan(path, model_path=model, model_sha256=file_sha256(model), arch=g.arch, n_embd=up.shape[1],
               thresholds=np.zeros(N_LAYER), sparsity=np.zeros(N_LAYER), orders=orders, up_types=types,
               bundles=bundles, kld_target=0.03, calibration_tokens=1, quality=quality)
    return downs


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_a_plan_keeping_every_neuron_is_the_dense_ffn(tmp_path, arch):
    model = write_f32_model(tmp_path / "m.gguf", arch)
    plan = tmp_path / "m.offload.gguf"
    downs = plan_keeping_every_neuron(model, plan)
    # the dense model, with the down weights the plan holds (requantized to Q8_0)
    requantized = write_f32_model(tmp_path / "requantized.gguf", arch, down=downs)
    want = Engine.load(requantized, n_ctx=32, n_batch=4, threads=1).logits(IDS)
    for budget in ("100%", "85%"):            # every bundle pinned; then a cache and reads
        eng = Engine.load(model, n_ctx=32, n_batch=4, threads=1, ram_budget=budget, offload_plan=plan)
        got = eng.logits(IDS)
        # the same sums in another order (llama, qwen2: ~1e-6 of the logit scale); gemma3's GELU
        # reads ggml's f16 table, so a gate that moves by an ulp may take the next entry (~3e-5
        # seen); a wrong neuron or column moves logits by 1e-2 and more (the requantization alone does)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
        assert eng.backend.resident_bytes <= eng.backend.ram_budget
    assert eng.backend.ffns[0].cache is not None and eng.backend.cache_hit_rate is not None
    assert eng.backend.plan_reader.bytes_read > 0
    # found beside the model without being named; refused for another model
    beside = Engine.load(model, n_ctx=32, n_batch=4, threads=1, ram_budget="100%")
    assert hasattr(beside.backend, "ffns")
    other = write_f32_model(tmp_path / "other.gguf", arch, down={0: np.zeros_like(downs[0])})
    with pytest.raises(PlanError, match="another model"):
        Engine.load(other, n_ctx=32, n_batch=4, threads=1, ram_budget="100%", offload_plan=plan)
    dense = Engine.load(model, n_ctx=32, n_batch=4, threads=1, ram_budget="100%", offload_plan=False)
    assert not hasattr(dense.backend, "ffns")


def test_expected_plan_reads_by_hand():
    from types import SimpleNamespace

    from lanternlm.offload.residency import Residency
    from lanternlm.runtime.weight_residency import expected_plan_read_bytes

    layer = SimpleNamespace(up_type=T.Q8_0)                   # bundles of 34 + 34 bytes (n_embd 32)
    plan = SimpleNamespace(layers=[layer, layer], sparsity=[0.5, 0.0], n_ff=100, n_embd=32)
    residency = Residency(1000, frozenset(), ("head",), (), 0)
    tensors = {"head": SimpleNamespace(nbytes=500)}
    # layer 0: 80 unpinned, 40 active, 20 slots hold a quarter: 30 read; layer 1: all pinned
    assert expected_plan_read_bytes(plan, residency, tensors, [(20, 20), (100, 0)]) == 500 + 30 * 68


def test_a_plan_found_beside_the_model_is_used_only_where_it_reads_less(tmp_path, monkeypatch):
    from lanternlm.runtime import weight_residency

    model = write_f32_model(tmp_path / "m.gguf", "llama")
    plan_keeping_every_neuron(model, tmp_path / "m.offload.gguf")
    monkeypatch.setattr(weight_residency, "dense_read_bytes", lambda *a: 0)      # dense reads nothing
    with pytest.warns(weight_residency.PlanNotUsedWarning, match="not using the offload plan"):
        eng = Engine.load(model, n_ctx=32, n_batch=4, threads=1, ram_budget="85%")
    assert not hasattr(eng.backend, "ffns")
    named = Engine.load(model, n_ctx=32, n_batch=4, threads=1, ram_budget="85%",
                        offload_plan=tmp_path / "m.offload.gguf")             # named: always used
    assert hasattr(named.backend, "ffns")
    monkeypatch.setattr(weight_residency, "dense_read_bytes", lambda *a: 1 << 40)
    assert hasattr(Engine.load(model, n_ctx=32, n_batch=4, threads=1, ram_budget="85%").backend, "ffns")
