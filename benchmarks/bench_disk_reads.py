"""The disk's read curve: throughput of O_DIRECT reads by read size and queue depth.

    python benchmarks/bench_disk_reads.py [--file PATH] [--size-mb 1024] [--seconds 2]

Writes a scratch file of --size-mb random bytes (unless --file names an existing one), then for
each read size (4 KiB .. 16 MiB) and each number of concurrent readers (threads issuing
os.preadv, which releases the GIL) reads random aligned offsets through offload.DirectReader
for about --seconds, and prints MB/s and reads/s. Sequential reads of the whole file are
measured once too. The page cache is bypassed (O_DIRECT), so the figures are the device's.

The offload planner's cost model and the streaming chunk size come from this curve; record
your machine's in offload/README.md.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

import numpy as np

from lanternlm.offload.direct_io import DirectReader, aligned_empty

SIZES = [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20]
DEPTHS = [1, 2, 4, 8]


def random_reads(path: str, read_bytes: int, depth: int, seconds: float) -> tuple[float, float]:
    """(MB/s, reads/s) of `depth` threads reading random aligned `read_bytes` ranges."""
    reader = DirectReader(path)
    n_blocks = reader.size // read_bytes
    stop = time.perf_counter() + seconds

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        buf = aligned_empty(read_bytes)
        while time.perf_counter() < stop:
            reader.read_into(buf, int(rng.integers(0, n_blocks)) * read_bytes, read_bytes)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(depth)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    reader.close()
    return reader.bytes_read / elapsed / 1e6, reader.reads / elapsed


def sequential_read(path: str, read_bytes: int = 4 << 20) -> float:
    """MB/s of one pass over the file in read_bytes pieces."""
    reader = DirectReader(path)
    buf = aligned_empty(read_bytes)
    t0 = time.perf_counter()
    for offset in range(0, reader.size - read_bytes + 1, read_bytes):
        reader.read_into(buf, offset, read_bytes)
    elapsed = time.perf_counter() - t0
    reader.close()
    return reader.bytes_read / elapsed / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", help="an existing file to read (default: a scratch file written here)")
    ap.add_argument("--size-mb", type=int, default=1024, help="scratch file size (default 1024)")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement (default 2)")
    args = ap.parse_args()

    scratch = None
    path = args.file
    if path is None:
        fd, scratch = tempfile.mkstemp(prefix="lantern-disk-", dir=os.path.expanduser("~"))
        chunk = np.random.default_rng(0).integers(0, 256, 64 << 20, dtype=np.uint8).tobytes()
        with os.fdopen(fd, "wb") as f:
            for _ in range(max(1, args.size_mb // 64)):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        path = scratch
    try:
        print(f"file {path}: {os.path.getsize(path) / 1e6:.0f} MB, O_DIRECT reads")
        print(f"sequential 4 MiB reads: {sequential_read(path):.0f} MB/s")
        print(f"{'read size':>10} " + " ".join(f"{f'depth {d}':>22}" for d in DEPTHS))
        for size in SIZES:
            cells = []
            for depth in DEPTHS:
                mbps, iops = random_reads(path, size, depth, args.seconds)
                cells.append(f"{mbps:8.0f} MB/s {iops:7.0f}/s")
            label = f"{size >> 10} KiB" if size < 1 << 20 else f"{size >> 20} MiB"
            print(f"{label:>10} " + " ".join(cells))
    finally:
        if scratch:
            os.unlink(scratch)


if __name__ == "__main__":
    main()
