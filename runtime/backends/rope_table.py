"""Rotary embedding angles, tabulated once per (positions, n_rot, base, scale).

Computed the way ggml does, in float32: theta starts at the position and is multiplied by
base^(-2/n_rot) once per pair (so round-off accumulates exactly as in llama.cpp), then scaled
by the linear position scale. Any backend can use the table; the CPU kernels index it by
position, so running never computes a sine.
"""
from __future__ import annotations

import numpy as np


def rope_cos_sin(n_pos: int, n_rot: int, base: float, freq_scale: float = 1.0,
                 freq_factors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of the angles: two f32 (n_pos, n_rot // 2) arrays, row p for position p.
    freq_factors (f32 (n_rot // 2,)): pair i's angle is divided by factor i first (ggml's
    rope_ext with frequency factors: Llama 3's rope scaling)."""
    if n_rot < 2 or n_rot % 2:
        raise ValueError(f"n_rot must be a positive even number, got {n_rot}")
    theta_scale = np.power(np.float32(base), np.float32(-2.0) / np.float32(n_rot), dtype=np.float32)
    theta = np.arange(n_pos, dtype=np.float32)
    angles = np.empty((n_pos, n_rot // 2), dtype=np.float32)
    for i in range(n_rot // 2):
        angles[:, i] = theta if freq_factors is None else theta / np.float32(freq_factors[i])
        theta = theta * theta_scale
    angles = (angles * np.float32(freq_scale)).astype(np.float64)  # exact: cos of the f32 angle
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
