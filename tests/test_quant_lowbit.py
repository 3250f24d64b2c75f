"""The low-bit types without quantizers (TQ1_0, TQ2_0, MXFP4, the IQ1/IQ2/IQ3 grid types):
dequantize bit-exact vs gguf-py on random valid blocks, matvec / matmul against the naive
dequantize(W) @ x in float64, and matmul rows bit-identical to matvec where batch-invariant.

`random_blocks` (also used by test_quant_batch_invariance.py) makes arbitrary block bytes with
every scale field replaced by a modest finite value, so no NaN or inf can appear."""
import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from lanternlm import quant

TYPES = [T.TQ1_0, T.TQ2_0, T.MXFP4, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S,
         T.IQ1_S, T.IQ1_M]


def _f16_scales(rng, n_blocks):
    """Finite half scales in [0.001, 0.1], random sign, as (n_blocks, 2) little-endian bytes."""
    d = rng.uniform(0.001, 0.1, n_blocks) * rng.choice([-1.0, 1.0], n_blocks)
    return d.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)


def _f16_at(offset):
    """Generator for layouts with one f16 scale at `offset` (negative: from the block's end)."""
    def fix(b, rng):
        o = offset % b.shape[1]
        b[:, o:o + 2] = _f16_scales(rng, b.shape[0])
    return fix


def _e8m0_exponent(b, rng):
    """MXFP4's shared exponent byte: d = 2**(e - 128) in [2**-10, 2**-3]."""
    b[:, 0] = rng.integers(118, 126, b.shape[0])


def _iq1_m_scale(b, rng):
    """IQ1_M's d: its 16 bits are the top nibbles of the block's last four u16 (lowest first)."""
    d = _f16_scales(rng, b.shape[0]).view(np.uint16).reshape(-1, 1).astype(np.uint16)
    top = (d >> np.array([0, 4, 8, 12], dtype=np.uint16)) & 0xF      # nibble i of d
    scales = b[:, -8:].copy().view(np.uint16)
    scales = (scales & 0x0FFF) | (top << 12).astype(np.uint16)
    b[:, -8:] = scales.view(np.uint8)


# type -> fix(blocks u8[n_blocks, type_size], rng): overwrite the scale fields in place
SCALE_FIELDS = {
    T.TQ1_0: _f16_at(-2),
    T.TQ2_0: _f16_at(-2),
    T.MXFP4: _e8m0_exponent,
    T.IQ2_XXS: _f16_at(0),
    T.IQ2_XS: _f16_at(0),
    T.IQ2_S: _f16_at(0),
    T.IQ3_XXS: _f16_at(0),
    T.IQ3_S: _f16_at(0),
    T.IQ1_S: _f16_at(0),
    T.IQ1_M: _iq1_m_scale,
}


def random_blocks(qtype, rows, n, rng):
    """u8 (rows, row_bytes): random block bytes of `qtype` for a (rows, n) weight, valid scales."""
    qt = quant.get(qtype)
    n_blocks = rows * n // qt.block_size
    b = rng.integers(0, 256, (n_blocks, qt.type_size), dtype=np.uint8)
    SCALE_FIELDS[qt.qtype](b, rng)
    return b.reshape(rows, qt.row_bytes(n))


def naive_matmul(w_deq, x):
    """The kernels' naive twin: dequantize(W) @ x in float64, and sum |w| |x| for the tolerance."""
    ref = x.astype(np.float64) @ w_deq.astype(np.float64).T
    scale = np.abs(x).astype(np.float64) @ np.abs(w_deq).astype(np.float64).T
    return ref, scale


ids = [t.name for t in TYPES]


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_every_type_has_a_scale_generator_and_is_registered(qtype):
    assert qtype in SCALE_FIELDS and quant.QTYPES[qtype].quantize is None


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_dequantize_bit_exact(qtype):
    rng = np.random.default_rng(3)
    block = quant.get(qtype).block_size
    b = random_blocks(qtype, 5, 60 * block, rng)
    got = quant.dequantize(b, qtype, (5, 60 * block))
    want = gguf.quants.dequantize(b, qtype).reshape(got.shape)
    assert np.isfinite(want).all()
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_mxfp4_every_exponent_bit_exact():
    # every E8M0 byte, subnormal (e < 2) and overflowing (e = 255 -> inf) scales included
    b = np.random.default_rng(4).integers(0, 256, (256, quant.get(T.MXFP4).type_size), dtype=np.uint8)
    b[:, 0] = np.arange(256)
    got = quant.dequantize(b, T.MXFP4, (256 * quant.get(T.MXFP4).block_size,))
    with np.errstate(over="ignore"):
        want = gguf.quants.dequantize(b, T.MXFP4).reshape(-1)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_dequantize_rejects_wrong_byte_count(qtype):
    qt = quant.get(qtype)
    with pytest.raises(ValueError):
        quant.dequantize(np.zeros(qt.type_size * 2 + 1, np.uint8), qtype, (2 * qt.block_size,))
    with pytest.raises(ValueError):
        qt.dequantize(np.empty(3 * qt.block_size, np.float32), np.zeros(2 * qt.type_size, np.uint8))


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
@pytest.mark.parametrize("rows, blocks, t", [(1, 1, 1), (37, 3, 3), (70, 8, 8)])
def test_matvec_and_matmul_match_dequantize_then_dot(qtype, rows, blocks, t):
    rng = np.random.default_rng(rows + t)
    n = blocks * quant.get(qtype).block_size
    b = random_blocks(qtype, rows, n, rng)
    w = gguf.quants.dequantize(b, qtype).reshape(rows, n)
    x = rng.standard_normal((t, n)).astype(np.float32)
    ref, scale = naive_matmul(w, x)
    got = quant.matmul(b, qtype, (rows, n), x)
    assert got.shape == (t, rows)
    np.testing.assert_array_less(np.abs(got - ref), 1e-5 * scale + 1e-30)
    for i in range(t):
        one = quant.matvec(b, qtype, (rows, n), x[i])
        np.testing.assert_array_less(np.abs(one - ref[i]), 1e-5 * scale[i] + 1e-30)
        if quant.QTYPES[qtype].batch_invariant:
            np.testing.assert_array_equal(got[i], one)


@pytest.mark.parametrize("qtype", TYPES + [T.IQ4_NL, T.IQ4_XS], ids=ids + ["IQ4_NL", "IQ4_XS"])
def test_matvec_rejects_mismatched_shapes(qtype):
    qt = quant.get(qtype)
    n = qt.block_size * 2
    w = np.zeros((3, qt.row_bytes(n)), np.uint8)
    with pytest.raises(ValueError):
        qt.matvec(np.empty(3, np.float32), w, np.zeros(n + qt.block_size, np.float32))
    with pytest.raises(ValueError):
        qt.matvec(np.empty(4, np.float32), w, np.zeros(n, np.float32))
    with pytest.raises(ValueError):
        qt.matmul(np.empty((2, 3), np.float32), w, np.zeros((3, n), np.float32))
