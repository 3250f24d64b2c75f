"""Start-up: seconds from launching `lantern run` to its first generated token on stdout.

    python benchmarks/bench_startup.py [MODEL] [--runs 3]

MODEL is a path or catalog name (default smollm2-135m-instruct). The first measurement runs
with an empty Numba cache (NUMBA_CACHE_DIR pointed at a new temporary folder): what a fresh
install pays once, compiling every kernel; its stderr shows whether the "compiling kernels"
notice appeared. The following runs reuse that cache, as every later start does. Each run is a
new process: interpreter start, imports, model load, kernel warm-up, prefill, one token.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def time_to_first_token(model: str, env: dict) -> tuple[float, float, str]:
    """(seconds to the first byte on stdout, seconds to exit, stderr) of one `lantern run`."""
    cmd = [sys.executable, "-m", "lanternlm.cli", "run", model, "-p", "Hello, my name is", "-n", "1",
           "--temp", "0"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.read(1)
    first_s = time.perf_counter() - start
    _, err = proc.communicate()
    total_s = time.perf_counter() - start
    if proc.returncode != 0 or not first:
        raise RuntimeError(f"lantern run failed ({proc.returncode}): {err.decode(errors='replace')}")
    return first_s, total_s, err.decode(errors="replace")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="smollm2-135m-instruct")
    parser.add_argument("--runs", type=int, default=3, help="warm-cache runs after the cold one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lantern-numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        first_s, total_s, err = time_to_first_token(args.model, env)
        notice = "notice shown" if "compiling kernels" in err else "NO notice"
        print(f"cold cache: first token {first_s:6.2f} s, exit {total_s:6.2f} s ({notice})")
        for i in range(args.runs):
            first_s, total_s, _ = time_to_first_token(args.model, env)
            print(f"warm cache: first token {first_s:6.2f} s, exit {total_s:6.2f} s")


if __name__ == "__main__":
    main()
