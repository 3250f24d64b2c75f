"""One Model per thread under every Numba threading layer. Numba's own "workqueue" layer, the
one it falls back to without TBB or OpenMP, aborts the process when two threads launch
parallel kernels at once; engines then take turns (runtime/thread_safety.py). Each case runs
in a process of its own: the layer is chosen once per process, and an abort would end pytest."""
import ast
import os
import subprocess
import sys

import numba
import pytest

from lanternlm.runtime import thread_safety
from lanternlm.runtime.model import Model
from tiny_llama_gguf import write_tiny_model

SCRIPT = """
import sys, threading
if sys.argv[2] == "hide-tbb-and-omp":      # as on a machine with neither library
    class Hide:
        def find_spec(self, name, path=None, target=None):
            if name in ("numba.np.ufunc.tbbpool", "numba.np.ufunc.omppool"):
                raise ImportError(name + " hidden by the test")
    sys.meta_path.insert(0, Hide())
import numba
from lanternlm.runtime import thread_safety
from lanternlm.runtime.model import Model

def generate(results, i):
    model = Model.load(sys.argv[1], n_ctx=64, threads=2)
    results[i] = [model.generate("the a of", max_tokens=24, temperature=0) for _ in range(3)]

results = [None, None]
threads = [threading.Thread(target=generate, args=(results, i)) for i in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(numba.threading_layer())
print(repr(results))
"""


@pytest.mark.parametrize("how", ["NUMBA_THREADING_LAYER=workqueue", "hide-tbb-and-omp"])
def test_two_threads_each_running_a_model_under_workqueue(tmp_path, how):
    path = write_tiny_model(tmp_path / "tiny.gguf", "wide")
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    env.pop("NUMBA_THREADING_LAYER", None)
    if how.startswith("NUMBA_THREADING_LAYER="):
        env["NUMBA_THREADING_LAYER"] = how.split("=", 1)[1]
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(path), how], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    layer, texts = result.stdout.splitlines()[-2:]
    assert layer == "workqueue"
    # both threads produced what one model alone produces (greedy)
    alone = Model.load(path, n_ctx=64, threads=1).generate("the a of", max_tokens=24, temperature=0)
    assert ast.literal_eval(texts) == [[alone] * 3] * 2


@pytest.mark.parametrize("layer,locks", [("tbb", False), ("omp", False), ("workqueue", True), (None, True)])
def test_the_lock_is_taken_only_where_the_layer_needs_it(monkeypatch, layer, locks):
    def reported_layer():
        if layer is None:
            raise ValueError("Threading layer is not initialized.")
        return layer

    monkeypatch.setattr(numba, "threading_layer", reported_layer)
    assert (thread_safety.kernel_section() is thread_safety._WORKQUEUE_LOCK) == locks
