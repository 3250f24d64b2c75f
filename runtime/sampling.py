"""Token sampling: composable logit transforms and a `make_sampler` that chains them.

`make_sampler(...)` returns a callable `sampler(logits, history) -> token id`. The chain runs in
llama.cpp's default order, so the same parameters mean the same thing in both programs:

    logit bias -> penalties (repeat, presence, frequency) -> top-k -> top-p -> min-p
    -> temperature -> draw from the softmax (seeded numpy Generator)

Top-p and min-p therefore see the distribution at temperature 1; the temperature only
reshapes what survived the filters. A temperature <= 0 means greedy: bias and penalties
still apply, then the argmax is taken and every other stage is skipped.

Everything after the penalties works on a `Candidates` set (token ids + logits). The full
vocabulary is only ever scanned in O(n): top-k uses `np.argpartition`, and top-p without a
top-k buckets the tokens by log-probability to find the few that can be in the nucleus, and
sorts only those instead of all 262k logits of a large vocabulary.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, fields
from typing import Callable, Mapping, Sequence

import numpy as np

# A sampler maps (last-position logits (n_vocab,) float32, token history) -> next token id.
SamplerFn = Callable[[np.ndarray, Sequence[int]], int]

# Log-probability buckets top-p uses to find its nucleus without sorting the vocabulary.
_TOP_P_BUCKETS = 1024


@dataclass(frozen=True)
class SamplingParams:
    """Every knob of the sampler chain, validated once. Zero/one values disable a stage."""

    temperature: float = 0.8
    top_k: int = 40               # <= 0 keeps the whole vocabulary
    top_p: float = 0.95           # 1.0 disables
    min_p: float = 0.05           # 0.0 disables
    repeat_penalty: float = 1.0   # 1.0 disables
    repeat_last_n: int = 64       # window of history the penalties look at; 0 off, -1 all
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] | None = None
    seed: int | None = None

    def __post_init__(self):
        for name in ("temperature", "top_p", "min_p", "repeat_penalty",
                     "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        for name in ("top_k", "repeat_last_n"):
            if not isinstance(getattr(self, name), (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {getattr(self, name)!r}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repeat_penalty <= 0.0:
            raise ValueError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")
        if self.repeat_last_n < -1:
            raise ValueError(f"repeat_last_n must be >= -1 (-1 = whole history), got {self.repeat_last_n}")
        if self.seed is not None and not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")
        if self.logit_bias is not None:
            for token, bias in dict(self.logit_bias).items():
                if not isinstance(token, (int, np.integer)) or token < 0:
                    raise ValueError(f"logit_bias keys must be token ids (ints >= 0), got {token!r}")
                if not isinstance(bias, (int, float)) or math.isnan(bias) or bias == math.inf:
                    raise ValueError(f"logit_bias[{token}] must be a number below +inf "
                                     f"(-inf bans a token), got {bias!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def penalizes(self) -> bool:
        return self.repeat_last_n != 0 and (
            self.repeat_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0)


@dataclass
class Candidates:
    """The tokens still in play. `ids` (n,) intp and `logits` (n,) float32 are parallel;
    `ids is None` means the full vocabulary in id order (logits indexed by token id),
    which spares building an arange of the vocabulary when no filter narrowed it.
    `sorted_desc` records that logits are in descending order (top-p needs it)."""

    logits: np.ndarray
    ids: np.ndarray | None = None
    sorted_desc: bool = False

    def token(self, i: int) -> int:
        return int(i if self.ids is None else self.ids[i])

    def take(self, positions: np.ndarray, sorted_desc: bool) -> "Candidates":
        ids = positions if self.ids is None else self.ids[positions]
        return Candidates(self.logits[positions], np.asarray(ids, dtype=np.intp), sorted_desc)


# ---------------------------------------------------------------- in-place logit transforms

def apply_logit_bias(logits: np.ndarray, token_ids: np.ndarray, biases: np.ndarray) -> None:
    """Add `biases` (m,) float32 to `logits` (n_vocab,) float32 at `token_ids` (m,) intp, in place."""
    if token_ids.size and int(token_ids.max()) >= logits.shape[0]:
        bad = int(token_ids.max())
        raise ValueError(f"logit_bias names token id {bad}, but the vocabulary has {logits.shape[0]} tokens")
    logits[token_ids] += biases


def apply_penalties(logits: np.ndarray, history: Sequence[int], repeat_penalty: float = 1.0,
                    presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                    last_n: int = 64) -> None:
    """Penalize tokens seen in the last `last_n` entries of `history`, in place (llama.cpp rules).

    logits: (n_vocab,) float32. For each distinct token seen c > 0 times in the window: a
    positive logit is divided by `repeat_penalty`, a non-positive one multiplied by it (so the
    penalty always pushes the token down), then `c * frequency_penalty + presence_penalty` is
    subtracted. last_n = 0 disables, -1 uses the whole history.
    """
    if last_n == 0 or len(history) == 0:
        return
    window = history if last_n < 0 else history[-last_n:]
    seen, counts = np.unique(np.asarray(window, dtype=np.intp), return_counts=True)
    if seen[0] < 0 or seen[-1] >= logits.shape[0]:
        raise ValueError(f"history holds token ids outside the vocabulary [0, {logits.shape[0]})")
    values = logits[seen]
    if repeat_penalty != 1.0:
        values = np.where(values > 0, values / repeat_penalty, values * repeat_penalty)
    values = values - (counts * frequency_penalty + presence_penalty)
    logits[seen] = values


# ---------------------------------------------------------------- candidate filters

def _sorted_head(logits: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest entries of `logits`, largest first (O(n + k log k))."""
    n = logits.shape[0]
    if k >= n:
        return np.argsort(-logits, kind="stable")
    head = np.argpartition(logits, n - k)[n - k:]
    return head[np.argsort(-logits[head], kind="stable")]


def top_k(cands: Candidates, k: int) -> Candidates:
    """Keep the k highest logits (k <= 0 or k >= n keeps all); result is sorted descending."""
    n = cands.logits.shape[0]
    if k <= 0 or k >= n:
        return cands
    return cands.take(_sorted_head(cands.logits, k), sorted_desc=True)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits.astype(np.float64) - float(logits.max()))
    return shifted / shifted.sum()


def _nucleus_superset(logits: np.ndarray, probs: np.ndarray, p: float) -> np.ndarray:
    """Positions of a small superset of the top-p nucleus, unsorted.

    logits: (n,) float32; probs: (n,) float64, their softmax. Buckets the tokens by distance
    below the top logit (one O(n) pass), accumulates each bucket's mass from the top bucket
    down, and returns every token in the buckets up to the one where the mass reaches p.
    Only this head then needs sorting, not the whole vocabulary.
    """
    depth = float(logits.max()) - logits                      # (n,) >= 0, inf for banned tokens
    finite_depth = depth[np.isfinite(depth)]
    scale = _TOP_P_BUCKETS / max(float(finite_depth.max()), 1e-6)
    bucket = np.minimum(depth * scale, _TOP_P_BUCKETS - 1).astype(np.intp)
    cum = np.cumsum(np.bincount(bucket, weights=probs, minlength=_TOP_P_BUCKETS))
    last = min(int(np.searchsorted(cum, p, side="left")), _TOP_P_BUCKETS - 1)
    return np.flatnonzero(bucket <= last)


def top_p(cands: Candidates, p: float) -> Candidates:
    """Nucleus filter: keep the most likely tokens until their probability mass reaches p.

    The token that crosses p is kept (so at least one token always survives); p >= 1 is a
    no-op. Probabilities are the softmax of the candidates' current logits.
    """
    if p >= 1.0:
        return cands
    probs = _softmax(cands.logits)
    if cands.sorted_desc:
        order = np.arange(probs.shape[0])
    else:
        order = _nucleus_superset(cands.logits, probs, p)
        order = order[np.argsort(-probs[order], kind="stable")]
    cum = np.cumsum(probs[order])
    keep = min(int(np.searchsorted(cum, p, side="left")) + 1, order.shape[0])
    return cands.take(order[:keep], sorted_desc=True)


def min_p(cands: Candidates, p: float) -> Candidates:
    """Keep tokens whose probability is at least p times the top token's (p <= 0 is a no-op).

    Compared in logit space: prob_i >= p * prob_max  <=>  logit_i >= logit_max + log(p).
    """
    if p <= 0.0:
        return cands
    threshold = float(cands.logits.max()) + math.log(p)
    mask = cands.logits >= threshold
    if mask.all():
        return cands
    return cands.take(np.flatnonzero(mask), sorted_desc=cands.sorted_desc)


def apply_temperature(cands: Candidates, temperature: float) -> Candidates:
    """Divide the logits by a positive temperature (1.0 is a no-op)."""
    if temperature == 1.0:
        return cands
    return Candidates(cands.logits / np.float32(temperature), cands.ids, cands.sorted_desc)


def draw(cands: Candidates, rng: np.random.Generator) -> int:
    """Sample one token id from the softmax of the candidates' logits."""
    cdf = np.cumsum(_softmax(cands.logits))
    i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return cands.token(min(i, cdf.shape[0] - 1))


# ---------------------------------------------------------------- the chain

# (name, enabled(params), stage(cands, params)) in llama.cpp's default order. A stage whose
# parameter disables it is left out of the chain when the sampler is built.
FILTER_CHAIN: tuple[tuple[str, Callable[[SamplingParams], bool],
                          Callable[[Candidates, SamplingParams], Candidates]], ...] = (
    ("top_k", lambda s: s.top_k > 0, lambda c, s: top_k(c, s.top_k)),
    ("top_p", lambda s: s.top_p < 1.0, lambda c, s: top_p(c, s.top_p)),
    ("min_p", lambda s: s.min_p > 0.0, lambda c, s: min_p(c, s.min_p)),
    ("temperature", lambda s: s.temperature != 1.0, lambda c, s: apply_temperature(c, s.temperature)),
)


@dataclass
class Sampler:
    """Callable (logits (n_vocab,) float32, history of token ids) -> next token id.

    Never modifies the logits it is given (the engine may hand out an internal buffer).
    Holds its own numpy Generator: two samplers built with the same seed produce the same
    tokens from the same logits.
    """

    params: SamplingParams
    rng: np.random.Generator = field(init=False)
    stages: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        self.rng = np.random.default_rng(self.params.seed)
        bias = dict(self.params.logit_bias or {})
        self._bias_ids = np.fromiter(bias.keys(), dtype=np.intp, count=len(bias))
        self._bias_values = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
        self._filters = () if self.params.greedy else tuple(
            (name, stage) for name, enabled, stage in FILTER_CHAIN if enabled(self.params))
        self.stages = (("logit_bias",) if bias else ()) + (("penalties",) if self.params.penalizes else ()) \
            + (("greedy",) if self.params.greedy else tuple(n for n, _ in self._filters) + ("dist",))

    def adjusted_logits(self, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        """A float32 copy of `logits` with logit bias and penalties applied."""
        logits = np.array(logits, dtype=np.float32, copy=True)
        if logits.ndim != 1:
            raise ValueError(f"sampler expects one row of logits (n_vocab,), got shape {logits.shape}")
        if self._bias_ids.size:
            apply_logit_bias(logits, self._bias_ids, self._bias_values)
        if self.params.penalizes:
            p = self.params
            apply_penalties(logits, history, p.repeat_penalty, p.presence_penalty,
                            p.frequency_penalty, p.repeat_last_n)
        top = logits.max()
        if not np.isfinite(top):
            raise ValueError("no token can be sampled: the logits hold NaN/inf or every token is banned")
        return logits

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        torch = sys.modules.get("torch")  # a torch tensor can only come if torch is loaded
        if torch is not None and isinstance(logits, torch.Tensor):
            # the torch backend's logits, maybe on a GPU: greedy runs there, the rest on a host copy
            from .backends.torch_backend import sample_tensor
            return sample_tensor(self, logits, history)
        logits = self.adjusted_logits(logits, history)
        if self.params.greedy:
            return int(np.argmax(logits))
        cands = Candidates(logits)
        for _, stage in self._filters:
            cands = stage(cands, self.params)
        return draw(cands, self.rng)


# The keywords make_sampler takes (SamplingParams' fields), which every generating method of the
# library passes through.
SAMPLING_KEYWORDS: tuple[str, ...] = tuple(f.name for f in fields(SamplingParams))


def sampler_for(caller: str, options: Mapping[str, object]) -> Sampler:
    """make_sampler(**options) on behalf of the public function `caller` (e.g. "Model.generate"):
    a keyword it does not take is a TypeError naming `caller`, as Python's own would be."""
    for name in options:
        if name not in SAMPLING_KEYWORDS:
            raise TypeError(f"{caller}() got an unexpected keyword argument {name!r} "
                            f"(sampling keywords: {', '.join(SAMPLING_KEYWORDS)})")
    return make_sampler(**options)


def make_sampler(temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                 min_p: float = 0.05, repeat_penalty: float = 1.0, repeat_last_n: int = 64,
                 presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                 logit_bias: Mapping[int, float] | None = None, seed: int | None = None) -> Sampler:
    """Build the sampler chain (see the module docstring for the order) as one callable."""
    return Sampler(SamplingParams(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
        presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
        logit_bias=logit_bias, seed=seed))
