"""How many threads the kernels use when the caller did not say (Engine(threads=None)).

Why measure: each kernel call is a parallel region that ends when every worker thread is done.
When other processes keep the cores busy, a worker is often waiting for a core, and every
region waits for it: on the 2-core development machine, under load, SmolLM2 decode fell from
~140 to ~40 tok/s with 2 threads while 1 thread kept ~120, and prefill ran at 146 tok/s where
1 thread gave 373 (llama.cpp degrades the same way). On a quiet machine all threads win. Which
holds changes while a program runs, so the engine times its own calls and feeds them here.

How it chooses:
- The settings form a ladder: all threads, half, a quarter, ..., 1 (2 cores: 2, 1).
- Prefill and decode are governed apart (prefill computes, decode streams the weights; their
  best settings differ), each from its own calls in seconds per token. A decode window is
  WINDOW steps (their median); every prefill call (a chunk of up to n_batch tokens) is a window
  of its own. Each phase's first call is not counted: it may include compiling the kernels.
- Start: after the first window, the next rung down is tried at once, and the search goes on
  down while that is faster, so a machine busy from the start is found within a few windows.
- A trial runs one window on a neighbouring rung and keeps whichever setting measured faster
  (the trial's window against the window just before it); it ends early once more than half
  its window is slower than the setting kept. A faster trial goes on in the same direction.
  Trials alternate between fewer and more threads where both exist.
- Trials are spaced by what they cost: after a trial, the slower of the two settings compared
  (r times slower) would cost about (r - 1) windows' worth of time if tried again, so the next
  trial comes (r - 1) / TRIAL_BUDGET windows later, within RECHECK_MIN..RECHECK_MAX. Trials
  then take about TRIAL_BUDGET (1%) of the time on a quiet machine; where the other setting
  is many times slower (2 threads 12x slower on the busy 2-core machine) about
  5/8 (r - 1) / RECHECK_MAX, ~5%, and a machine that turns quiet is noticed within
  RECHECK_MAX windows (~17 s of decoding there).
- A window SLOWDOWN times slower than the last one on its setting (the load grew) starts a
  trial of fewer threads at once; when one phase changes its setting, the other tries the
  same direction after its next window (prefill calls are rare: they learn from decode).

The governor only sees numbers: `record(phase, tokens, seconds)` after each call and
`threads(phase)` before the next, so tests feed it measurements instead of timing anything.
"""
from __future__ import annotations

from math import ceil
from statistics import median

PHASES = ("prefill", "decode")


def ladder(max_threads: int) -> tuple[int, ...]:
    """Thread counts to choose from, most first: max_threads, halved down to 1."""
    rungs = [max(int(max_threads), 1)]
    while rungs[-1] > 1:
        rungs.append(rungs[-1] // 2)
    return tuple(rungs)


class PhaseGovernor:
    """The choice for one phase: an index into the ladder, moved by trials."""

    RECHECK_MIN = 4        # windows before the next trial, at least
    RECHECK_MAX = 128      # ... at most
    TRIAL_BUDGET = 0.01    # the share of time that trials which lose may cost
    SLOWDOWN = 1.5         # a window this much slower than the last on its setting starts a trial

    def __init__(self, rungs: tuple[int, ...], window: int):
        self.rungs = rungs
        self.window = window
        self.kept = 0                      # the rung chosen
        self.running = 0                   # the rung in use: `kept`, or a neighbour on trial
        self.cost: dict[int, float] = {}   # rung -> seconds per token of its last window
        self.samples: list[float] = []
        self.counted_first = False
        self.until_trial = 1               # explore right after the first window
        self.fewer_next = True             # direction of the next trial

    @property
    def threads(self) -> int:
        return self.rungs[self.running]

    def record(self, tokens: int, seconds: float) -> None:
        if not self.counted_first:
            self.counted_first = True
            return
        if len(self.rungs) == 1 or tokens < 1:
            return
        self.samples.append(seconds / tokens)
        if len(self.samples) < self.window and not self._trial_lost():
            return
        now = median(self.samples)
        self.samples.clear()
        previous = self.cost.get(self.running)
        self.cost[self.running] = now
        if self.running != self.kept:
            self._end_trial(now)
        elif previous is not None and now > self.SLOWDOWN * previous and self.kept + 1 < len(self.rungs):
            self._start_trial(fewer=True)
        else:
            self.until_trial -= 1
            if self.until_trial <= 0:
                self._start_trial(fewer=self.fewer_next)
                self.fewer_next = not self.fewer_next

    def _trial_lost(self) -> bool:
        """A trial whose window already has more than half its samples slower than the setting
        kept: its median will be slower too, so it ends now (a trial on many times slower
        settings costs the least)."""
        if self.running == self.kept:
            return False
        return sum(s > self.cost[self.kept] for s in self.samples) > self.window // 2

    def nudge(self, fewer: bool) -> None:
        """Another phase moved to fewer (or more) threads: try that way after the next window."""
        if self.running == self.kept:
            self.until_trial = 1
            self.fewer_next = fewer

    def _start_trial(self, fewer: bool) -> None:
        step = 1 if fewer else -1
        if not 0 <= self.kept + step < len(self.rungs):
            step = -step                   # at an end of the ladder: the only neighbour
        self.running = self.kept + step

    def _end_trial(self, now: float) -> None:
        kept_cost = self.cost[self.kept]
        if now < kept_cost:                # faster: take it and look one rung further
            step = self.running - self.kept
            self.kept = self.running
            if 0 <= self.kept + step < len(self.rungs):
                self.running = self.kept + step
                return
        self.running = self.kept
        # the two settings just compared: the slower one, tried again, would cost (r - 1) windows
        ratio = max(now, kept_cost) / min(now, kept_cost)
        spacing = ceil((ratio - 1) / self.TRIAL_BUDGET)
        self.until_trial = min(max(spacing, self.RECHECK_MIN), self.RECHECK_MAX)


class ThreadGovernor:
    """Thread counts for prefill and decode calls, from their measured times."""

    WINDOW = {"prefill": 1, "decode": 8}

    def __init__(self, max_threads: int):
        self.rungs = ladder(max_threads)
        self.phases = {phase: PhaseGovernor(self.rungs, self.WINDOW[phase]) for phase in PHASES}
        self.usage: dict[str, dict[int, int]] = {}
        self.clear_usage()

    def threads(self, phase: str) -> int:
        """The thread count for the next `phase` call ("prefill" or "decode")."""
        return self.phases[phase].threads

    def record(self, phase: str, tokens: int, seconds: float) -> None:
        """A `phase` call of `tokens` tokens took `seconds` on `threads(phase)` threads."""
        self.usage[phase][self.threads(phase)] += tokens
        governor = self.phases[phase]
        kept = governor.kept
        governor.record(tokens, seconds)
        if governor.kept != kept:          # the load changed: the other phases look the same way
            for other in self.phases.values():
                if other is not governor:
                    other.nudge(fewer=governor.kept > kept)

    def clear_usage(self) -> None:
        """Start counting, per phase, the tokens run on each thread count again."""
        self.usage = {phase: dict.fromkeys(self.rungs, 0) for phase in PHASES}
