"""Quantization types: dequantize, quantize and dot products on quantized blocks.

    from lanternlm.quant import dequantize, quantize, matvec
    w = quantize(x, "Q4_K")                    # u8 (rows, bytes_per_row)
    y = dequantize(w, "Q4_K", x.shape)         # f32, same shape as x
    out = matvec(w, "Q4_K", x.shape, v)        # f32 (rows,), no full dequantization
"""
from __future__ import annotations

import numpy as np

from .registry import QTYPES, QuantType, get, register, register_quantizer
from . import floats, legacy, kquants, iquants, tquants, mxfp4, iquants_grid  # noqa: F401  (each registers its types)
from . import kquant_quantize  # noqa: F401  (attaches the K-quant quantizers)

__all__ = ["QTYPES", "QuantType", "get", "register", "dequantize", "quantize", "matvec", "matmul"]


def _as_rows(data: np.ndarray, qt: QuantType, shape) -> np.ndarray:
    """View raw bytes as (rows, row_bytes) for a tensor of numpy-order `shape`."""
    shape = tuple(int(s) for s in shape)
    n = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    need = rows * qt.row_bytes(n)
    if raw.size != need:
        raise ValueError(f"{qt.qtype.name} tensor {shape} needs {need} bytes, got {raw.size}")
    return raw.reshape(rows, qt.row_bytes(n))


def dequantize(data: np.ndarray, qtype, shape) -> np.ndarray:
    """Quantized bytes -> float32 array of numpy-order `shape`."""
    qt = get(qtype)
    rows = _as_rows(data, qt, shape)
    out = np.empty(rows.shape[0] * shape[-1], dtype=np.float32)
    qt.dequantize(out, rows.reshape(-1))
    return out.reshape(tuple(shape))


def quantize(x: np.ndarray, qtype) -> np.ndarray:
    """float array (..., n) -> uint8 (rows, bytes_per_row) in the type's block layout."""
    qt = get(qtype)
    if qt.quantize is None:
        raise ValueError(f"quantizing to {qt.qtype.name} is not supported")
    x = np.ascontiguousarray(x, dtype=np.float32)
    x2 = x.reshape(-1, x.shape[-1]) if x.ndim != 1 else x.reshape(1, -1)
    qt.row_bytes(x2.shape[1])  # validates the row length
    return qt.quantize(x2)


def matvec(w: np.ndarray, qtype, shape, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """W @ x for a quantized 2-D weight W of numpy shape (rows, n) and x f32 (n,)."""
    qt = get(qtype)
    rows = _as_rows(w, qt, shape)
    if out is None:
        out = np.empty(rows.shape[0], dtype=np.float32)
    qt.matvec(out, rows, np.ascontiguousarray(x, dtype=np.float32))
    return out


def matmul(w: np.ndarray, qtype, shape, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """x @ W.T for a quantized weight W (rows, n) and activations x f32 (t, n) -> (t, rows)."""
    qt = get(qtype)
    rows = _as_rows(w, qt, shape)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if out is None:
        out = np.empty((x.shape[0], rows.shape[0]), dtype=np.float32)
    qt.matmul(out, rows, x)
    return out
