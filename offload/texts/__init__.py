"""Prose written for lanternlm: `calibration` (what an offload plan is calibrated on) and
`evaluation` (held out: what its quality is measured on, and the bench's prose prompt)."""
from __future__ import annotations

from pathlib import Path

TEXTS = ("calibration", "evaluation")


def read_text(name: str) -> str:
    if name not in TEXTS:
        raise ValueError(f"unknown text {name!r}; the package has {', '.join(TEXTS)}")
    return (Path(__file__).parent / f"{name}.txt").read_text(encoding="utf-8")
