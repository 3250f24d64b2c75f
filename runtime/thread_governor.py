"""Choosing between all threads and one while decoding, from measured step times.

Each kernel call is a parallel region that ends when every worker thread has done its share.
When other processes keep the cores busy, a worker is often waiting for a core, and every
region waits for it: on the 2-core development machine SmolLM2 decode fell from ~140 to
~40 tok/s with 2 threads while 1 thread kept ~120 (llama.cpp degrades the same way). On a quiet
machine the extra threads win. Which holds changes while a chat runs, so the engine measures:
decode steps are timed in windows of WINDOW steps; after each window the median is kept for
the setting that ran it; the other setting is tried for one window when the current one slowed
down by SLOWDOWN or every RECHECK windows, and whichever measured faster is kept.

Only when the caller did not fix the thread count (Engine(threads=None)).
"""
from __future__ import annotations

from statistics import median


class ThreadGovernor:
    WINDOW = 8        # decode steps per measurement
    RECHECK = 32      # windows between trials of the other setting
    SLOWDOWN = 1.5    # a window this much slower than the last one of its setting starts a trial

    def __init__(self, max_threads: int):
        self.options = (max_threads, 1) if max_threads > 1 else (1,)
        self.threads = self.options[0]
        self.medians: dict[int, float] = {}
        self._samples: list[float] = []
        self._windows = 0
        self._in_trial = False  # the window now running tries the other setting

    def record(self, seconds: float) -> None:
        """One decode step took `seconds` with `self.threads` threads; may change `self.threads`."""
        if len(self.options) == 1:
            return
        self._samples.append(seconds)
        if len(self._samples) < self.WINDOW:
            return
        now = median(self._samples)
        self._samples.clear()
        self._windows += 1
        previous = self.medians.get(self.threads)
        self.medians[self.threads] = now
        if self._in_trial:  # a trial just ended: keep the faster setting
            self.threads = min(self.options, key=lambda n: self.medians.get(n, float("inf")))
            self._in_trial = False
            return
        slowed = previous is not None and now > self.SLOWDOWN * previous
        if slowed or self._windows % self.RECHECK == 0:
            self._in_trial = True
            self.threads = next(n for n in self.options if n != self.threads)
