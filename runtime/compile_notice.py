"""A notice on stderr when a step that is usually quick (loading compiled kernels) turns out slow.

Numba compiles the kernels for this CPU the first time they run and caches them on disk, so a
fresh install's first start spends 15-30 s compiling, later starts well under a second. Rather
than guess whether the cache is warm, the step runs under a timer: if it is still going after
`after` seconds the message appears, and when it ends, how long it took.
"""
from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, TextIO

COMPILING = "compiling kernels (first run on this machine only, usually under 30 s)..."


@contextmanager
def notice_if_slow(message: str = COMPILING, after: float = 1.0, stream: TextIO | None = None,
                   prefix: str = "lantern: ") -> Iterator[None]:
    stream = stream or sys.stderr
    start = time.perf_counter()
    shown = threading.Event()

    def show() -> None:
        shown.set()
        print(prefix + message, file=stream, flush=True)

    timer = threading.Timer(after, show)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()
        if shown.is_set():
            print(f"{prefix}ready in {time.perf_counter() - start:.1f} s", file=stream, flush=True)
