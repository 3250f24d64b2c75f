"""A notice on stderr while Numba compiles kernels, and only then.

Numba compiles the kernels for this CPU the first time they run and caches them on disk, so a
fresh install's first start spends 15-30 s compiling, later starts load them in well under a
second. Numba announces each real compilation with a "numba:compile" event (a kernel found
in its disk cache raises none), so the notice appears when the first compilation starts and,
when the step ends, how long it took. A warm start on a busy machine, slow as it may be, stays
silent.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

from numba.core import event

COMPILING = "compiling kernels (first run on this machine only, usually under 30 s)..."


class _FirstCompilation(event.Listener):
    """Calls `on_first` when the first compilation starts."""

    def __init__(self, on_first: Callable[[], None]):
        self.on_first = on_first
        self.seen = False

    def on_start(self, ev) -> None:
        if not self.seen:
            self.seen = True
            self.on_first()

    def on_end(self, ev) -> None:
        pass


@contextmanager
def notice_if_compiling(message: str = COMPILING, stream: TextIO | None = None,
                        prefix: str = "lantern: ") -> Iterator[None]:
    stream = stream or sys.stderr
    start = time.perf_counter()
    listener = _FirstCompilation(lambda: print(prefix + message, file=stream, flush=True))
    with event.install_listener("numba:compile", listener):
        yield
    if listener.seen:
        print(f"{prefix}ready in {time.perf_counter() - start:.1f} s", file=stream, flush=True)
