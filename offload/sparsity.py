"""Per-layer FFN sparsity for a KL-divergence target, without training (CATS-style).

A neuron i of layer l is switched off for a token when |act(gate_i)| falls below the layer's
threshold t_l; the gate is computed in full, so it is an exact predictor of which up rows and
down columns a token needs. Thresholds come from calibration text:

- `ActivationSample` keeps, per layer, a random sample of the |act(gate)| values seen and each
  neuron's mean magnitude (its hotness, which orders the plan's bundles);
- a layer's threshold for a sparsity s is the s-quantile of its sample;
- layers differ in how much switching neurons off costs. If layer l alone at sparsity s costs
  KL ~ k_l s^2 (a small perturbation of the logits costs KL quadratically), then the most
  total sparsity for a KL budget K (sum of k_l s_l^2 <= K, the same bytes per neuron in every
  layer) is s_l proportional to 1 / k_l. `allocate` gives s_l = min(c / k_l, MAX_SPARSITY),
  and the caller finds the scale c by bisection on the measured KL of the whole model.
"""
from __future__ import annotations

import numpy as np

MAX_SPARSITY = 0.9
SAMPLE_PER_LAYER = 1 << 18   # |act| values kept per layer for its quantiles


class ActivationSample:
    """Per-layer |act(gate)| statistics, fed (T, n_ff) magnitudes layer by layer."""

    def __init__(self, n_layer: int, n_ff: int, seed: int = 0):
        self.n_layer, self.n_ff = n_layer, n_ff
        self._rng = np.random.default_rng(seed)
        self._parts: list[list[np.ndarray]] = [[] for _ in range(n_layer)]
        self._sum = np.zeros((n_layer, n_ff), dtype=np.float64)
        self.tokens = np.zeros(n_layer, dtype=np.int64)
        self._samples: list[np.ndarray] | None = None

    def add(self, layer: int, magnitudes: np.ndarray) -> None:
        """magnitudes: float32 (T, n_ff) |act(gate)| of T tokens at `layer`."""
        t = magnitudes.shape[0]
        self._sum[layer] += magnitudes.sum(axis=0, dtype=np.float64)
        self.tokens[layer] += t
        flat = magnitudes.reshape(-1)
        keep = min(flat.size, max(1, SAMPLE_PER_LAYER * t // 4096))   # ~SAMPLE_PER_LAYER per 4096 tokens
        self._parts[layer].append(flat[self._rng.choice(flat.size, keep, replace=False)].copy())
        self._samples = None

    @property
    def hotness(self) -> np.ndarray:
        """float64 (n_layer, n_ff): each neuron's mean |act(gate)| over the calibration tokens."""
        return self._sum / np.maximum(self.tokens, 1)[:, None]

    def samples(self) -> list[np.ndarray]:
        """Per layer, the sampled magnitudes sorted ascending."""
        if self._samples is None:
            if not all(self._parts):
                raise ValueError("calibration saw no tokens in some layer")
            self._samples = [np.sort(np.concatenate(p)) for p in self._parts]
        return self._samples

    def thresholds(self, sparsity: np.ndarray) -> np.ndarray:
        """float32 (n_layer,): layer l's |act| below which a fraction sparsity[l] of the
        calibration values fall (0 where sparsity is 0: nothing is switched off)."""
        out = np.zeros(self.n_layer, dtype=np.float32)
        for layer, (s, sample) in enumerate(zip(sparsity, self.samples())):
            if s > 0:
                out[layer] = np.quantile(sample, float(s))
        return out


def allocate(cost: np.ndarray, scale: float, probe: float) -> np.ndarray:
    """Sparsity per layer: min(scale / k_l, MAX_SPARSITY), where k_l = cost[l] / probe^2 is
    layer l's measured KL with only that layer at sparsity `probe`."""
    k = np.maximum(np.asarray(cost, dtype=np.float64), 1e-12) / probe ** 2
    return np.minimum(scale / k, MAX_SPARSITY)


def search_scale(measure, cost: np.ndarray, probe: float, target: float, steps: int = 10,
                 progress=lambda msg: None) -> tuple[np.ndarray, float]:
    """The allocation whose measured KL is the largest found at or below `target`.

    measure(sparsity (n_layer,)) -> KL of the whole model. Bisection on log(scale) between
    "nothing off" and "every layer at MAX_SPARSITY". Returns (sparsity, its KL); all zeros and
    0.0 when even the smallest tried scale misses the target."""
    k = np.maximum(np.asarray(cost, dtype=np.float64), 1e-12) / probe ** 2
    lo, hi = np.log(k.min() * 1e-4), np.log(k.max() * MAX_SPARSITY)
    best = (np.zeros_like(k), 0.0)
    for step in range(steps):
        mid = 0.5 * (lo + hi)
        sparsity = allocate(cost, float(np.exp(mid)), probe)
        kl = measure(sparsity)
        progress(f"step {step + 1}/{steps}: mean sparsity {sparsity.mean():.3f}, KL {kl:.4f}")
        if kl <= target:
            lo = mid
            if sparsity.mean() > best[0].mean():
                best = (sparsity, kl)
        else:
            hi = mid
    return best
