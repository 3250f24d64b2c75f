"""The Python side every quantizer shares: input checks and output allocation.

A family module supplies a Numba row kernel `rows_kernel(out u8[rows, row_bytes],
x f32[rows, n])`; `row_quantizer` wraps it into the registry's
`quantize(x f32[rows, n]) -> u8[rows, row_bytes]`.
"""
from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType


def checked_rows(x: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """x as contiguous f32[rows, n], or a ValueError naming what is wrong with it."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{qtype.name} quantizer expects a 2-D (rows, n) array, got shape {x.shape}")
    block = GGML_QUANT_SIZES[qtype][0]
    if x.shape[1] % block:
        raise ValueError(f"{qtype.name}: row length {x.shape[1]} is not a multiple of {block}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{qtype.name}: cannot quantize non-finite values (NaN or inf)")
    return x


def row_quantizer(qtype: GGMLQuantizationType, rows_kernel, oracle: str):
    """quantize(x f32[rows, n]) -> u8[rows, n // block * type_size] running `rows_kernel`."""
    block, type_size = GGML_QUANT_SIZES[qtype]

    def quantize(x: np.ndarray) -> np.ndarray:
        x = checked_rows(x, qtype)
        out = np.zeros((x.shape[0], x.shape[1] // block * type_size), dtype=np.uint8)
        if x.size:
            rows_kernel(out, x)
        return out

    quantize.__name__ = quantize.__qualname__ = f"quantize_{qtype.name.lower()}"
    quantize.__doc__ = (f"f32[rows, n] -> u8[rows, n // {block} * {type_size}] {qtype.name} blocks, "
                        f"byte-identical to {oracle}.")
    return quantize
