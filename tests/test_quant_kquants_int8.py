"""The K-quant prefill matmul (register tiles, kquants_tiles.py) against independent oracles.

Oracle: float64 product of gguf-py's dequantization of the weights and the dequantized Q8_K
activations, these made by a numpy transcription of llama.cpp's quantize_row_q8_K_ref
(test_quant_kquants.quantize_q8_k_reference). Shapes cover every remainder of the tiling:
weight rows around TILE_ROWS, activation rows 1..9 around TILE_COLS, one block and one block
past CHUNK_BLOCKS. The activation panels are also checked value by value against that
quantizer, since a single differently rounded quant would hide inside a tolerance.
"""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize
from numba import njit

from lanternlm import quant
from lanternlm.quant import kquants_int8, kquants_tiles as tiles

from test_quant_kquants import K_TYPES, quantize_q8_k_reference, random_blocks, relative_error


def q8_k_oracle(x):
    """x f32 (t, n) -> float64 (t, n): the Q8_K-rounded activations the kernels multiply."""
    t, n = x.shape
    d, qs, _ = quantize_q8_k_reference(x.reshape(-1, 256))
    return (d.astype(np.float64)[:, None] * qs).reshape(t, n)


def activations(t, n, rng):
    """Rows with blocks of very different magnitudes, a zero block and a zero row."""
    x = rng.standard_normal((t, n)).astype(np.float32)
    x *= (10.0 ** rng.integers(-3, 3, (t, n // 256, 1))).astype(np.float32).repeat(256, axis=2).reshape(t, n)
    x[0, :256] = 0.0
    if t > 4:
        x[4] = 0.0
    return x


def check_against_oracle(matmul, qtype, rows, n, ts, rng, tol=1e-6):
    blocks = random_blocks(qtype, rows * n // 256, rng, extremes=False)
    w = blocks.reshape(rows, -1)
    wf = gguf_dequantize(blocks, qtype).reshape(rows, n).astype(np.float64)
    for t in ts:
        x = activations(t, n, rng)
        xq = q8_k_oracle(x)
        out = np.full((t, rows), np.nan, np.float32)
        matmul(out, w, x)
        err = relative_error(out, xq @ wf.T, np.abs(xq) @ np.abs(wf).T + 1e-30)
        assert err < tol, (qtype.name, rows, n, t, err)
    return w, wf


@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_matmul_every_tile_remainder_matches_dequantized_product(qtype):
    rng = np.random.default_rng(500 + int(qtype))
    mm = quant.get(qtype).matmul
    past_chunk = 256 * (tiles.CHUNK_BLOCKS + 1)
    for rows, n in ((1, 256), (tiles.TILE_ROWS + 3, 256), (2 * tiles.TILE_ROWS + 1, past_chunk)):
        check_against_oracle(mm, qtype, rows, n, range(1, 10), rng)


@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_matvec_agrees_with_matmul_rows(qtype):
    rng = np.random.default_rng(600 + int(qtype))
    rows, n, t = 11, 1024, 5
    w = random_blocks(qtype, rows * n // 256, rng, extremes=False).reshape(rows, -1)
    x = activations(t, n, rng)
    mm = quant.matmul(w, qtype, (rows, n), x)
    scale = np.abs(quant.dequantize(w, qtype, (rows, n))).astype(np.float64) @ np.abs(x).T.astype(np.float64)
    for k in range(t):
        mv = quant.matvec(w, qtype, (rows, n), x[k])
        assert np.max(np.abs(mv - mm[k]) / (scale[:, k] + 1e-30)) < 1e-6


def panel_row(panel, qtype, c):
    """(quants i8[n] in element order, d f32[n/256], sub-block sums f32[n/256, S]) of
    activation row c, read back from a panel through the documented layout."""
    per = kquants_int8.INT8_KERNELS[qtype].sub_blocks
    records = panel.reshape(-1, tiles.activation_record(per))
    quants_end = tiles.TILE_COLS * 256
    lanes = records[:, 256 * c:256 * (c + 1)].view(np.int8).reshape(-1, 64, 4)
    if kquants_int8.INT8_KERNELS[qtype].offset:
        lanes = (lanes.view(np.uint8).astype(np.int16) - 128).astype(np.int8)
    natural = np.empty_like(lanes)
    natural[:, tiles.lane_order(per)] = lanes
    d = records[:, quants_end + 4 * c:quants_end + 4 * c + 4].copy().view(np.float32).ravel()
    sums_at = quants_end + 4 * tiles.TILE_COLS + 4 * per * c
    sums = records[:, sums_at:sums_at + 4 * per].copy().view(np.float32)
    return natural.reshape(-1), d, sums


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q6_K], ids=lambda t: t.name)  # both lane orders, both signs
def test_activation_panels_hold_llama_q8_k_quants(qtype):
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((7, 256)) * 10.0 ** rng.integers(-6, 4, (7, 1))).astype(np.float32)
    x[1] = 0.0                                          # zero block: d = 0
    x[2] = rng.integers(-6, 7, 256) + np.float32(0.5)   # ties at .5 once scaled by 1.0
    x[2, 7] = -127.0
    x[3, 5], x[3, 9] = 3.0, -3.0                        # equal magnitudes: the first sets the sign
    x[3, 10:] = 0.0
    x[4, 200], x[4, 201] = 1e4, -1e4                    # ... late in the block
    x[5, 63], x[5, 64] = -50.0, 50.0                    # ... across the 64-value chunks
    x[6, 100] = 1e-30                                   # a tiny maximum (huge inverse scale)
    x[6, :100] = x[6, 101:] = 0.0
    q = int(qtype)

    @njit
    def put(panel, c, row):
        tiles.put_activation_row(panel, c, row, q)

    per = kquants_int8.INT8_KERNELS[qtype].sub_blocks
    panel = np.zeros(7 * tiles.activation_record(per), np.uint8)
    c = tiles.TILE_COLS - 1
    put(panel, c, x.reshape(-1))
    quants, d, sums = panel_row(panel, qtype, c)
    d_ref, qs_ref, _ = quantize_q8_k_reference(x)
    assert np.array_equal(quants, qs_ref.reshape(-1))
    assert np.array_equal(d.view(np.uint32), d_ref.view(np.uint32))
    if not kquants_int8.INT8_KERNELS[qtype].offset:
        expected = d_ref[:, None] * qs_ref.reshape(7, per, -1).astype(np.int32).sum(axis=2).astype(np.float32)
        assert np.array_equal(sums, expected)


@pytest.mark.parametrize("flags", [dict(vnni=False, avx2=True), dict(vnni=False, avx2=False)],
                         ids=["avx2", "portable"])
def test_matmul_tiles_without_vnni_in_several_passes(flags, monkeypatch):
    """The byte dots without VNNI (AVX2 pmaddubsw, or plain vector IR) give the same products;
    with PASS_BYTES cut to two activation panels, t = 3 panels runs in two passes."""
    monkeypatch.setattr(kquants_int8, "X86_VNNI", flags["vnni"])
    monkeypatch.setattr(kquants_int8, "X86_AVX2", flags["avx2"])
    n = 512
    monkeypatch.setattr(tiles, "PASS_BYTES", 2 * (n // 256) * tiles.activation_record(16))
    rng = np.random.default_rng(700)
    body = njit(parallel=False)(tiles.matmul_int8_tiles.py_func)  # compiled after the patches
    for qtype in (T.Q4_K, T.Q6_K):  # real mins / offset settled in the weight panel
        q = int(qtype)

        @njit
        def matmul(out, w, x):
            body(out, w, x, q)

        check_against_oracle(matmul, qtype, tiles.TILE_ROWS + 1, n, (1, 3 * tiles.TILE_COLS), rng)
