"""Streaming a fixed sequence of weight chunks from disk, one read ahead of the kernels.

A forward pass uses its non-resident weights in the same order every time, so the reads can be
scheduled once: `items` lists the byte ranges (chunks) in use order, and the stream cycles
through them forever. One I/O thread reads up to `n_slots` chunks ahead of the consumer into a
ring of preallocated, page-aligned slots (nothing is allocated per token), so a chunk is read
while the previous one is being multiplied, and the next pass's first chunks are read while the
output head of this pass computes.

The consumer (the executor's thread) calls `acquire(i)` for item i, runs the kernel on the
returned bytes, then `release()`. If a pass was abandoned halfway (an exception, Ctrl-C), the
next `acquire` finds the ring at another item and restarts the reads there.
"""
from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from .direct_io import DirectReader, aligned_empty, span_bytes


class WeightStream:
    """Cyclic read-ahead of `items` ((file offset, nbytes) pairs, in use order) from `reader`."""

    def __init__(self, reader: DirectReader, items: Sequence[tuple[int, int]], n_slots: int = 4):
        if not items:
            raise ValueError("a weight stream needs at least one chunk to read")
        self.reader = reader
        self.items = [(int(o), int(n)) for o, n in items]
        self.n_slots = max(1, min(n_slots, len(self.items)))
        slot_bytes = max(span_bytes(o, n) for o, n in self.items)
        self.slots = [aligned_empty(slot_bytes) for _ in range(self.n_slots)]
        self._views: list[np.ndarray | None] = [None] * self.n_slots
        self._cond = threading.Condition()
        self._head = 0        # next sequence number the reader takes (item = seq % len(items))
        self._tail = 0        # next sequence number the consumer takes
        self._ready = 0       # sequence numbers below this have been read
        self._epoch = 0       # bumped when the consumer restarts the ring at another item
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._read_loop, name="lantern-weight-reader", daemon=True)
        self._thread.start()

    @property
    def buffer_bytes(self) -> int:
        """Memory held by the ring of slots."""
        return sum(s.size for s in self.slots)

    # ---- reader thread -------------------------------------------------------------------
    def _read_loop(self) -> None:
        n_items = len(self.items)
        while True:
            with self._cond:
                while not self._closed and self._head - self._tail >= self.n_slots:
                    self._cond.wait()
                if self._closed:
                    return
                seq, epoch = self._head, self._epoch
                self._head += 1
            offset, nbytes = self.items[seq % n_items]
            try:
                view = self.reader.read_into(self.slots[seq % self.n_slots], offset, nbytes)
            except BaseException as exc:  # handed to the consumer, which raises it
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                return
            with self._cond:
                if epoch == self._epoch:  # a read from before a restart is simply dropped
                    self._views[seq % self.n_slots] = view
                    self._ready = seq + 1
                    self._cond.notify_all()

    # ---- consumer ------------------------------------------------------------------------
    def acquire(self, item: int) -> np.ndarray:
        """The bytes of `items[item]` (a uint8 view valid until `release`), waiting for the read."""
        n_items = len(self.items)
        with self._cond:
            if self._tail % n_items != item:  # the last pass stopped early: restart at `item`
                self._epoch += 1
                self._tail = self._head = self._ready = self._head + (item - self._head) % n_items
                self._cond.notify_all()
            while self._ready <= self._tail:
                if self._error is not None:
                    raise OSError(f"reading weights from {self.reader.path} failed: {self._error}") \
                        from self._error
                if self._closed:
                    raise RuntimeError("the weight stream is closed")
                self._cond.wait()
            return self._views[self._tail % self.n_slots]

    def release(self) -> None:
        """The chunk last acquired is done with: its slot may be refilled."""
        with self._cond:
            self._tail += 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
