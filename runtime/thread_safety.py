"""Engines in several Python threads, under any of Numba's threading layers.

Numba runs parallel kernels on one of three threading layers, the first that loads of TBB,
OpenMP and its own "workqueue" (NUMBA_THREADING_LAYER may name one). TBB and OpenMP accept
parallel regions launched from several threads at once. Workqueue does not: it aborts the
whole process ("workqueue threading layer is not threadsafe"). Numba falls back to it where
neither the `tbb` package nor an OpenMP runtime (libgomp on Linux, libomp on macOS) loads.

So that "one Model per thread" holds everywhere, an Engine runs its kernels (binding and
evaluation) inside `kernel_section()`: a no-op under TBB or OpenMP, one process-wide lock
under workqueue, so that engines in different threads then take turns, one `eval` at a time.
Until Numba has launched its threads the layer is unknown, and the lock is taken too.
"""
from __future__ import annotations

import threading
from contextlib import AbstractContextManager, nullcontext

import numba

_WORKQUEUE_LOCK = threading.RLock()
_NO_LOCK = nullcontext()


def threading_layer() -> str | None:
    """The layer Numba runs parallel kernels on ("tbb", "omp", "workqueue"), or None before its
    first parallel kernel."""
    try:
        return numba.threading_layer()
    except ValueError:  # "Threading layer is not initialized."
        return None


def kernel_section() -> AbstractContextManager:
    """Hold this around kernel calls that may run while other threads run theirs."""
    return _NO_LOCK if threading_layer() in ("tbb", "omp") else _WORKQUEUE_LOCK
