"""Bounded-memory checks for tests that feed hostile input.

`with bounded_memory(limit): ...` lets the block allocate at most `limit` more bytes. On Linux
the kernel enforces it: the address space is capped at its current size plus `limit`
(RLIMIT_AS), so an allocation past it raises MemoryError at once instead of filling the
machine, and costs nothing while the block runs. Elsewhere tracemalloc measures the block's
peak (Python and numpy allocations) and the check fails afterwards if it went past.
"""
from __future__ import annotations

import contextlib
import sys
import tracemalloc

try:
    import resource
except ImportError:  # Windows
    resource = None


def _address_space_bytes() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@contextlib.contextmanager
def bounded_memory(limit: int):
    now = _address_space_bytes() if resource and sys.platform.startswith("linux") else None
    if now is not None:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = now + limit
        if soft == resource.RLIM_INFINITY or soft > cap:
            resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        return
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= limit, f"the block allocated {peak} bytes at its peak, more than {limit}"
