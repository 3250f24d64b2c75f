"""Progress of a long job over a model file: tqdm's bar on a terminal, whole lines elsewhere.

A bar redraws one line with carriage returns; in a log file or a CI console that shows as
nothing, or as one endless line, until the job ends. Where the stream is not a terminal the
progress is printed as whole lines instead: one when the job starts, then one at most every
`interval` seconds, and one when the last item is done, each in tqdm's words (count,
percentage, elapsed, time left, rate) with the item last done.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

__all__ = ["ProgressLines", "progress_bar"]

LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit}s ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
DEFAULT_INTERVAL = 5.0      # seconds between two lines


class ProgressLines:
    """The part of tqdm's interface a job uses (update, set_postfix_str, close, with), printed
    as whole lines (see the module's docstring)."""

    def __init__(self, total: int, desc: str, unit: str, file: TextIO, interval: float = DEFAULT_INTERVAL):
        self.total, self.desc, self.unit, self.file, self.interval = total, desc, unit, file, interval
        self.n = 0
        self.postfix = ""
        self.start = self.printed_at = time.monotonic()
        self._print()

    def set_postfix_str(self, text: str, refresh: bool = False) -> None:
        self.postfix = text

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.n >= self.total or now - self.printed_at >= self.interval:
            self.printed_at = now
            self._print()

    def _print(self) -> None:
        line = tqdm.format_meter(self.n, self.total, time.monotonic() - self.start, prefix=self.desc,
                                 unit=self.unit, bar_format=LINE_FORMAT, postfix=self.postfix or None)
        print(line, file=self.file, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self) -> "ProgressLines":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True, file: TextIO | None = None,
                 interval: float = DEFAULT_INTERVAL):
    """A tqdm bar when `file` (stderr by default) is a terminal, ProgressLines when it is not,
    a silent tqdm when not `enabled`."""
    file = file or sys.stderr
    if enabled and not file.isatty():
        return ProgressLines(total, desc, unit, file, interval)
    return tqdm(total=total, desc=desc, unit=unit, file=file, disable=not enabled, leave=False)
