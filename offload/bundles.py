"""Neuron bundles: up row i and down column i stored side by side, so one read brings both.

The up row is the model's own bytes (its type unchanged, so the sparse up product is the dense
one). The down column is a column of `ffn_down` (n_embd, n_ff), which in the model is spread
over n_embd rows; it is dequantized, transposed and requantized per neuron to Q8_0, whose
32-value blocks fit any n_embd that is a multiple of 32 (the requantization error is at most
half a Q8_0 step, max|block| / 254, per value).
"""
from __future__ import annotations

import numpy as np

from ..quant import QTYPES, dequantize, quantize
from .plan_file import DOWN_TYPE, bundle_bytes


def make_bundles(up_rows: np.ndarray, down: np.ndarray, order: np.ndarray) -> np.ndarray:
    """uint8 (n_ff, up bytes + down bytes): bundle j holds neuron order[j].

    up_rows: uint8 (n_ff, up row bytes), the model's ffn_up rows; down: float32 (n_embd, n_ff),
    the dequantized ffn_down; order: int (n_ff,) neuron indices, hottest first."""
    if down.shape[0] % QTYPES[DOWN_TYPE].block_size:
        raise ValueError(f"n_embd {down.shape[0]} is not a multiple of {DOWN_TYPE.name}'s "
                         f"{QTYPES[DOWN_TYPE].block_size}-value blocks")
    down_cols = quantize(np.ascontiguousarray(down.T[order]), DOWN_TYPE.name)   # (n_ff, down bytes)
    return np.ascontiguousarray(np.concatenate([up_rows[order], down_cols], axis=1))


def split_bundles(bundles: np.ndarray, up_type, n_embd: int) -> tuple[np.ndarray, np.ndarray]:
    """(up rows uint8 (n, up bytes), down columns uint8 (n, Q8_0 bytes)) views of bundles."""
    up_b, down_b = bundle_bytes(up_type, n_embd)
    if bundles.shape[-1] != up_b + down_b:
        raise ValueError(f"bundles of {bundles.shape[-1]} bytes, expected {up_b} + {down_b}")
    return bundles[..., :up_b], bundles[..., up_b:]


def unbundle(bundles: np.ndarray, up_type, n_embd: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 (up (n, n_embd), down columns (n, n_embd)) of bundles, dequantized."""
    up, down = split_bundles(bundles, up_type, n_embd)
    n = bundles.shape[0]
    return (dequantize(np.ascontiguousarray(up), up_type, (n, n_embd)),
            dequantize(np.ascontiguousarray(down), DOWN_TYPE, (n, n_embd)))
