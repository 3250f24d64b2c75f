"""The thread governor against simulated step times (nothing here is timed): it finds the
faster setting per phase quickly, also on a machine busy from the start and between all and
one thread, comes back when the load goes, and its trials cost little on a quiet machine."""
import numba
import numpy as np
import pytest

from lanternlm.runtime.engine import Engine
from lanternlm.runtime.thread_governor import PhaseGovernor, ThreadGovernor, ladder
from tiny_llama_gguf import write_tiny_model

WINDOW = ThreadGovernor.WINDOW["decode"]


def run(gov: ThreadGovernor, cost, steps: int, phase="decode", tokens=1) -> list[int]:
    """Feed `steps` calls of `tokens` tokens whose seconds per token is cost[threads]; the
    thread counts used."""
    used = []
    for _ in range(steps):
        n = gov.threads(phase)
        used.append(n)
        gov.record(phase, tokens, cost[n] * tokens)
    return used


QUIET = {2: 0.007, 1: 0.008}      # two threads a little faster
BUSY = {2: 0.025, 1: 0.008}       # a descheduled worker stalls every parallel step


def test_ladder_halves_down_to_one():
    assert ladder(1) == (1,)
    assert ladder(2) == (2, 1)
    assert ladder(12) == (12, 6, 3, 1)
    assert ladder(16) == (16, 8, 4, 2, 1)


def extra_time(cost, used) -> float:
    """How much longer the steps took than on the fastest setting throughout."""
    return sum(cost[n] for n in used) / (len(used) * min(cost.values())) - 1


def test_quiet_machine_keeps_all_threads_and_trials_cost_about_one_percent():
    gov = ThreadGovernor(2)
    used = run(gov, QUIET, 4096)
    assert gov.threads("decode") == 2
    assert extra_time(QUIET, used) < 1.5 * PhaseGovernor.TRIAL_BUDGET


def test_trials_cost_under_one_percent_on_a_quiet_many_core_machine():
    # decode streams the weights: half the cores are only a little slower, one core is 8x slower
    # (the old governor's one-thread trials, 8 of every 256 steps, cost 22% here)
    cost = {32: 0.010, 16: 0.013, 8: 0.020, 4: 0.035, 2: 0.060, 1: 0.080}
    gov = ThreadGovernor(32)
    used = run(gov, cost, 20000)
    assert gov.threads("decode") == 32 and extra_time(cost, used) < 0.01


def test_busy_from_the_start_switches_after_the_first_window():
    gov = ThreadGovernor(2)
    used = run(gov, BUSY, 400)
    # call 0 is not counted (it may compile), calls 1..WINDOW are the first window, then a trial
    assert used.index(1) == 1 + WINDOW
    assert used[1 + WINDOW:].count(2) <= WINDOW   # two threads 3x slower: retried rarely


def test_many_times_slower_trials_are_short_and_rare_yet_a_quiet_machine_is_noticed():
    cost = {2: 0.220, 1: 0.0175}                  # the busy 2-core machine: 2 threads 12x slower
    gov = ThreadGovernor(2)
    used = run(gov, cost, 20000)
    assert extra_time(cost, used[4000:]) < 0.07   # (12 - 1) * 5/8 / RECHECK_MAX = 5.4%
    used = run(gov, QUIET, WINDOW * (PhaseGovernor.RECHECK_MAX + 2))
    assert gov.threads("decode") == 2 and used[-1] == 2


def test_load_that_comes_and_goes():
    gov = ThreadGovernor(2)
    run(gov, QUIET, 100)
    used = run(gov, BUSY, 200)
    assert used.index(1) <= 2 * WINDOW            # the slowdown starts a trial at once
    used = run(gov, QUIET, WINDOW * (PhaseGovernor.RECHECK_MAX + 2))
    assert gov.threads("decode") == 2 and used[-1] == 2   # a trial finds two threads faster again


def test_settles_between_all_and_one_on_a_partly_busy_many_core_machine():
    cost = {16: 0.050, 8: 0.020, 4: 0.010, 2: 0.015, 1: 0.025}
    gov = ThreadGovernor(16)
    used = run(gov, cost, 1 + 4 * WINDOW)         # all, then 8, 4 and 2 on trial
    assert gov.threads("decode") == 4
    used = run(gov, cost, 2000)
    assert used.count(4) > 0.95 * len(used)


def test_prefill_is_governed_apart_from_decode():
    gov = ThreadGovernor(2)
    prefill = run(gov, BUSY, 12, phase="prefill", tokens=128)   # each call is a window
    decode = run(gov, QUIET, 400)
    # prefill: call 0 not counted, call 1 on two threads, call 2 tries one and keeps it
    assert prefill[:3] == [2, 2, 1] and prefill[3:].count(2) <= 1
    assert gov.threads("decode") == 2 and decode.count(2) > 0.9 * len(decode)
    assert gov.usage["prefill"][1] == 128 * prefill.count(1)
    assert gov.usage["decode"][2] == decode.count(2)


def test_prefill_follows_when_decode_finds_the_machine_quiet_again():
    gov = ThreadGovernor(2)
    run(gov, BUSY, 4, phase="prefill", tokens=128)
    run(gov, BUSY, 100)
    assert gov.threads("prefill") == gov.threads("decode") == 1
    run(gov, QUIET, WINDOW * (PhaseGovernor.RECHECK_MAX + 2))
    assert gov.threads("decode") == 2
    # the prefill's own next trial would be far off (two threads were 3x slower); decode's
    # move sends it after one more call
    assert run(gov, QUIET, 3, phase="prefill", tokens=128) == [1, 2, 2]


def test_a_first_call_that_compiles_does_not_count():
    gov = ThreadGovernor(2)
    gov.record("prefill", 2, 30.0)                # compiling the kernels
    used = run(gov, QUIET, 6, phase="prefill", tokens=128)
    assert used[:3] == [2, 1, 2]                  # measured, tried one thread, back to two


def test_one_core_never_changes():
    gov = ThreadGovernor(1)
    assert set(run(gov, {1: 0.01}, 500)) == {1}


class RecordingGovernor:
    """Stands in for the engine's governor: fixed answers, and what the engine reports."""

    def __init__(self):
        self.calls = []

    def threads(self, phase):
        return {"prefill": 1, "decode": 2}[phase]

    def record(self, phase, tokens, seconds):
        self.calls.append((phase, tokens, numba.get_num_threads(), seconds > 0))


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_engine_asks_per_phase_and_reports_every_call(tmp_path):
    eng = Engine.load(write_tiny_model(tmp_path / "tiny.gguf", "wide"), n_ctx=32, n_batch=4)
    eng.governor = RecordingGovernor()
    eng.eval(np.arange(6))                        # prefill in chunks of 4 and 2
    eng.eval([7])
    assert eng.governor.calls == [("prefill", 4, 1, True), ("prefill", 2, 1, True), ("decode", 1, 2, True)]
