"""GGML blocks -> float32 with torch ops, on whatever device the bytes are on.

The torch backend uses this to dequantize weights on the device: once at load (dense
weights), or at every matmul when the weights stay quantized in device memory. Each
decoder takes the raw blocks of one type as a uint8 tensor (n_blocks, type_size) and
returns float32 (n_blocks, block_size), working on all blocks at once: bytes are split into
fields by slicing, bit fields are pulled out with shifts and masks on int32, and the float
arithmetic is done in the order of quant/ (and gguf-py), one torch op per product or sum,
so the result is bit-identical to `lanternlm.quant.dequantize` (eager torch never fuses a
multiply-add). The block layouts themselves are documented in quant/legacy.py,
quant/kquants.py and quant/iquants.py.

`DEQUANTIZERS` maps each supported GGMLQuantizationType to its decoder; `dequantize_rows`
is the entry point for a (rows, row_bytes) weight.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from ...quant.iquants import KVALUES

Decoder = Callable[[torch.Tensor], torch.Tensor]


# ---- field readers: blocks is u8 (n, type_size); each returns a per-block column or matrix -----

def _half(blocks: torch.Tensor, at: int) -> torch.Tensor:
    """The f16 at byte `at` of every block, exactly widened: f32 (n, 1)."""
    return blocks[:, at:at + 2].contiguous().view(torch.float16).float()


def _ints(blocks: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Bytes start..stop-1 of every block as int32 (n, stop - start)."""
    return blocks[:, start:stop].to(torch.int32)


def _u32(blocks: torch.Tensor, at: int) -> torch.Tensor:
    """The little-endian uint32 at byte `at` of every block, as int64 (n, 1)."""
    b = blocks[:, at:at + 4].to(torch.int64)
    return b[:, 0:1] | (b[:, 1:2] << 8) | (b[:, 2:3] << 16) | (b[:, 3:4] << 24)


def _bits(word: torch.Tensor, count: int, width: int = 1) -> torch.Tensor:
    """Fields k = 0..count-1 of `width` bits each, from the low end of every entry of `word`
    (..., m): (..., count, m), field k at index k."""
    shifts = torch.arange(0, count * width, width, device=word.device, dtype=word.dtype)
    return (word.unsqueeze(-2) >> shifts.view(-1, 1)) & ((1 << width) - 1)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """Low nibbles then high nibbles of the last axis: (..., m) -> (..., 2m). In the 32-weight
    groups of the legacy and IQ4 types, byte j holds element j (low) and j + 16 (high)."""
    return torch.cat((qs & 0xF, qs >> 4), dim=-1)


# ---- legacy types: 32 weights per block ---------------------------------------------------

def _q4_0(b):
    return _half(b, 0) * (_nibbles(_ints(b, 2, 18)) - 8).float()


def _q4_1(b):
    return _half(b, 0) * _nibbles(_ints(b, 4, 20)).float() + _half(b, 2)


def _five_bit(b, qh_at: int, qs_at: int) -> torch.Tensor:
    """q (n, 32) of a 5-bit block: nibbles of qs, bit 4 of element j = bit j of qh."""
    high = _bits(_u32(b, qh_at), 32).squeeze(-1).to(torch.int32)  # (n, 32)
    return _nibbles(_ints(b, qs_at, qs_at + 16)) | (high << 4)


def _q5_0(b):
    return _half(b, 0) * (_five_bit(b, 2, 6) - 16).float()


def _q5_1(b):
    return _half(b, 0) * _five_bit(b, 4, 8).float() + _half(b, 2)


def _q8_0(b):
    return _half(b, 0) * b[:, 2:34].view(torch.int8).float()


# ---- K-quants: 256 weights per super-block ------------------------------------------------

def _sub_scaled(dl: torch.Tensor, q: torch.Tensor, ml: torch.Tensor | None = None) -> torch.Tensor:
    """dl[s] * q[s, :] (- ml[s]) per sub-block s: dl, ml f32 (n, S); q (n, S, m) -> (n, S*m)."""
    out = dl.unsqueeze(-1) * q.float()
    if ml is not None:
        out = out - ml.unsqueeze(-1)
    return out.reshape(out.shape[0], -1)


def _two_bit_planes(qs: torch.Tensor) -> torch.Tensor:
    """Q2_K/Q3_K low bits: qs (n, 64) -> q (n, 256) with e = 128h + 32j + l taking bits
    2j..2j+1 of qs[32h + l]."""
    return _bits(qs.view(-1, 2, 32), 4, 2).reshape(qs.shape[0], 256)


def _q2_k(b):
    sc = _ints(b, 0, 16)
    d, dmin = _half(b, 80), _half(b, 82)
    q = _two_bit_planes(_ints(b, 16, 80)).view(-1, 16, 16)
    return _sub_scaled(d * (sc & 0xF).float(), q, dmin * (sc >> 4).float())


def _q3_k(b):
    packed = _ints(b, 96, 108)
    low = torch.cat((packed[:, 0:8] & 0xF, packed[:, 0:8] >> 4), dim=1)   # scale s: low 4 bits
    high = _bits(packed[:, 8:12], 4, 2).reshape(-1, 16)                   # bits 2(s//4) of byte 8 + s%4
    scale = (low | (high << 4)) - 32
    hbit = _bits(_ints(b, 0, 32), 8).reshape(-1, 256)                     # bit e//32 of hmask[e%32]
    q = _two_bit_planes(_ints(b, 32, 96)) - 4 * (1 - hbit)
    return _sub_scaled(_half(b, 108) * scale.float(), q.view(-1, 16, 16))


def _scale_min_k4(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 six-bit (scale, min) pairs of Q4_K/Q5_K from their 12 packed bytes (n, 12)."""
    lo_sc, lo_m, tail = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    sc = torch.cat((lo_sc & 63, (tail & 0xF) | ((lo_sc >> 6) << 4)), dim=1)
    m = torch.cat((lo_m & 63, (tail >> 4) | ((lo_m >> 6) << 4)), dim=1)
    return sc, m


def _q4_k(b):
    sc, m = _scale_min_k4(_ints(b, 4, 16))
    qs = _ints(b, 16, 144).view(-1, 4, 1, 32)
    q = torch.cat((qs & 0xF, qs >> 4), dim=2).view(-1, 8, 32)            # sub-block 2c + h
    return _sub_scaled(_half(b, 0) * sc.float(), q, _half(b, 2) * m.float())


def _q5_k(b):
    sc, m = _scale_min_k4(_ints(b, 4, 16))
    qs = _ints(b, 48, 176).view(-1, 4, 1, 32)
    q = torch.cat((qs & 0xF, qs >> 4), dim=2).view(-1, 8, 32)
    q = q | (_bits(_ints(b, 16, 48), 8) << 4)                              # bit s of qh[l]
    return _sub_scaled(_half(b, 0) * sc.float(), q, _half(b, 2) * m.float())


def _q6_k(b):
    ql = _ints(b, 0, 128).view(-1, 2, 1, 64)
    low = torch.cat((ql & 0xF, ql >> 4), dim=2).view(-1, 2, 128)          # nibble r//64 of ql[64h + r%64]
    high = _bits(_ints(b, 128, 192).view(-1, 2, 32), 4, 2).view(-1, 2, 128)  # bits 2(r//32) of qh[32h + r%32]
    q = ((low | (high << 4)) - 32).view(-1, 16, 16)
    scale = b[:, 192:208].view(torch.int8).float()
    return _sub_scaled(_half(b, 208) * scale, q)


# ---- IQ4: 4-bit indices into a non-uniform table ------------------------------------------

@functools.lru_cache(maxsize=None)
def _table(device: torch.device) -> torch.Tensor:
    return torch.as_tensor(KVALUES, dtype=torch.float32, device=device)


def _iq4_nl(b):
    return _half(b, 0) * _table(b.device)[_nibbles(_ints(b, 2, 18)).long()]


def _iq4_xs(b):
    low = _bits(_ints(b, 4, 8), 2, 4).transpose(1, 2).reshape(-1, 8)      # nibble g%2 of scales_l[g//2]
    scales_h = _ints(b, 2, 3) | (_ints(b, 3, 4) << 8)
    high = _bits(scales_h, 8, 2).reshape(-1, 8)                            # bits 2g of scales_h
    dl = _half(b, 0) * ((low | (high << 4)) - 32).float()
    q = _nibbles(_ints(b, 8, 136).view(-1, 8, 16)).long()                  # (n, 8, 32)
    return _sub_scaled(dl, _table(b.device)[q])


# ---- plain floats -------------------------------------------------------------------------

def _as_float(dtype: torch.dtype) -> Decoder:
    return lambda b: b.contiguous().view(dtype).float()


DEQUANTIZERS: dict[T, Decoder] = {
    T.F32: _as_float(torch.float32), T.F16: _as_float(torch.float16), T.BF16: _as_float(torch.bfloat16),
    T.Q4_0: _q4_0, T.Q4_1: _q4_1, T.Q5_0: _q5_0, T.Q5_1: _q5_1, T.Q8_0: _q8_0,
    T.Q2_K: _q2_k, T.Q3_K: _q3_k, T.Q4_K: _q4_k, T.Q5_K: _q5_k, T.Q6_K: _q6_k,
    T.IQ4_NL: _iq4_nl, T.IQ4_XS: _iq4_xs,
}

FLOAT_TYPES = frozenset({T.F32, T.F16, T.BF16})


def dequantize_rows(raw: torch.Tensor, qtype: T, n: int) -> torch.Tensor:
    """raw: u8 (rows, row_bytes), rows of `n` weights of type `qtype` -> f32 (rows, n) on
    raw's device."""
    decoder = DEQUANTIZERS.get(qtype)
    if decoder is None:
        raise ValueError(f"no torch dequantizer for {qtype.name}; supported: "
                         f"{', '.join(t.name for t in DEQUANTIZERS)}")
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if n % block_size or raw.shape[-1] != n // block_size * type_size:
        raise ValueError(f"{qtype.name}: rows of {raw.shape[-1]} bytes do not hold {n} weights")
    rows = raw.shape[0]
    return decoder(raw.reshape(-1, type_size)).reshape(rows, n)
