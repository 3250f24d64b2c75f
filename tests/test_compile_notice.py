"""Start-up: the compile notice appears when Numba really compiles (an empty kernel cache) and
never on a warm start, however slow a busy machine makes it."""
import io
import os
import subprocess
import sys
import time

import numba
import numpy as np

from lanternlm.runtime.compile_notice import notice_if_compiling
from lanternlm.runtime.engine import Engine
from tiny_llama_gguf import write_tiny_model


def fresh_kernel():
    """A jitted function Numba has not compiled yet (no disk cache: it compiles on first call)."""
    return numba.njit(lambda x: x * 2 + 1)


def test_a_compilation_shows_the_notice_then_the_duration():
    err = io.StringIO()
    kernel = fresh_kernel()
    with notice_if_compiling("compiling kernels...", stream=err):
        assert kernel(3) == 7
        assert kernel(4.0) == 9.0               # a second compilation: no second notice
    lines = err.getvalue().splitlines()
    assert lines[0] == "lantern: compiling kernels..."
    assert len(lines) == 2 and lines[1].startswith("lantern: ready in ") and lines[1].endswith(" s")


def test_a_slow_step_that_compiles_nothing_is_silent():
    kernel = fresh_kernel()
    kernel(3)                                   # compiled before the step
    err = io.StringIO()
    with notice_if_compiling("compiling kernels...", stream=err):
        kernel(5)
        time.sleep(1.5)                         # as slow as a warm start on a busy machine
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


def test_the_notice_shows_with_an_empty_kernel_cache_and_not_once_it_is_filled(tmp_path):
    path = write_tiny_model(tmp_path / "tiny.gguf", "wide")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))

    def start() -> str:
        run = subprocess.run([sys.executable, "-m", "lanternlm.cli", "run", str(path), "-p", "hi", "-n", "2",
                              "--temp", "0", "-t", "1"], env=env, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stderr
        return run.stderr

    cold = start()
    assert "lantern: compiling kernels" in cold and "lantern: ready in" in cold
    warm = start()
    assert "compiling" not in warm and "ready in" not in warm, warm
