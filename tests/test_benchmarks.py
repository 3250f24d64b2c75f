"""The benchmark scripts compare like with like and say what they measured (nothing is timed
here: the clocks and the work are stand-ins)."""
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeClock:
    """A clock that the stand-in work advances."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def work(self, *seconds: float):
        """A stand-in for a loader: its n-th call takes seconds[min(n, len - 1)]."""
        calls = []

        def run(*args):
            self.now += seconds[min(len(calls), len(seconds) - 1)]
            calls.append(args)
            return "summary"

        run.calls = calls
        return run


def test_gguf_load_times_both_readers_the_same_way(monkeypatch, capsys):
    bench = script("bench_gguf_load")
    clock = FakeClock()
    ours = clock.work(3.0, 1.0)            # cold first run, then 1 s
    reference = clock.work(12.0, 10.0)
    monkeypatch.setattr(bench, "load_with_read_gguf", ours)
    monkeypatch.setattr(bench, "load_with_gguf_reader", reference)
    real_timing = bench.timing
    monkeypatch.setattr(bench, "timing", lambda run, repeat: real_timing(run, repeat, clock))
    bench.main(["model.gguf", "--repeat", "4"])
    out = capsys.readouterr().out
    assert len(reference.calls) == 4                    # as many runs as ours (+1 for the summary)
    assert len(ours.calls) == 4 + 1
    assert "best   1.000 s   first   3.000 s" in out
    assert "best  10.000 s   first  12.000 s" in out
    assert "best / best: 10x read_gguf" in out          # not 12 / 1: a first run against a best


def test_timing_best_and_first():
    clock = FakeClock()
    assert script("bench_gguf_load").timing(clock.work(5.0, 2.0, 4.0), 3, clock) == (2.0, 5.0)


def test_last_level_cache_read_from_sysfs(tmp_path):
    bench = script("bench_quant_kernels")
    for index, (level, kind, size) in enumerate([(1, "Data", "48K"), (1, "Instruction", "32K"),
                                                  (2, "Unified", "2048K"), (3, "Unified", "266240K")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        (folder / "level").write_text(f"{level}\n")
        (folder / "type").write_text(f"{kind}\n")
        (folder / "size").write_text(f"{size}\n")
    assert bench.last_level_cache_bytes(str(tmp_path)) == 260 * 2**20
    assert bench.last_level_cache_bytes(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("nbytes,llc,copies,label", [
    (9 * 2**20, 260 * 2**20, 1, "cache-resident"),
    (300 * 2**20, 260 * 2**20, 1, "larger than the 260 MiB last-level cache"),
    (9 * 2**20, 260 * 2**20, 58, "from memory: 58 copies"),
    (9 * 2**20, None, 1, "last-level cache size unknown"),
])
def test_matvec_figures_say_where_the_weights_come_from(nbytes, llc, copies, label):
    assert label in script("bench_quant_kernels").where_from(nbytes, llc, copies)


def test_copies_together_exceed_twice_the_cache():
    bench = script("bench_quant_kernels")
    llc, nbytes = 260 * 2**20, 9 * 2**20
    copies = bench.copies_beyond_cache(nbytes, llc)
    assert copies * nbytes > 2 * llc and (copies - 1) * nbytes <= 2 * llc
