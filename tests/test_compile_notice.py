"""Start-up: a slow kernel warm-up is announced on stderr, a quick one is silent, and a fresh
Numba cache (a first run) shows the notice from the command line."""
import io
import os
import subprocess
import sys
import time

import numpy as np

from lanternlm.runtime.compile_notice import notice_if_slow
from lanternlm.runtime.engine import Engine
from tiny_llama_gguf import write_tiny_model


def test_slow_step_prints_notice_then_duration():
    err = io.StringIO()
    with notice_if_slow("compiling kernels...", after=0.05, stream=err):
        time.sleep(0.3)
    lines = err.getvalue().splitlines()
    assert lines[0] == "lantern: compiling kernels..."
    assert lines[1].startswith("lantern: ready in ") and lines[1].endswith(" s")
    assert float(lines[1].split()[-2]) >= 0.3


def test_quick_step_is_silent():
    err = io.StringIO()
    with notice_if_slow("compiling kernels...", after=5.0, stream=err):
        pass
    assert err.getvalue() == ""


def test_warm_up_leaves_an_empty_cache_and_the_same_results(tmp_path):
    path = write_tiny_model(tmp_path / "tiny.gguf", "wide")
    ids = [3, 1, 4, 1, 5]
    fresh = Engine.load(path, n_ctx=32, threads=1)
    want = fresh.eval(ids).copy()
    warmed = Engine.load(path, n_ctx=32, threads=1)
    warmed.warm_up()
    assert warmed.n_past == 0
    np.testing.assert_array_equal(warmed.eval(ids), want)


def test_first_run_with_an_empty_kernel_cache_shows_the_notice(tmp_path):
    path = write_tiny_model(tmp_path / "tiny.gguf", "wide")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    run = subprocess.run([sys.executable, "-m", "lanternlm.cli", "run", str(path), "-p", "hi", "-n", "2",
                          "--temp", "0", "-t", "1"], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "lantern: compiling kernels" in run.stderr
    assert "lantern: ready in" in run.stderr
