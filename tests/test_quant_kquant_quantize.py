"""K-quant quantizers (Q2_K..Q6_K) against llama.cpp, byte for byte.

Expected outputs are sha256 digests of what ggml_quantize_chunk (no imatrix)
wrote for seeded inputs; tests/data/make_quant_fixtures.py regenerates them.
Also: the bit-level float helpers the quantizers rest on, against numpy.
"""
import importlib.util
import os

import gguf
import numpy as np
import pytest
from numba import njit

from lanternlm import quant
from lanternlm.quant import kquant_quantize, kquant_search, kquant_search_ref
from lanternlm.quant.float_bits import f16_bits_to_f32, f32_to_f16_bits, nearest_int

_spec = importlib.util.spec_from_file_location(
    "quant_inputs", os.path.join(os.path.dirname(__file__), "data", "quant_inputs.py"))
qi = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qi)

K_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
CASES = [(t, c) for t in K_TYPES for c in qi.fixture_cases(t)]


def fixture_input(case):
    x = qi.make_input(case["dist"], case["rows"], case["n"], case["seed"])
    assert qi.sha256(x) == case["input_sha256"], (
        "numpy's random stream changed: regenerate tests/data/quant_fixtures.json")
    return x


@pytest.mark.parametrize("type_name, case", CASES, ids=[f"{t}-{qi.case_id(c)}" for t, c in CASES])
def test_matches_llama_cpp(type_name, case):
    x = fixture_input(case)
    q = quant.quantize(x, type_name)
    assert q.dtype == np.uint8 and q.shape == (case["rows"], quant.get(type_name).row_bytes(case["n"]))
    assert qi.sha256(q) == case["outputs"][type_name]


def test_fixtures_cover_the_edge_cases():
    dists = {c["dist"] for _, c in CASES}
    assert {"zeros", "single_nonzero", "constant", "tiny", "small", "huge", "ties", "weights"} <= dists
    assert {c["n"] for _, c in CASES} >= {256, 512, 2304}


# relative RMS error of dequantize(quantize(x)) on N(0, 1) data: what each format's bit budget buys
RMS_BOUND = {"Q2_K": 0.33, "Q3_K": 0.17, "Q4_K": 0.08, "Q5_K": 0.04, "Q6_K": 0.02}


@pytest.mark.parametrize("type_name", K_TYPES)
def test_round_trip_through_gguf_dequantize(type_name):
    x = np.random.default_rng(5).standard_normal((8, 2304)).astype(np.float32)
    q = quant.quantize(x, type_name)
    y = gguf.quants.dequantize(q, gguf.GGMLQuantizationType[type_name]).reshape(x.shape)
    assert np.sqrt(np.mean((y - x) ** 2)) < RMS_BOUND[type_name] * np.sqrt(np.mean(x ** 2))


def test_quantizers_are_registered():
    for t in K_TYPES:
        assert quant.get(t).quantize is kquant_quantize.QUANTIZERS[gguf.GGMLQuantizationType[t]]


def test_rows_are_independent():
    x = qi.make_input("normal", 6, 512, 7)
    whole = quant.quantize(x, "Q4_K")
    for r in range(6):
        assert np.array_equal(quant.quantize(x[r:r + 1], "Q4_K"), whole[r:r + 1])


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 100), np.float32), "multiple of 256"),
    (np.full((1, 256), np.nan, np.float32), "non-finite"),
    (np.full((1, 256), np.inf, np.float32), "non-finite"),
])
def test_bad_input_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        kquant_quantize.quantize_q4_k(bad)


def test_requires_two_dimensions():
    with pytest.raises(ValueError, match="2-D"):
        kquant_quantize.quantize_q6_k(np.zeros(256, np.float32))


# ---- the row-at-once (lane) searches against their one-group reference twins


def awkward_groups(group_size, seed):
    """f32[group_size, G] groups: normal, all-zero, constant (both signs), one-signed, tiny, ties."""
    rng = np.random.default_rng(seed)
    cols = [rng.standard_normal(group_size) for _ in range(24)]
    cols += [np.zeros(group_size), np.full(group_size, 0.7), np.full(group_size, -0.7),
             np.abs(rng.standard_normal(group_size)) + 1, -np.abs(rng.standard_normal(group_size)) - 1,
             rng.standard_normal(group_size) * 1e-30, rng.standard_normal(group_size) * 1e-17,
             np.round(rng.standard_normal(group_size) * 4) / 2, np.eye(group_size)[3] * -2.5]
    return np.ascontiguousarray(np.stack(cols, axis=1), dtype=np.float32)


def bits(a):
    return np.asarray(a, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("group_size, nmax, rmin, nstep, use_mad", [
    (16, 3, -0.5, 15, True),    # Q2_K
    (32, 15, -1.0, 20, False),  # Q4_K
    (32, 31, -0.5, 15, False),  # Q5_K
])
def test_affine_lanes_equal_reference(group_size, nmax, rmin, nstep, use_mad):
    xt = awkward_groups(group_size, seed=nmax)
    weights = np.ascontiguousarray(np.abs(xt) + np.float32(0.1) * (not use_mad))
    G = xt.shape[1]
    L = np.empty((group_size, G), np.uint8)
    scale = np.empty(G, np.float32)
    offset = np.empty(G, np.float32)
    kquant_search.make_affine_quants(L, scale, offset, xt, weights, nmax, np.float32(rmin),
                                     np.float32(0.1), nstep, use_mad)
    for g in range(G):
        Lr = np.empty(group_size, np.uint8)
        s, m = kquant_search_ref.make_affine_quants(Lr, np.empty(group_size, np.uint8), xt[:, g].copy(),
                                                    weights[:, g].copy(), nmax, np.float32(rmin),
                                                    np.float32(0.1), nstep, use_mad)
        assert np.array_equal(L[:, g], Lr), g
        assert bits(scale[g]) == bits(s) and bits(offset[g]) == bits(m), g


def test_symmetric_lanes_equal_reference():
    xt = awkward_groups(16, seed=6)
    G = xt.shape[1]
    L = np.empty((16, G), np.uint8)
    scale = np.empty(G, np.float32)
    kquant_search.make_symmetric_quants(L, scale, xt, 32)
    for g in range(G):
        Lr = np.empty(16, np.uint8)
        s = kquant_search_ref.make_symmetric_quants(Lr, xt[:, g].copy(), 32)
        assert np.array_equal(L[:, g], Lr) and bits(scale[g]) == bits(s), g


# ---- the float helpers


@njit
def _apply_f16(x, out):
    for i in range(x.size):
        out[i] = f32_to_f16_bits(x[i])


@njit
def _apply_widen(h, out):
    for i in range(h.size):
        out[i] = f16_bits_to_f32(h[i])


@njit
def _apply_round(x, out):
    for i in range(x.size):
        out[i] = nearest_int(x[i])


def test_f32_to_f16_matches_numpy_rounding():
    rng = np.random.default_rng(0)
    halves = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    midpoints = (halves[:-1] + halves[1:]) / 2  # exact ties: round half to even
    x = np.concatenate([
        (rng.standard_normal(200_000) * 10.0 ** rng.uniform(-10, 6, 200_000)),
        midpoints, -midpoints, np.nextafter(midpoints, 0), np.nextafter(midpoints, 1e9),
        [0.0, -0.0, 65504.0, 65519.0, 65520.0, 1e30, 2.0 ** -24, 2.0 ** -25, 2.0 ** -25 * 1.0001],
    ]).astype(np.float32)
    got = np.empty(x.size, np.int64)
    _apply_f16(x, got)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    assert np.array_equal(got, want)


def test_f16_to_f32_is_exact_for_every_finite_half():
    h = np.arange(65536, dtype=np.uint16)
    finite = np.isfinite(h.view(np.float16))
    got = np.empty(h.size, np.float32)
    _apply_widen(h.astype(np.int64), got)
    assert np.array_equal(got[finite].view(np.uint32), h.view(np.float16)[finite].astype(np.float32).view(np.uint32))


def test_nearest_int_rounds_half_to_even():
    x = np.concatenate([np.arange(-40, 41) / 2.0, np.random.default_rng(1).uniform(-4e6, 4e6, 10000)])
    x = x.astype(np.float32)
    got = np.empty(x.size, np.int64)
    _apply_round(x, got)
    assert np.array_equal(got, np.rint(x).astype(np.int64))
