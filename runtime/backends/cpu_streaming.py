"""The CPU backend under a RAM budget: some weights resident, the rest streamed from disk.

`offload.residency` decides which tensors are copied into RAM at load (read around the page
cache, so the file's pages are never charged to the process); every other matrix is read from
disk at each use, in chunks of CHUNK_BYTES, by an `offload.WeightStream` that runs one I/O
thread ahead of the kernels. A streamed chunk goes through the very kernel the in-RAM engine
would use on the same bytes (only the rows differ per call), so dense streaming is bit-identical
to the in-RAM engine. Tables that are only gathered (the token embedding, when it is not also
the output head) are read a row per token.

A mixture of experts' stacked expert tensors stream by expert: where one is not resident,
the MoE kernel reads only the experts its router picks, each from its own offset, when it
needs them (backends/moe.py), outside the sequential schedule of the other matrices.

Counters (bytes read, reads, seconds) live on the one `DirectReader` (`backend.reader`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ...offload.direct_io import ALIGN, DirectReader, align_up, aligned_empty
from ...offload.residency import Residency
from ...offload.weight_stream import WeightStream
from ..graph import Op
from .cpu import CpuBackend, row_shape

CHUNK_BYTES = 4 << 20   # one streamed read: large enough for the disk's sequential rate
N_SLOTS = 4             # chunks read ahead of the kernels


def _streamed_matvec(stream, item, kernel, out, x, shape):
    """out (r,) = W[rows of item] @ x, the rows' bytes taken from the stream."""
    w = stream.acquire(item).reshape(shape)
    kernel(out, w, x)
    stream.release()


def streamed_matmul(stream, item, kernel, out, x, shape, scratch):
    """out (t, r) (a column block of the full output) = x @ W[rows of item].T, via `scratch`."""
    w = stream.acquire(item).reshape(shape)
    part = scratch[:x.shape[0] * shape[0]].reshape(x.shape[0], shape[0])
    kernel(part, w, x)
    stream.release()
    out[...] = part


def _gather_rows(reader, offset, row_bytes, ids, row_buf, gathered, dequantize, out_flat, gathered_flat):
    """out = dequantize(table[ids]) with each row read from disk (table at file `offset`)."""
    for j in range(ids.shape[0]):
        gathered[j] = reader.read_into(row_buf, offset + int(ids[j]) * row_bytes, row_bytes)
    dequantize(out_flat, gathered_flat)


def chunk_rows(row_bytes: int) -> int:
    """Rows per streamed chunk: a multiple of 16 (whole register tiles) near CHUNK_BYTES."""
    return max(16, (CHUNK_BYTES // row_bytes) // 16 * 16)


def row_chunks(ref) -> list[tuple[int, int]]:
    """A streamed matrix's chunks as (first row, end row) pairs."""
    n_rows, row_bytes = row_shape(ref)
    step = chunk_rows(row_bytes)
    return [(r0, min(r0 + step, n_rows)) for r0 in range(0, n_rows, step)]


class StreamingCpuBackend(CpuBackend):
    def __init__(self, tensors, kv, path: str, residency: Residency, schedules: Sequence[Sequence[str]],
                 max_tokens: int):
        """schedules: the streamed matrices in the order a forward pass uses them, in one or more
        groups, each read by a stream of its own (a drafting engine reads its output head apart
        from the layers, see runtime/resident_draft.py); the groups share N_SLOTS slots."""
        super().__init__(tensors, kv)
        self.residency = residency
        self.reader = DirectReader(path)
        self._resident: dict[str, np.ndarray] = {}
        self._items: dict[tuple[str, int], tuple[WeightStream, int]] = {}   # (matrix, first row) ->
        self.streams: list[WeightStream] = []
        widest = 0
        groups = [g for g in schedules if g]
        for group in groups:
            items, keys = [], []
            for name in group:
                row_bytes = row_shape(tensors[name])[1]
                for r0, r1 in row_chunks(tensors[name]):
                    keys.append((name, r0))
                    items.append((tensors[name].offset + r0 * row_bytes, (r1 - r0) * row_bytes))
                    widest = max(widest, r1 - r0)
            stream = WeightStream(self.reader, items, max(2, N_SLOTS // len(groups)))
            self.streams.append(stream)
            self._items.update({key: (stream, i) for i, key in enumerate(keys)})
        self._scratch = np.empty(max_tokens * widest, dtype=np.float32)  # one chunk's matmul output
        self._row_bufs: dict[str, np.ndarray] = {}
        for name in sorted(residency.resident):
            ref = tensors[name]
            self._resident[name] = self.reader.read_copy(ref.offset, ref.nbytes)
        self.load_bytes = self.reader.bytes_read
        # weights in RAM: the resident copies and the streams' slots (the matmul scratch holds
        # activations, as the executor's arena does, and is not charged to the budget)
        self.resident_bytes = (sum(a.size for a in self._resident.values())
                               + sum(s.buffer_bytes for s in self.streams))

    def stream_item(self, name: str, r0: int) -> tuple[WeightStream, int]:
        """The stream that reads matrix `name`'s chunk starting at row r0, and its item there."""
        return self._items[(name, r0)]

    @property
    def bytes_read(self) -> int:
        return self.reader.bytes_read

    @property
    def read_seconds(self) -> float:
        return self.reader.seconds

    def weight_bytes(self, name: str) -> np.ndarray:
        w = self._resident.get(name)
        if w is None:
            raise KeyError(f"{name} is streamed from disk, not resident")
        return w

    def close(self) -> None:
        """Stop the reader thread and close the file (the stream's thread holds only the stream,
        so this runs when the engine is collected)."""
        for stream in self.streams:
            stream.close()
        self.streams = []
        self.reader.close()

    def __del__(self):
        self.close()

    # ---- binding ---------------------------------------------------------------------------
    def bind(self, node, out, srcs, t, row_exact=False):
        name = node.weights[0] if node.weights else None
        if node.op is Op.MUL_MAT and name in self.residency.streamed:
            return self._bind_streamed_mul_mat(name, out, srcs[0], row_exact)
        if node.op is Op.GET_ROWS and name not in self.residency.resident:
            return self._bind_gathered_rows(name, out, srcs[0], t)
        return super().bind(node, out, srcs, t, row_exact)

    def _bind_streamed_mul_mat(self, name, out, x, row_exact=False):
        _, qt = self._qtype(name)
        row_bytes = row_shape(self.tensors[name])[1]
        calls = []
        for r0, r1 in row_chunks(self.tensors[name]):
            (stream, item), shape = self.stream_item(name, r0), (r1 - r0, row_bytes)
            if x.shape[0] == 1:
                calls.append((_streamed_matvec, (stream, item, qt.matvec, out[0, r0:r1], x[0], shape)))
            else:   # row-exact where asked: each row exactly what decode computes for it
                kernel = qt.row_exact_matmul if row_exact else qt.matmul
                calls.append((streamed_matmul, (stream, item, kernel, out[:, r0:r1], x, shape, self._scratch)))
        return calls

    def expert_fetch(self, name: str, n_expert: int):
        """Resident: a view per expert; streamed: e -> expert e's bytes read from disk into a
        buffer of this tensor's (valid until the next read of the same tensor)."""
        if name not in self.residency.streamed:
            return super().expert_fetch(name, n_expert)
        ref = self.tensors[name]
        rows, row_bytes = row_shape(ref)
        rows //= n_expert
        nbytes = rows * row_bytes
        buf = aligned_empty(align_up(nbytes) + ALIGN)
        reader = self.reader

        def fetch(e: int) -> np.ndarray:
            return reader.read_into(buf, ref.offset + e * nbytes, nbytes).reshape(rows, row_bytes)
        return fetch

    def _bind_gathered_rows(self, name, out, ids, t):
        ref, qt = self._qtype(name)
        _, row_bytes = row_shape(ref)
        gathered = np.empty((t, row_bytes), dtype=np.uint8)
        row_buf = self._row_bufs.get(name)
        if row_buf is None:  # an unaligned row spans at most one page more than its rounded size
            row_buf = self._row_bufs[name] = aligned_empty(align_up(row_bytes) + ALIGN)
        return [(_gather_rows, (self.reader, ref.offset, row_bytes, ids, row_buf, gathered, qt.dequantize,
                                out.reshape(-1), gathered.reshape(-1)))]
