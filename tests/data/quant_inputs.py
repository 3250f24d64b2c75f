"""Seeded float32 inputs for the quantizer fixtures (numpy only).

The fixture file stores each case's recipe (distribution, rows, n, seed) and
the sha256 of the input it generates, not the input itself.  Both the fixture
generator (make_quant_fixtures.py, run against llama.cpp) and the tests build
inputs with `make_input`; the tests first check the input hash so a change in
numpy's random streams shows up as such, not as a quantizer bug.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quant_fixtures.json")


def _normal(rng, rows, n):
    return rng.standard_normal((rows, n))


def _uniform(rng, rows, n):
    return rng.uniform(-1.0, 1.0, (rows, n))


def _outliers(rng, rows, n):
    """Normal with 1% of entries blown up 30-100x (activation-outlier style)."""
    x = rng.standard_normal((rows, n))
    hit = rng.random((rows, n)) < 0.01
    return np.where(hit, x * rng.uniform(30.0, 100.0, (rows, n)), x)


def _student_t(rng, rows, n):
    return rng.standard_t(2.0, (rows, n))


def _zeros(rng, rows, n):
    return np.zeros((rows, n))


def _single_nonzero(rng, rows, n):
    x = np.zeros((rows, n))
    x[np.arange(rows), rng.integers(0, n, rows)] = rng.standard_normal(rows) * 3.0
    return x


def _constant(rng, rows, n):
    """Each row one value; alternating signs across rows."""
    v = rng.uniform(0.1, 2.0, rows) * np.where(np.arange(rows) % 2, -1.0, 1.0)
    return np.repeat(v[:, None], n, axis=1)


def _positive(rng, rows, n):
    """One-signed rows (all >= 0 or all <= 0): exercises the clipped-offset paths."""
    x = np.abs(rng.standard_normal((rows, n))) + 0.25
    return x * np.where(np.arange(rows) % 2, -1.0, 1.0)[:, None]


def _tiny(rng, rows, n):
    return rng.standard_normal((rows, n)) * 1e-30


def _small(rng, rows, n):
    """Scales land in half precision's subnormal range."""
    return rng.standard_normal((rows, n)) * 1e-6


def _huge(rng, rows, n):
    """Scales overflow half precision."""
    return rng.standard_normal((rows, n)) * 1e6


def _ties(rng, rows, n):
    """Multiples of 1/2: many exact rounding ties."""
    return np.round(rng.standard_normal((rows, n)) * 8.0) / 2.0


def _sparse_groups(rng, rows, n):
    """Normal with random 16-wide groups zeroed and 10% of the rest zero."""
    x = rng.standard_normal((rows, n))
    groups = rng.random((rows, n // 16)) < 0.3
    x[np.repeat(groups, 16, axis=1)] = 0.0
    x[rng.random((rows, n)) < 0.1] = 0.0
    return x


def _weights(rng, rows, n):
    """A realistic weight matrix: normal times a log-uniform per-row scale."""
    scale = np.exp(rng.uniform(np.log(0.005), np.log(0.1), rows))
    return rng.standard_normal((rows, n)) * scale[:, None]


DISTRIBUTIONS = {
    "normal": _normal,
    "uniform": _uniform,
    "outliers": _outliers,
    "student_t": _student_t,
    "zeros": _zeros,
    "single_nonzero": _single_nonzero,
    "constant": _constant,
    "one_signed": _positive,
    "tiny": _tiny,
    "small": _small,
    "huge": _huge,
    "ties": _ties,
    "sparse_groups": _sparse_groups,
    "weights": _weights,
}


def make_input(dist: str, rows: int, n: int, seed: int) -> np.ndarray:
    """f32[rows, n] from a named distribution and a seed."""
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(DISTRIBUTIONS[dist](rng, rows, n), dtype=np.float32)


def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def fixture_cases(type_name: str) -> list[dict]:
    """The fixture cases that have an expected output for `type_name` (e.g. "Q4_K")."""
    with open(FIXTURES) as f:
        cases = json.load(f)["cases"]
    return [c for c in cases if type_name in c["outputs"]]


def case_id(case: dict) -> str:
    return f"{case['dist']}-{case['rows']}x{case['n']}"
