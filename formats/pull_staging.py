"""The folder a pull downloads and assembles in: removed however the pull ends.

A pull works in `.pull-NAME-XXXX/` inside the cache (the same file system, so the verified
file can be renamed into place). The folder goes when the pull ends, by success, error or
Ctrl-C; a Ctrl-C that arrives while it is being removed waits until it is gone, since a
cut-short removal would leave hundreds of MB behind. A process killed outright (SIGKILL,
power loss) cleans nothing, so each pull holds an flock on its folder while it runs and the
next pull removes every folder whose lock is free: the kernel drops a dead process's locks.
Creating and locking a folder happens under an flock of the cache directory, which the sweep
takes too, so it never mistakes a folder created a moment ago, not yet locked, for a dead one.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["PREFIX", "staging_folder", "remove_stale_folders", "interrupts_deferred"]

PREFIX = ".pull-"


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Run the block to its end even if Ctrl-C comes; the KeyboardInterrupt follows it.

    Only the main thread receives KeyboardInterrupt (and only it may set signal handlers), so
    elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        if received:
            raise KeyboardInterrupt


@contextmanager
def _locked(folder: Path, blocking: bool = True) -> Iterator[int | None]:
    """An exclusive flock on `folder` for the block: its descriptor, or None when another
    process holds the lock and `blocking` is False."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield None
            return
        yield fd
    finally:
        os.close(fd)


def _remove_unlocked(cache: Path) -> None:
    for folder in cache.glob(PREFIX + "*"):
        if not folder.is_dir() or folder.is_symlink():
            continue
        with _locked(folder, blocking=False) as fd:
            if fd is not None:          # no live pull holds it: its process is gone
                shutil.rmtree(folder, ignore_errors=True)


def remove_stale_folders(cache: Path) -> None:
    """Remove the staging folders of pulls whose process died without cleaning up."""
    if cache.is_dir():
        with interrupts_deferred(), _locked(cache):
            _remove_unlocked(cache)


@contextmanager
def staging_folder(cache: Path, name: str) -> Iterator[Path]:
    """A new, locked `.pull-NAME-XXXX` folder in `cache` for the block; removed afterwards
    (stale folders of dead pulls are removed first)."""
    folder, fd = None, None
    try:
        with interrupts_deferred(), _locked(cache):
            _remove_unlocked(cache)
            folder = Path(tempfile.mkdtemp(dir=cache, prefix=f"{PREFIX}{name}-"))
            fd = os.open(folder, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield folder
    finally:
        with interrupts_deferred():
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)   # still locked: no sweep races us
            if fd is not None:
                os.close(fd)
