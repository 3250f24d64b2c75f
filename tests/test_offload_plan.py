"""Offload plans: neuron bundles, the plan file, and the FFN probe that calibrates them.

Oracles: gguf-py's Q8_0 quantizer and dequantizer for the bundles' down columns, the model's own
bytes for the up rows, a model file whose ffn_down weights are zero for neurons switched off
(switching every neuron of a layer off must equal a layer whose FFN contributes nothing), and
the in-RAM engine for a probe that switches nothing off.
"""
import os
import shutil

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from lanternlm.formats.writer import write_gguf
from lanternlm.offload.bundles import make_bundles, split_bundles, unbundle
from lanternlm.offload.plan_file import (PlanError, check_plan_for_model, default_plan_path, file_sha256,
                                         read_plan, write_plan)
from lanternlm.offload.sparsity import ActivationSample, allocate, search_scale
from lanternlm.quant import dequantize, quantize
from lanternlm.runtime.backends.ffn_probe import FFNProbeBackend
from lanternlm.runtime.engine import Engine
from test_runtime_engine import N_FF, N_LAYER, tiny_model

IDS = [3, 17, 42, 5, 9, 33, 60, 1, 2, 8]


# ---- bundles ---------------------------------------------------------------------------------

def test_bundles_hold_the_up_rows_bytes_and_gguf_py_q8_0_down_columns():
    rng = np.random.default_rng(0)
    n_ff, n_embd = 48, 64
    up = rng.standard_normal((n_ff, n_embd)).astype(np.float32)
    up_rows = quantize(up, "Q5_0")
    down = rng.standard_normal((n_embd, n_ff)).astype(np.float32)
    order = rng.permutation(n_ff).astype(np.int32)
    bundles = make_bundles(up_rows, down, order)
    up_part, down_part = split_bundles(bundles, T.Q5_0, n_embd)
    np.testing.assert_array_equal(up_part, up_rows[order])
    want_down = gguf.quants.quantize(np.ascontiguousarray(down.T[order]), T.Q8_0)
    np.testing.assert_array_equal(down_part, want_down)
    up_f, down_f = unbundle(bundles, T.Q5_0, n_embd)
    np.testing.assert_array_equal(up_f, dequantize(up_rows, T.Q5_0, up.shape)[order])
    np.testing.assert_array_equal(down_f, gguf.quants.dequantize(want_down, T.Q8_0))
    # the requantized down columns stay within half a Q8_0 step (max|block| / 254) of the original
    # columns, plus the step's own rounding to f16 (2^-11 relative, times up to 127 steps)
    blocks = np.abs(down.T[order]).reshape(n_ff, -1, 32).max(axis=2, keepdims=True)
    err = np.abs(down_f - down.T[order]).reshape(n_ff, -1, 32)
    assert (err <= blocks * (1 / 254 + 1 / 2048)).all()


# ---- thresholds ------------------------------------------------------------------------------

def test_thresholds_are_quantiles_and_allocation_favours_cheap_layers():
    sample = ActivationSample(n_layer=2, n_ff=4)
    sample.add(0, np.arange(8, dtype=np.float32).reshape(2, 4))         # 0..7
    sample.add(1, np.arange(8, 16, dtype=np.float32).reshape(2, 4))     # 8..15
    t = sample.thresholds(np.array([0.5, 0.0]))
    assert t[0] == pytest.approx(3.5) and t[1] == 0.0
    np.testing.assert_allclose(sample.hotness, [[2, 3, 4, 5], [10, 11, 12, 13]])
    s = allocate(np.array([0.01, 0.04]), scale=0.05, probe=0.5)         # k = 0.04, 0.16
    np.testing.assert_allclose(s, [0.9, 0.3125])                        # capped; 0.05 / 0.16


def test_search_scale_keeps_the_measured_kl_under_the_target():
    cost = np.array([0.01, 0.02, 0.04])
    measure = lambda s: float((cost / 0.25 * s ** 2).sum())             # noqa: E731 (the model's KL)
    sparsity, kl = search_scale(measure, cost, probe=0.5, target=0.03, steps=20)
    assert kl <= 0.03 and kl == pytest.approx(measure(sparsity))
    assert kl > 0.029                                                    # and uses the budget


# ---- the FFN probe ---------------------------------------------------------------------------

def write_f32_model(path, arch, zero_down_layers=()):
    kv, weights = tiny_model(arch)
    tensors = []
    for name, arr in weights.items():
        if any(name == f"blk.{il}.ffn_down.weight" for il in zero_down_layers):
            arr = np.zeros_like(arr)
        tensors.append((name, arr, T.F32, arr.shape))
    write_gguf(path, kv, tensors, arch=arch)
    return path


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_probe_switching_nothing_off_is_the_in_ram_engine(tmp_path, arch):
    path = write_f32_model(tmp_path / "m.gguf", arch)
    want = Engine.load(path, n_ctx=16, n_batch=4, threads=1).logits(IDS)
    probe = Engine.load(path, n_ctx=16, n_batch=4, threads=1, backend_class=FFNProbeBackend)
    seen = []
    probe.backend.recorder = lambda layer, mag: seen.append((layer, mag.shape))
    np.testing.assert_array_equal(probe.logits(IDS), want)
    assert sorted({layer for layer, _ in seen}) == list(range(N_LAYER))
    assert sum(shape[0] for layer, shape in seen if layer == 0) == len(IDS)
    probe.backend.thresholds = np.zeros(N_LAYER, np.float32)             # |act| < 0: nothing off
    np.testing.assert_array_equal(probe.logits(IDS), want)
    assert (probe.backend.active == probe.backend.seen).all()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_probe_switching_a_layer_off_equals_a_layer_without_ffn(tmp_path, arch):
    path = write_f32_model(tmp_path / "m.gguf", arch)
    zeroed = write_f32_model(tmp_path / "z.gguf", arch, zero_down_layers=(1,))
    want = Engine.load(zeroed, n_ctx=16, n_batch=4, threads=1).logits(IDS)
    probe = Engine.load(path, n_ctx=16, n_batch=4, threads=1, backend_class=FFNProbeBackend)
    thresholds = np.zeros(N_LAYER, np.float32)
    thresholds[1] = np.inf                                                # every neuron of layer 1 off
    probe.backend.thresholds = thresholds
    np.testing.assert_array_equal(probe.logits(IDS), want)
    assert probe.backend.active[1] == 0 and probe.backend.seen[1] == len(IDS) * N_FF


# ---- the plan file ---------------------------------------------------------------------------

def tiny_plan(tmp_path, model):
    from lanternlm.formats.gguf import read_gguf

    g = read_gguf(model)
    rng = np.random.default_rng(1)
    orders, bundles, types = [], [], []
    for il in range(N_LAYER):
        up = g.tensors[f"blk.{il}.ffn_up.weight"]
        down = g.tensors[f"blk.{il}.ffn_down.weight"]
        order = rng.permutation(N_FF).astype(np.int32)
        orders.append(order)
        types.append(up.type)
        bundles.append(make_bundles(np.asarray(up.data).reshape(N_FF, -1),
                                    dequantize(down.data, down.type, down.shape), order))
    quality = dict(kld_mean=0.01, ppl_dense=10.0, ppl_sparse=10.2, same_top_percent=97.0, sparsity_mean=0.2,
                   tokens=100.0)
    plan = write_plan(tmp_path / "m.offload.gguf", model_path=model, model_sha256=file_sha256(model),
                      arch="llama", n_embd=64, thresholds=np.full(N_LAYER, 0.1), sparsity=np.full(N_LAYER, 0.2),
                      orders=orders, up_types=types, bundles=bundles, kld_target=0.03,
                      calibration_tokens=100, quality=quality)
    return plan, orders, bundles, quality


def test_plan_round_trip_and_model_check(tmp_path):
    model = write_f32_model(tmp_path / "m.gguf", "llama")
    path, orders, bundles, quality = tiny_plan(tmp_path, model)
    assert path == default_plan_path(model)
    plan = read_plan(path)
    assert plan.n_layer == N_LAYER and plan.n_ff == N_FF and plan.quality == pytest.approx(quality)
    for il, layer in enumerate(plan.layers):
        np.testing.assert_array_equal(layer.order, orders[il])
        np.testing.assert_array_equal(layer.bundles, bundles[il])
    check_plan_for_model(plan, model)
    other = write_f32_model(tmp_path / "other.gguf", "qwen2")
    with pytest.raises(PlanError, match="another model"):
        check_plan_for_model(plan, other)
    same_size = tmp_path / "same_size.gguf"                 # same size, one byte different
    shutil.copy(model, same_size)
    with open(same_size, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(PlanError, match="another model"):
        check_plan_for_model(plan, same_size)


def test_damaged_plans_give_one_clear_error(tmp_path):
    model = write_f32_model(tmp_path / "m.gguf", "llama")
    path, *_ = tiny_plan(tmp_path, model)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(PlanError, match="damaged"):
        read_plan(truncated)
    with pytest.raises(PlanError, match="not an offload plan"):
        read_plan(model)
    # a neuron order that is not a permutation (metadata intact, tensor bytes corrupted)
    from lanternlm.formats.gguf import read_gguf

    ref = read_gguf(path).tensors["blk.0.neuron_order"]
    bad = bytearray(data)
    bad[ref.offset:ref.offset + 8] = np.array([5, 5], np.int32).tobytes()
    corrupted = tmp_path / "corrupted.gguf"
    corrupted.write_bytes(bytes(bad))
    with pytest.raises(PlanError, match="not a permutation"):
        read_plan(corrupted)
