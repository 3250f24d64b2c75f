"""Rotary embedding angles, tabulated once per (positions, n_rot, base, scale, factors, YaRN).

Computed the way ggml does, in float32: theta starts at the position and is multiplied by
base^(-2/n_rot) once per pair (so round-off accumulates exactly as in llama.cpp), divided by
the pair's frequency factor where the model has them (Llama 3), then scaled by the linear
position scale. With YaRN (ggml's rope_yarn) each pair's angle blends the scaled
("interpolated") and unscaled ("extrapolated") angle by a ramp over the pairs between the
correction dimensions of beta_fast and beta_slow, and cos and sin are multiplied by mscale =
attn_factor * (1 + 0.1 ln(1 / scale)). Any backend can use the table; the CPU kernels index it
by position, so running never computes a sine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Yarn:
    """YaRN's settings (llama.cpp's --yarn-* and the rope.scaling.yarn_* keys); ext_factor 0:
    plain (linear) scaling."""
    ext_factor: float = 0.0
    attn_factor: float = 1.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    n_ctx_orig: int = 0

    def mscale(self, freq_scale: float) -> float:
        """What cos and sin are multiplied by."""
        if self.ext_factor == 0.0:
            return self.attn_factor
        return float(np.float32(self.attn_factor) * (np.float32(1.0) + np.float32(0.1) * np.float32(math.log(1.0 / freq_scale))))

    def corr_dims(self, n_rot: int, base: float) -> tuple[float, float]:
        """The first and last rotated dimension of the ramp (ggml_rope_yarn_corr_dims)."""
        def dim(rotations):
            return n_rot * math.log(self.n_ctx_orig / (rotations * 2 * math.pi)) / (2 * math.log(base))
        return max(0.0, math.floor(dim(self.beta_fast))), min(n_rot - 1.0, math.ceil(dim(self.beta_slow)))


NO_YARN = Yarn()


def rope_cos_sin(n_pos: int, n_rot: int, base: float, freq_scale: float = 1.0,
                 freq_factors: np.ndarray | None = None, yarn: Yarn = NO_YARN) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of the angles: two f32 (n_pos, n_rot // 2) arrays, row p for position p.
    freq_factors (f32 (n_rot // 2,)): pair i's angle is divided by factor i first (ggml's
    rope_ext with frequency factors: Llama 3's rope scaling)."""
    if n_rot < 2 or n_rot % 2:
        raise ValueError(f"n_rot must be a positive even number, got {n_rot}")
    theta_scale = np.power(np.float32(base), np.float32(-2.0) / np.float32(n_rot), dtype=np.float32)
    theta = np.arange(n_pos, dtype=np.float32)
    extrapolated = np.empty((n_pos, n_rot // 2), dtype=np.float32)
    for i in range(n_rot // 2):
        extrapolated[:, i] = theta if freq_factors is None else theta / np.float32(freq_factors[i])
        theta = theta * theta_scale
    angles = extrapolated * np.float32(freq_scale)
    if yarn.ext_factor != 0.0:
        low, high = yarn.corr_dims(n_rot, base)
        y = (np.arange(n_rot // 2, dtype=np.float32) - np.float32(low)) / np.float32(max(0.001, high - low))
        mix = (np.float32(1.0) - np.clip(y, 0.0, 1.0)).astype(np.float32) * np.float32(yarn.ext_factor)
        angles = angles * (np.float32(1.0) - mix) + extrapolated * mix
    mscale = np.float32(yarn.mscale(freq_scale))
    angles = angles.astype(np.float64)  # exact: cos of the f32 angle
    return ((np.cos(angles) * mscale).astype(np.float32), (np.sin(angles) * mscale).astype(np.float32))
