"""Reading byte ranges of a file around the page cache, with every byte counted.

Weights that do not stay resident are read from disk each time they are used. The reads go
through O_DIRECT (aligned offsets, lengths and buffers) so that the kernel's page cache can
neither flatter the figures nor be charged to a memory-capped process; where the filesystem
refuses O_DIRECT (tmpfs, some network filesystems) the file is read normally and the pages
read are dropped again with posix_fadvise(DONTNEED).

`os.preadv` releases the GIL, so a reader thread overlaps reads with the kernels' work.
"""
from __future__ import annotations

import mmap
import os
import threading
import time

import numpy as np

ALIGN = 4096  # O_DIRECT needs offsets, lengths and buffer addresses aligned to the block size


def align_down(n: int) -> int:
    return n & ~(ALIGN - 1)


def align_up(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def aligned_empty(nbytes: int) -> np.ndarray:
    """uint8 (nbytes,) whose first byte is page aligned (anonymous memory, not file pages)."""
    size = max(align_up(nbytes), ALIGN)
    return np.frombuffer(mmap.mmap(-1, size), dtype=np.uint8)[:nbytes]


def span_bytes(offset: int, nbytes: int) -> int:
    """Bytes an aligned read of [offset, offset + nbytes) transfers (the buffer it needs)."""
    return align_up(offset + nbytes) - align_down(offset)


class DirectReader:
    """Reads byte ranges of one file into caller buffers; counts bytes, reads and seconds.

    Safe to use from several threads (each call is one positioned read plus counter updates).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.size = os.path.getsize(self.path)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
            self.direct = hasattr(os, "O_DIRECT")
        except OSError:  # EINVAL: the filesystem has no O_DIRECT
            self.fd = os.open(self.path, os.O_RDONLY)
            self.direct = False
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.reads = 0
        self.seconds = 0.0

    def read_into(self, buf: np.ndarray, offset: int, nbytes: int) -> np.ndarray:
        """Read file bytes [offset, offset + nbytes) and return them as a view of `buf`.

        buf: page-aligned uint8 of at least span_bytes(offset, nbytes) (see aligned_empty)."""
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            raise ValueError(f"{self.path}: bytes [{offset}, {offset + nbytes}) lie outside the "
                             f"file of {self.size} bytes")
        start, end = align_down(offset), align_up(offset + nbytes)
        if buf.size < end - start:
            raise ValueError(f"read buffer of {buf.size} bytes is smaller than the {end - start}-byte span")
        t0 = time.perf_counter()
        view, got, pos = memoryview(buf)[:end - start], 0, start
        while pos < offset + nbytes:  # short reads: at the end of the file, or interrupted
            n = os.preadv(self.fd, [view[got:]], pos)
            if n == 0:
                raise OSError(f"{self.path}: file ended at byte {pos} while reading weights "
                              f"(was it truncated while in use?)")
            got += n
            pos += n
        if not self.direct:
            os.posix_fadvise(self.fd, start, end - start, os.POSIX_FADV_DONTNEED)
        with self._lock:
            self.bytes_read += got
            self.reads += 1
            self.seconds += time.perf_counter() - t0
        return buf[offset - start:offset - start + nbytes]

    def read_copy(self, offset: int, nbytes: int) -> np.ndarray:
        """A new uint8 (nbytes,) array (anonymous memory) holding file bytes [offset, offset + nbytes)."""
        # a view into the aligned span: at most 2 pages more than nbytes stay allocated
        return self.read_into(aligned_empty(span_bytes(offset, nbytes)), offset, nbytes)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self):
        try:
            self.close()
        except OSError:
            pass
