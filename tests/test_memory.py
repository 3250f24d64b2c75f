"""Giving back the compiler's pages: the resident part of libllvmlite shrinks, and the loaded
kernels keep working (their code is not in that library)."""
import sys

import numpy as np
import pytest

from lanternlm.runtime.engine import Engine
from lanternlm.runtime.memory import release_compiler_pages
from tiny_llama_gguf import write_tiny_model

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_PAGEOUT is Linux-only")


def resident_kb(name_part: str, field: str = "Rss:") -> int:
    """KiB of `field` (smaps: Rss, Private_Clean, ...) over this process's mappings of files whose
    name contains `name_part`."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                inside = len(fields) >= 6 and name_part in fields[-1].rsplit("/", 1)[-1]
            elif inside and fields[0] == field:
                total += int(fields[1])
    return total


def test_release_drops_llvm_pages_and_kernels_still_run(tmp_path):
    path = write_tiny_model(tmp_path / "tiny.gguf", "wide")
    eng = Engine.load(path, n_ctx=32, threads=1)
    eng.warm_up()
    want = eng.eval([3, 1, 4]).copy()
    eng.reset()
    # The OS pages out the clean pages only this process maps; pages another running Numba
    # process maps too (Shared_Clean) stay, as do the library's relocated data (Private_Dirty).
    before = resident_kb("libllvmlite", "Rss:")
    private_before = resident_kb("libllvmlite", "Private_Clean:")
    assert before > 1024  # Numba has used it to load the kernels
    assert release_compiler_pages()
    assert resident_kb("libllvmlite", "Private_Clean:") < 1024
    assert resident_kb("libllvmlite", "Rss:") <= before - private_before + 1024
    np.testing.assert_array_equal(eng.eval([3, 1, 4]), want)
    # running the loaded kernels does not touch LLVM again
    assert resident_kb("libllvmlite", "Private_Clean:") < 1024
