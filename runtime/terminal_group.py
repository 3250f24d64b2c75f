"""Own the terminal's Ctrl-C for an interactive chat, even when a parent process shares it.

Ctrl-C sends SIGINT to every process of the terminal's foreground process group. A shell
gives each command a group of its own, but `make chat` runs the chat inside make's group:
make then receives the chat's Ctrl-C too, waits for the chat to end and kills itself with
SIGINT, so `make chat` exits 130 after a chat that ended normally. While the block runs, the
chat moves into a process group of its own and makes it the terminal's foreground group, so
its Ctrl-C reaches it alone; afterwards the terminal goes back to the parent's group.

Ctrl-Z must still suspend the whole job, make included, or the shell would wait on a make
that never stops: on SIGTSTP the chat hands the terminal back, rejoins the parent's group and
stops that group; when the shell resumes the job (`fg`), it takes the terminal again.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["own_foreground_group"]


def _shares_parent_group(fd: int) -> bool:
    """Whether this process is in the terminal's foreground group without leading it (and can
    act on it: only the main thread may set signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp() != os.getpid()
    except OSError:             # not a terminal
        return False


def _take_terminal(fd: int) -> None:
    os.setpgid(0, 0)
    os.tcsetpgrp(fd, os.getpgrp())


def _give_terminal(fd: int, group: int) -> None:
    os.tcsetpgrp(fd, group)
    os.setpgid(0, group)


@contextmanager
def own_foreground_group(fd: int) -> Iterator[None]:
    """Run the block as the only process of the terminal `fd`'s foreground group (see above).
    Nothing changes when this process leads its group already or `fd` is no terminal."""
    if not _shares_parent_group(fd):
        yield
        return
    parent = os.getpgrp()

    def suspend(signum, frame) -> None:
        _give_terminal(fd, parent)
        os.killpg(parent, signal.SIGSTOP)      # the job stops, this process with it
        _take_terminal(fd)                     # resumed by `fg`

    # tcsetpgrp from a group that is not (or no longer) in the foreground raises SIGTTOU
    previous = {sig: signal.signal(sig, handler)
                for sig, handler in ((signal.SIGTTOU, signal.SIG_IGN), (signal.SIGTSTP, suspend))}
    try:
        _take_terminal(fd)
        owned = True
    except OSError:             # stay as we were: in the parent's group, in the foreground
        os.setpgid(0, parent)
        owned = False
    try:
        yield
    finally:
        if owned:
            try:
                _give_terminal(fd, parent)
            except OSError:     # the parent's group is gone: nobody to hand the terminal to
                pass
        _restore(previous)


def _restore(handlers: dict) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
