"""The decode thread governor against simulated step times: it keeps the faster setting, moves
to one thread when the cores get busy and back when they are free again."""
from lanternlm.runtime.thread_governor import ThreadGovernor


def run(gov: ThreadGovernor, step_time, steps: int) -> list[int]:
    """Feed `steps` decode steps whose duration is step_time(threads); the settings used."""
    used = []
    for _ in range(steps):
        used.append(gov.threads)
        gov.record(step_time(gov.threads))
    return used


QUIET = {2: 0.007, 1: 0.008}      # two threads a little faster
BUSY = {2: 0.025, 1: 0.008}       # a descheduled worker stalls every parallel step


def test_quiet_machine_keeps_all_threads_except_for_rare_trials():
    gov = ThreadGovernor(2)
    used = run(gov, QUIET.get, 2000)
    assert gov.threads == 2
    assert used.count(1) <= (2000 // (gov.WINDOW * gov.RECHECK) + 1) * gov.WINDOW


def test_busy_cores_move_to_one_thread_within_a_few_windows_and_back_when_quiet():
    gov = ThreadGovernor(2)
    run(gov, QUIET.get, 100)
    used = run(gov, BUSY.get, 200)
    switched = used.index(1)
    assert switched <= 2 * gov.WINDOW           # the slowdown starts a trial at once
    after = used[switched + gov.WINDOW:]        # one thread is kept, apart from periodic trials
    assert after.count(2) <= (len(after) // (gov.WINDOW * gov.RECHECK) + 1) * gov.WINDOW
    used = run(gov, QUIET.get, gov.WINDOW * gov.RECHECK * 2)
    assert gov.threads == 2 and used[-1] == 2   # a periodic trial finds two threads faster again


def test_one_core_never_changes():
    gov = ThreadGovernor(1)
    assert set(run(gov, BUSY.get, 500)) == {1}
