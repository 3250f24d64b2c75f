"""Sizes as people write them: `300MB`, `1.5GB`, `512MiB`; RAM budgets also as `40%` (of the
model file)."""
from __future__ import annotations

import re

_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3, "GB": 1000**3,
          "T": 1000**4, "TB": 1000**4,
          "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*|%)\s*$")


def parse_size(text: str | int | float, what: str) -> int:
    """Bytes: a byte count or a size with a unit (decimal KB/MB/GB, binary KiB/MiB/GiB);
    `what` names the setting in errors."""
    if isinstance(text, str) and text.strip().endswith("%"):
        raise ValueError(f"{what} {text!r} must be a size such as 256MB or 1GiB, not a percentage")
    return parse_budget(text, 0, what)


def parse_budget(text: str | int | float, file_bytes: int, what: str = "RAM budget") -> int:
    """Bytes of weights allowed in RAM: a byte count, a size with a unit (decimal KB/MB/GB,
    binary KiB/MiB/GiB), or a percentage of the model file's `file_bytes`."""
    if isinstance(text, bool):
        raise ValueError(f"{what} must be a size such as 300MB, 1.5GB or 40%, got {text!r}")
    if isinstance(text, (int, float)):
        value, unit = float(text), "B"
    else:
        m = _SIZE.match(str(text))
        if not m:
            raise ValueError(f"{what} {text!r} is not a size such as 300MB, 1.5GB or 40%")
        value, unit = float(m.group(1)), m.group(2).upper()
    if unit == "%":
        if not 0 < value <= 100:
            raise ValueError(f"{what} {text!r}: a percentage of the model file must be in (0, 100]")
        return int(file_bytes * value / 100)
    if unit not in _UNITS:
        raise ValueError(f"{what} {text!r}: unknown unit {unit!r} (use B, KB, MB, GB, KiB, MiB, GiB or %)")
    nbytes = int(value * _UNITS[unit])
    if nbytes <= 0:
        raise ValueError(f"{what} must be positive, got {text!r}")
    return nbytes


def format_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as the budgets are written)."""
    for unit, size in (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
