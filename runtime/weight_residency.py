"""Setting up an engine under a RAM budget: which weights the graphs use how, what stays
resident (offload.residency), and the streaming CPU backend that serves the rest from disk."""
from __future__ import annotations

import os
from typing import Mapping

from ..offload.budget import parse_budget
from ..offload.direct_io import ALIGN, align_up
from ..offload.residency import Residency, plan_residency
from .backends.cpu import row_shape
from .backends.cpu_streaming import N_SLOTS, StreamingCpuBackend, chunk_rows
from .graph import Graph, Op


def weight_uses(graphs: Mapping[str, Graph]) -> tuple[set[str], set[str], list[str]]:
    """(matrices, tables gathered by row, matrices in the decode graph's order of use)."""
    matrices, tables, order = set(), set(), []
    for key, g in graphs.items():
        for node in g.nodes:
            if node.op is Op.MUL_MAT:
                name = node.weights[0]
                if key == "decode" and name not in matrices:
                    order.append(name)
                matrices.add(name)
            elif node.op is Op.GET_ROWS:
                tables.add(node.weights[0])
    return matrices, tables, order


def stream_buffer_bytes(tensors, matrices) -> int:
    """An upper bound of the streaming slots: N_SLOTS spans of the largest chunk of any matrix
    (known before residency decides which matrices stream)."""
    largest = 0
    for name in matrices:
        n_rows, row_bytes = row_shape(tensors[name])
        largest = max(largest, min(chunk_rows(row_bytes), n_rows) * row_bytes)
    return N_SLOTS * (align_up(largest) + ALIGN)


def streaming_backend(gguf_file, kv, graphs: Mapping[str, Graph], ram_budget: int | str,
                      max_tokens: int) -> StreamingCpuBackend:
    """ram_budget: bytes, or a size as offload.budget.parse_budget reads it ('300MB', '40%')."""
    if not gguf_file.path:
        raise ValueError("a RAM budget streams weights from the model file, so the model must be a file")
    budget = parse_budget(ram_budget, os.path.getsize(gguf_file.path))
    matrices, tables, order = weight_uses(graphs)
    sizes = {name: ref.nbytes for name, ref in gguf_file.tensors.items()}
    buffers = stream_buffer_bytes(gguf_file.tensors, matrices)
    residency: Residency = plan_residency(sizes, matrices, tables, budget, buffers)
    schedule = [name for name in order if name in residency.streamed]
    schedule += [name for name in residency.streamed if name not in schedule]
    return StreamingCpuBackend(gguf_file.tensors, kv, gguf_file.path, residency, schedule, max_tokens)
