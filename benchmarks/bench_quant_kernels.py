"""Time the registered quantization kernels on one weight matrix (default 4096 x 4096).

    python benchmarks/bench_quant_kernels.py [Q4_0 Q8_0 ...] [--threads 1] [--rows 4096] [--cols 4096]
                                             [--tokens 32] [--cpu-time] [--from-memory]

For each type (default: every registered type) it prints the best of several runs of:
matvec as GB/s of weight bytes read, matmul over --tokens activation rows as GFLOP/s,
dequantize and quantize as millions of values per second. For F32 it also times numpy's
BLAS (np.dot) on the same matrix, the alternative to a Numba loop.

Where the weights come from matters more than anything for matvec: a 4096 x 4096 matrix is
9-64 MiB, which a large last-level cache holds (this development machine's L3 is 260 MiB),
and then repeated runs read it from the cache, not from memory, as decoding a model does.
Each matvec figure says which: "cache-resident" when the matrix fits the last-level cache
(read from Linux's sysfs), "from memory" when --from-memory cycles through enough copies of
it (together more than twice that cache) that every run finds its copy evicted.

On a machine shared with other work, wall time mostly measures the other work; with
--threads 1 --cpu-time it times the process's CPU time instead, which time spent waiting
for a core does not inflate.
"""
import argparse
import itertools
import math
import time
from pathlib import Path

import numba
import numpy as np

import lanternlm.quant as Q


CLOCK = time.perf_counter


def best_time(fn, repeat: int) -> float:
    fn()  # compile / warm the caches
    times = []
    for _ in range(repeat):
        start = CLOCK()
        fn()
        times.append(CLOCK() - start)
    return min(times)


def parse_cache_size(text: str) -> int:
    """Bytes of a sysfs cache size such as '266240K' or '32M'."""
    text = text.strip()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:].upper(), 1)
    return int(text[:-1] if scale > 1 else text) * scale


def last_level_cache_bytes(root: str = "/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """Size of the highest-level data or unified cache of CPU 0 (Linux sysfs); None if unknown."""
    found = []
    for index in Path(root).glob("index*"):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            found.append((int((index / "level").read_text()), parse_cache_size((index / "size").read_text())))
        except (OSError, ValueError):
            continue
    return max(found)[1] if found else None


def copies_beyond_cache(nbytes: int, llc: int) -> int:
    """How many copies of `nbytes` of weights together exceed twice the last-level cache."""
    return math.floor(2 * llc / nbytes) + 1


def where_from(nbytes: int, llc: int | None, copies: int) -> str:
    """What a matvec figure measures: weights read from the cache or from memory."""
    if copies > 1:
        return f"from memory: {copies} copies of {nbytes / 2**20:.1f} MiB"
    if llc is None:
        return "last-level cache size unknown"
    if nbytes <= llc:
        return f"cache-resident: {nbytes / 2**20:.1f} MiB <= {llc / 2**20:.0f} MiB last-level cache"
    return f"larger than the {llc / 2**20:.0f} MiB last-level cache"


def bench_type(name: str, x: np.ndarray, v: np.ndarray, acts: np.ndarray, llc: int | None,
               from_memory: bool) -> str:
    qt = Q.get(name)
    rows, n = x.shape
    if qt.quantize is None:
        return f"{name:7s} (no quantizer registered)"
    w = Q.quantize(x, name)
    out_v = np.empty(rows, np.float32)
    out_m = np.empty((acts.shape[0], rows), np.float32)
    dense = np.empty(rows * n, np.float32)
    copies = copies_beyond_cache(w.nbytes, llc) if from_memory and llc else 1
    rotation = itertools.cycle([w] + [w.copy() for _ in range(copies - 1)])
    t_mv = best_time(lambda: qt.matvec(out_v, next(rotation), v), 20)
    t_mm = best_time(lambda: qt.matmul(out_m, w, acts), 3)
    t_dq = best_time(lambda: qt.dequantize(dense, w.reshape(-1)), 5)
    t_q = best_time(lambda: qt.quantize(x), 1)
    return (f"{name:7s} matvec {w.nbytes / t_mv / 1e9:6.2f} GB/s ({t_mv * 1e3:6.2f} ms, "
            f"{where_from(w.nbytes, llc, copies)})   "
            f"matmul x{acts.shape[0]} {2 * acts.shape[0] * rows * n / t_mm / 1e9:6.1f} GFLOP/s   "
            f"dequantize {rows * n / t_dq / 1e6:6.0f} Mval/s   quantize {rows * n / t_q / 1e6:6.0f} Mval/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("types", nargs="*", help="type names (default: all registered)")
    parser.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=32, help="activation rows for matmul")
    parser.add_argument("--cpu-time", action="store_true", help="time process CPU, not wall clock")
    parser.add_argument("--from-memory", action="store_true",
                        help="matvec cycles through copies of the weights larger than the last-level cache")
    args = parser.parse_args()
    llc = last_level_cache_bytes()
    if args.from_memory and llc is None:
        parser.error("--from-memory needs the last-level cache size, which this OS does not report")
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    numba.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.cols)).astype(np.float32)
    v = rng.standard_normal(args.cols).astype(np.float32)
    acts = rng.standard_normal((args.tokens, args.cols)).astype(np.float32)
    names = args.types or [t.name for t in Q.QTYPES]
    print(f"{args.rows} x {args.cols} weights, {args.threads} Numba thread(s), "
          f"{'CPU' if args.cpu_time else 'wall'} time")
    for name in names:
        print(bench_type(name, x, v, acts, llc, args.from_memory), flush=True)
    if "F32" in names:
        out = np.empty(args.rows, np.float32)
        t_mv = best_time(lambda: np.dot(x, v, out=out), 20)
        t_mm = best_time(lambda: np.dot(acts, x.T), 3)
        print(f"np.dot  matvec {x.nbytes / t_mv / 1e9:6.2f} GB/s ({t_mv * 1e3:6.2f} ms, "
              f"{where_from(x.nbytes, llc, 1)})   "
              f"matmul x{args.tokens} {2 * args.tokens * x.size / t_mm / 1e9:6.1f} GFLOP/s   (F32 via BLAS)")


if __name__ == "__main__":
    main()
