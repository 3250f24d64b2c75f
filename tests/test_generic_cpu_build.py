"""Kernels compiled for another CPU than the host (NUMBA_CPU_NAME=generic, as for a cache
shipped to other machines): no kernel may rely on the host's features then. The half
conversions once checked the host's F16C and emitted `fptrunc float -> half`, which a
generic x86-64 lowers to a call of `__truncsfhf2`, absent from the JIT: the process aborted
with "LLVM ERROR: Symbol not found". quant/cpu_features.py now decides for every kernel."""
import os
import subprocess
import sys

import numpy as np

from lanternlm.runtime.engine import Engine
from tiny_llama_gguf import write_tiny_model

SCRIPT = """
import sys
import numpy as np
from lanternlm.quant import cpu_features
from lanternlm.runtime.backends import half
from lanternlm.runtime.engine import Engine
assert cpu_features.TARGET_FEATURES == {} and not half.NATIVE
eng = Engine.load(sys.argv[1], n_ctx=32, threads=1, kv_type="f16")
np.save(sys.argv[2], np.stack([eng.eval([3, 1, 4]), eng.eval([5])]))
"""


def run_and_decode(path):
    """Logits of a 3-token prefill and one decode step through the f16 KV cache: f32 (2, n_vocab)."""
    eng = Engine.load(path, n_ctx=32, threads=1, kv_type="f16")
    return np.stack([eng.eval([3, 1, 4]), eng.eval([5])])


def test_engine_compiled_for_a_generic_cpu_runs_and_agrees_with_the_host_build(tmp_path):
    path = write_tiny_model(tmp_path / "tiny.gguf", "wide")
    # its own cache folder: a generic build must not mix with (or slow down) the host's cache
    env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    out = tmp_path / "generic.npy"
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(out)], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    generic, host = np.load(out), run_and_decode(path)
    # the same arithmetic up to summation order (vector widths differ between the builds)
    np.testing.assert_allclose(generic, host, rtol=0, atol=1e-3 * float(np.abs(host).max()))
    assert (generic.argmax(axis=1) == host.argmax(axis=1)).all()
