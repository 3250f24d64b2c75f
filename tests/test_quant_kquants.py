"""K-quant kernels (Q2_K..Q6_K, Q8_K) against independent oracles.

dequantize: bit-identical to gguf-py's numpy reference (`gguf.quants.dequantize`) on seeded
random blocks and on real Gemma3 tensors; Q8_K, which gguf-py does not decode, against a
numpy structured-dtype reading of its layout; the Q8_K quantizer against a numpy transcription
of llama.cpp's reference rounding. matvec / matmul (int8 activations) against the float64
product of the dequantized weights and the dequantized Q8_K activations, and their float
twins against the plain product, within tolerances relative to |W| |x|.
"""
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, GGUFReader
from gguf.quants import dequantize as gguf_dequantize

from numba import njit

from lanternlm import quant
from lanternlm.quant import kquants, kquants_dot, kquants_int8

K_TYPES = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
# byte offsets of the f16 super-block scales (d, dmin) inside each block
F16_FIELDS = {T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}
Q8_K_BLOCK = np.dtype([("d", "<f4"), ("qs", "i1", 256), ("bsums", "<i2", 16)])


def random_blocks(qtype, n_blocks, rng, extremes=True):
    """Random quant bytes with finite f16 scales: from subnormals to large values (extremes=True,
    for bit-exact decoding) or of the size real weights have (extremes=False, for dot products)."""
    blocks = rng.integers(0, 256, size=(n_blocks, GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        if extremes:
            magnitude = rng.choice([0.0, 1e-7, 1e-5, 1e-3, 0.1, 1.0, 300.0], size=n_blocks)
            halves = (rng.standard_normal(n_blocks) * magnitude).astype(np.float16)
            halves[:4] = np.array([0.0, -0.0, 6.0e-8, -65504.0], dtype=np.float16)[:n_blocks]
        else:
            halves = rng.uniform(1e-4, 1e-2, n_blocks).astype(np.float16)
        blocks[:, off:off + 2] = halves.view(np.uint8).reshape(n_blocks, 2)
    return blocks


def same_bits(a, b):
    return np.array_equal(np.asarray(a, np.float32).view(np.uint32), np.asarray(b, np.float32).view(np.uint32))


@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_dequantize_random_blocks_bit_exact_with_gguf(qtype):
    rng = np.random.default_rng(int(qtype))
    blocks = random_blocks(qtype, 300, rng)
    expected = gguf_dequantize(blocks, qtype).reshape(-1)
    got = quant.dequantize(blocks, qtype, (300 * 256,))
    assert same_bits(got, expected)


def test_dequantize_q8_k_matches_its_layout():
    rng = np.random.default_rng(15)
    blocks = np.zeros(40, dtype=Q8_K_BLOCK)
    blocks["d"] = rng.standard_normal(40).astype(np.float32) * 10.0 ** rng.integers(-8, 3, 40)
    blocks["qs"] = rng.integers(-128, 128, size=(40, 256))
    blocks["bsums"] = rng.integers(-4000, 4000, size=(40, 16))
    expected = blocks["d"][:, None] * blocks["qs"].astype(np.float32)
    got = quant.dequantize(blocks.view(np.uint8), T.Q8_K, (40, 256))
    assert same_bits(got, expected)


@pytest.fixture(scope="module")
def gemma_k_tensors(gemma3_path):
    """The two smallest Q4_K and Q6_K weight matrices of Gemma3-270m (name, type, rows, bytes)."""
    reader = GGUFReader(gemma3_path)
    picked = []
    for qtype in (T.Q4_K, T.Q6_K):
        found = sorted((t for t in reader.tensors if t.tensor_type == qtype), key=lambda t: t.n_bytes)
        picked += [(t.name, qtype, np.asarray(t.data)) for t in found[:2]]
    assert {q for _, q, _ in picked} == {T.Q4_K, T.Q6_K}
    return picked


def test_dequantize_gemma_tensors_bit_exact_with_gguf(gemma_k_tensors):
    for name, qtype, data in gemma_k_tensors:
        rows = data.shape[0]
        n = data.shape[1] // GGML_QUANT_SIZES[qtype][1] * 256
        expected = gguf_dequantize(data, qtype)
        got = quant.dequantize(data, qtype, (rows, n))
        assert same_bits(got, expected), name


def relative_error(got, expected, magnitude):
    return float(np.max(np.abs(got - expected) / magnitude))


def q8_k_weights(rows, n, rng):
    blocks = np.zeros(rows * n // 256, dtype=Q8_K_BLOCK)
    blocks["d"] = rng.uniform(0.001, 0.01, blocks.size)
    blocks["qs"] = rng.integers(-128, 128, size=(blocks.size, 256))
    return blocks.view(np.uint8).reshape(rows, -1)


def weights_and_reference(qtype, rows, n, rng):
    """Random weights u8[rows, row_bytes] and their float64 dequantization."""
    if qtype == T.Q8_K:
        w = q8_k_weights(rows, n, rng)
    else:
        w = random_blocks(qtype, rows * n // 256, rng, extremes=False).reshape(rows, -1)
    return w, quant.dequantize(w, qtype, (rows, n)).astype(np.float64)


def quantize_q8_k_reference(x):
    """llama.cpp's quantize_row_q8_K_ref in numpy: f32 (blocks, 256) -> (d, qs, bsums)."""
    x = x.astype(np.float32)
    first_max = np.argmax(np.abs(x), axis=1)  # the first of equal magnitudes, as the C loop keeps
    vmax = x[np.arange(len(x)), first_max]
    zero = vmax == 0
    iscale = np.where(zero, np.float32(1), np.float32(-127.0) / np.where(zero, np.float32(1), vmax))
    qs = np.minimum(127, np.rint(iscale[:, None] * x)).astype(np.int8)  # rint: half to even
    qs[zero] = 0
    d = np.where(zero, np.float32(0), np.float32(1) / iscale).astype(np.float32)
    bsums = qs.reshape(len(x), 16, 16).astype(np.int32).sum(axis=2).astype(np.int16)
    return d, qs, bsums


def test_quantize_q8_k_matches_llama_reference():
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((6, 256)) * 10.0 ** rng.integers(-6, 4, (6, 1))).astype(np.float32)
    x[1] = 0.0  # all-zero block: d = 0, zero quants
    x[2] = rng.integers(-6, 7, 256) + np.float32(0.5)  # ties at .5 once scaled by 1.0:
    x[2, 7] = -127.0                                    # the max maps to -127, iscale = 1
    x[3, 5], x[3, 9] = 3.0, -3.0  # equal magnitudes: the first one sets the sign
    x[3, 10:] = 0.0
    got = np.frombuffer(quant.quantize(x.reshape(-1), T.Q8_K).tobytes(), dtype=Q8_K_BLOCK)
    d, qs, bsums = quantize_q8_k_reference(x)
    assert same_bits(got["d"], d)
    assert np.array_equal(got["qs"], qs)
    assert np.array_equal(got["bsums"], bsums)
    assert np.abs(quant.dequantize(got.view(np.uint8), T.Q8_K, x.shape) - x).max() <= np.abs(x).max() / 254 * 1.0001


def q8_k_activations(x):
    """x f32 (t, n) as the int8 kernels see it: dequantize(quantize_q8_k(x)), float64."""
    return quant.dequantize(quant.quantize(x, T.Q8_K), T.Q8_K, x.shape).astype(np.float64)


@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_registered_int8_kernels_are_exact_on_quantized_activations(qtype):
    """matvec/matmul = dequantize(W) @ dequantize(Q8_K(x)) up to float32 summation."""
    rng = np.random.default_rng(100 + int(qtype))
    rows, n = 37, 768
    w, wf = weights_and_reference(qtype, rows, n, rng)
    x = rng.standard_normal((5, n)).astype(np.float32)
    xq = q8_k_activations(x)
    mv = quant.matvec(w, qtype, (rows, n), x[0])
    assert relative_error(mv, wf @ xq[0], np.abs(wf) @ np.abs(xq[0])) < 1e-6
    for t in (1, 5):
        mm = quant.matmul(w, qtype, (rows, n), x[:t])
        assert mm.shape == (t, rows)
        assert relative_error(mm, xq[:t] @ wf.T, np.abs(xq[:t]) @ np.abs(wf).T) < 1e-6
    # and the activation rounding keeps them close to the float product
    assert relative_error(mv, wf @ x[0], np.abs(wf) @ np.abs(x[0])) < 3e-3


@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_int8_row_dot_without_x86_instructions(qtype, monkeypatch):
    """The portable vector IR (used where AVX2 is absent) computes the same row dots.
    (The matmul's register tiles get the same check in test_quant_kquants_int8.py.)"""
    monkeypatch.setattr(kquants_int8, "X86_AVX2", False)
    q = int(qtype)

    @njit  # compiled here, after the patch, so the intrinsic emits the portable form
    def products(out, w, xq, bsums, xd):
        for r in range(w.shape[0]):
            out[r] = kquants_int8.row_dot(w[r], xq, bsums, xd, q)

    rng = np.random.default_rng(300 + int(qtype))
    rows, n = 9, 512
    w, wf = weights_and_reference(qtype, rows, n, rng)
    x = rng.standard_normal((1, n)).astype(np.float32)
    parts = np.frombuffer(quant.quantize(x, T.Q8_K).tobytes(), dtype=Q8_K_BLOCK)
    out = np.zeros(rows, np.float32)
    products(out, w, parts["qs"].reshape(n).copy(), parts["bsums"].reshape(-1).copy(), parts["d"].copy())
    xq = q8_k_activations(x)
    assert relative_error(out, wf @ xq[0], np.abs(wf) @ np.abs(xq[0])) < 1e-6


FLOAT_MATVECS = {t: getattr(kquants_dot, f"matvec_{t.name.lower()}") for t in K_TYPES + [T.Q8_K]}


@pytest.mark.parametrize("qtype", list(FLOAT_MATVECS), ids=lambda t: t.name)
def test_float_matvec_twins_match_dequantized_product(qtype):
    rng = np.random.default_rng(200 + int(qtype))
    rows, n = 37, 768
    w, wf = weights_and_reference(qtype, rows, n, rng)
    x = rng.standard_normal(n).astype(np.float32)
    out = np.empty(rows, np.float32)
    FLOAT_MATVECS[qtype](out, w, x)
    assert relative_error(out, wf @ x, np.abs(wf) @ np.abs(x)) < 1e-5


@pytest.mark.parametrize("t", [1, 5])
def test_q8_k_weight_matmul_matches_dequantized_product(t):
    rng = np.random.default_rng(400 + t)
    rows, n = 13, 512
    w, wf = weights_and_reference(T.Q8_K, rows, n, rng)
    x = rng.standard_normal((t, n)).astype(np.float32)
    got = quant.matmul(w, T.Q8_K, (rows, n), x)
    assert relative_error(got, x @ wf.T, np.abs(x) @ np.abs(wf).T) < 1e-5


def test_matvec_and_matmul_on_gemma_tensors(gemma_k_tensors):
    rng = np.random.default_rng(7)
    for name, qtype, data in gemma_k_tensors[::2]:  # one Q4_K, one Q6_K
        rows = data.shape[0]
        n = data.shape[1] // GGML_QUANT_SIZES[qtype][1] * 256
        wf = gguf_dequantize(data, qtype).astype(np.float64)
        x = rng.standard_normal((3, n)).astype(np.float32)
        xq = q8_k_activations(x)
        mv = quant.matvec(data, qtype, (rows, n), x[0])
        assert relative_error(mv, wf @ xq[0], np.abs(wf) @ np.abs(xq[0])) < 1e-6, name
        mm = quant.matmul(data, qtype, (rows, n), x)
        assert relative_error(mm, xq @ wf.T, np.abs(xq) @ np.abs(wf).T) < 1e-6, name
        twin = np.empty(rows, np.float32)
        FLOAT_MATVECS[qtype](twin, data, x[0])
        assert relative_error(twin, wf @ x[0], np.abs(wf) @ np.abs(x[0])) < 1e-5, name


def test_registry_sizes_and_kernels():
    for qtype in K_TYPES + [T.Q8_K]:
        qt = quant.get(qtype)
        assert (qt.block_size, qt.type_size) == GGML_QUANT_SIZES[qtype]
        assert qt.row_bytes(512) == 2 * GGML_QUANT_SIZES[qtype][1]
    assert quant.get(T.Q4_K).matvec is kquants_int8.matvec_int8_q4_k


def test_kernels_reject_mismatched_shapes():
    w = np.zeros((4, 2 * 144), dtype=np.uint8)  # Q4_K, n = 512
    with pytest.raises(ValueError, match="activation length"):
        kquants_dot.matvec_q4_k(np.empty(4, np.float32), w, np.zeros(256, np.float32))
    with pytest.raises(ValueError, match="multiple of 256"):
        kquants_dot.matvec_q4_k(np.empty(4, np.float32), w, np.zeros(500, np.float32))
    with pytest.raises(ValueError, match="output length"):
        kquants_dot.matvec_q4_k(np.empty(3, np.float32), w, np.zeros(512, np.float32))
    with pytest.raises(ValueError, match="activation length"):
        kquants_int8.matvec_int8_q4_k(np.empty(4, np.float32), w, np.zeros(256, np.float32))
    with pytest.raises(ValueError, match="output rows"):
        kquants_int8.matmul_int8_q4_k(np.empty((3, 4), np.float32), w, np.zeros((2, 512), np.float32))
    with pytest.raises(ValueError, match="do not match"):
        kquants.dequantize_q4_k(np.empty(256, np.float32), np.zeros(143, np.uint8))
    with pytest.raises(ValueError, match="multiple of 256"):
        kquants.quantize_q8_k_parts(np.empty(1, np.float32), np.empty(300, np.int8),
                                    np.empty(16, np.int16), np.zeros(300, np.float32))
    with pytest.raises(ValueError, match="needs 288 bytes"):
        quant.dequantize(np.zeros(287, np.uint8), T.Q4_K, (512,))
