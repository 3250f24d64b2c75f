"""Setting up an engine under a RAM budget: which weights the graphs use how, what stays
resident (offload.residency), and the streaming CPU backend that serves the rest from disk.

With an offload plan the FFN blocks' up and down matrices are not the model's to place: the
plan's bundles serve them (backends/cpu_sparse.py). What every token needs in full (vectors,
attention, gates, the head) claims the budget first, as without a plan; what is left holds
neuron bundles, split evenly over the layers, half pinned (the hottest) and half cache slots.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Mapping

from ..offload.budget import parse_budget
from ..offload.direct_io import ALIGN, align_up
from ..offload.residency import Residency, plan_residency
from .backends.cpu import row_shape
from .backends.cpu_streaming import N_SLOTS, StreamingCpuBackend, row_chunks
from .graph import Graph, Op

MIN_CACHE_SLOTS = 64      # per layer, with a plan: below this the budget is refused


class PlanNotUsedWarning(UserWarning):
    """An offload plan found beside the model is not expected to pay at this budget."""


@dataclass(frozen=True)
class WeightUses:
    matrices: set[str]      # MUL_MAT weights: resident, or streamed in `order` at every use
    tables: set[str]        # gathered by row (GET_ROWS)
    order: list[str]        # matrices in the decode graph's order of use
    experts: set[str]       # stacked expert tensors (MOE_FFN): resident, or read expert by expert
    used: set[str]          # every tensor a graph reads


def weight_uses(graphs: Mapping[str, Graph]) -> WeightUses:
    uses = WeightUses(set(), set(), [], set(), set())
    for key, g in graphs.items():
        for node in g.nodes:
            uses.used.update(node.weights)
            if node.op is Op.MUL_MAT:
                name = node.weights[0]
                if key == "decode" and name not in uses.matrices:
                    uses.order.append(name)
                uses.matrices.add(name)
            elif node.op is Op.GET_ROWS:
                uses.tables.add(node.weights[0])
            elif node.op is Op.MOE_FFN:
                uses.experts.update(node.weights[1:])
    return uses


def stream_buffer_bytes(tensors, matrices) -> int:
    """An upper bound of the streaming slots: N_SLOTS spans of the largest chunk of any matrix
    (known before residency decides which matrices stream)."""
    largest = max((((r1 - r0) * row_shape(tensors[n])[1]) for n in matrices for r0, r1 in row_chunks(tensors[n])),
                  default=0)
    return N_SLOTS * (align_up(largest) + ALIGN)


def expert_buffer_bytes(tensors, experts) -> int:
    """The read buffers of streamed expert tensors: one expert's bytes each, at most."""
    return sum(align_up(tensors[n].nbytes // tensors[n].shape[0]) + ALIGN for n in experts)


def dense_read_bytes(gguf_file, graphs: Mapping[str, Graph], budget: int) -> int:
    """Bytes dense streaming (no plan, no draft) reads per evaluation at `budget`: every matrix
    that does not fit, plus one row of each table it gathers from disk."""
    tensors = gguf_file.tensors
    r = _placement(gguf_file, graphs, budget, None).residency
    return (sum(tensors[n].nbytes for n in r.streamed)
            + sum(row_shape(tensors[n])[1] for n in r.gathered))


def min_neuron_bytes(plan) -> int:
    """The least bundle memory a plan runs with: MIN_CACHE_SLOTS bundles per layer."""
    from ..offload.plan_file import bundle_bytes

    return sum(MIN_CACHE_SLOTS * sum(bundle_bytes(layer.up_type, plan.n_embd)) for layer in plan.layers)


def neuron_budget(plan, nbytes: int) -> list[tuple[int, int]]:
    """(pinned bundles, cache slots) per layer for `nbytes` of bundle memory: every bundle
    pinned when they all fit, else half the layer's share (at least MIN_CACHE_SLOTS) as cache
    slots and the rest for its hottest bundles."""
    from ..offload.plan_file import bundle_bytes

    out = []
    for layer in plan.layers:
        size = sum(bundle_bytes(layer.up_type, plan.n_embd))
        n = nbytes // plan.n_layer // size
        if n >= plan.n_ff:
            out.append((plan.n_ff, 0))
        elif n < MIN_CACHE_SLOTS:
            raise ValueError(f"the RAM budget leaves {nbytes / 1e6:.1f} MB for FFN neurons, too few for "
                             f"{MIN_CACHE_SLOTS} bundles of {size} bytes per layer; give a larger budget")
        else:
            slots = max(MIN_CACHE_SLOTS, n // 2)
            out.append((n - slots, slots))
    return out


def expected_plan_read_bytes(plan, residency: Residency, tensors, neurons: list[tuple[int, int]]) -> float:
    """Bytes a plan is expected to read per token: the matrices that stream anyway, plus each
    layer's active neurons (its calibrated 1 - sparsity) that are neither pinned nor, by the
    share of the unpinned bundles its cache slots can hold, cached."""
    from ..offload.plan_file import bundle_bytes

    total = float(sum(tensors[n].nbytes for n in residency.streamed))
    for layer, sparsity, (pinned, slots) in zip(plan.layers, plan.sparsity, neurons):
        unpinned = plan.n_ff - pinned
        if unpinned:
            active = (1 - float(sparsity)) * unpinned      # hot bundles are pinned: a bound from above
            total += active * (1 - min(slots / unpinned, 1.0)) * sum(bundle_bytes(layer.up_type, plan.n_embd))
    return total


def streaming_backend(gguf_file, kv, graphs: Mapping[str, Graph], ram_budget: int | str,
                      max_tokens: int, plan=None, plan_named: bool = True,
                      draft: bool = True) -> StreamingCpuBackend:
    """ram_budget: bytes, or a size as offload.budget.parse_budget reads it ('300MB', '40%');
    plan: an offload.plan_file.OffloadPlan checked against this model, or None (dense).
    A plan that was not named (found beside the model) is used only where it is expected to
    read fewer bytes per token than dense streaming at the same budget; otherwise a warning
    says so and the weights stream densely. draft: without a plan, where the output head
    streams, reserve head rows for a resident draft (runtime/resident_draft.py); the backend's
    `draft_rows` says how many (0: none)."""
    if not gguf_file.path:
        raise ValueError("a RAM budget streams weights from the model file, so the model must be a file")
    budget = parse_budget(ram_budget, os.path.getsize(gguf_file.path))
    where = _placement(gguf_file, graphs, budget, plan, draft)
    if plan is not None and not plan_named:
        expected = expected_plan_read_bytes(plan, where.residency, gguf_file.tensors, where.neurons)
        dense = dense_read_bytes(gguf_file, graphs, budget)
        if expected >= dense:
            from ..offload.budget import format_bytes

            warnings.warn(f"not using the offload plan {plan.path}: at a {format_bytes(budget)} budget it "
                          f"would read about {format_bytes(expected)} per token, dense streaming "
                          f"{format_bytes(dense)}", PlanNotUsedWarning, stacklevel=4)
            plan = None
            where = _placement(gguf_file, graphs, budget, None, draft)
    args = (gguf_file.tensors, kv, gguf_file.path, where.residency, where.schedules, max_tokens)
    if plan is None:
        backend = StreamingCpuBackend(*args)
    else:
        from .backends.cpu_sparse import SparseCpuBackend

        backend = SparseCpuBackend(*args, plan, where.neurons)
    backend.ram_budget = budget
    backend.draft_rows = where.draft_rows
    return backend


@dataclass(frozen=True)
class Placement:
    residency: Residency
    schedules: list[list[str]]              # streamed matrices in use order, one list per stream
    neurons: list[tuple[int, int]] | None   # with a plan: (pinned, cache slots) per layer
    draft_rows: int                         # head rows reserved for a resident draft (0: none)


def _placement(gguf_file, graphs, budget: int, plan, draft: bool = False) -> Placement:
    """Where each weight lives at `budget`. With `draft` (and no plan), if the output head
    streams and drafting is expected to pay (resident_draft.draft_pays), the budget first sets
    aside resident_draft.draft_rows of its rows, and the head streams on a stream of its own,
    so that verifying drafts reads it alone."""
    from .resident_draft import head_node

    uses = weight_uses(graphs)
    matrices, tables, order = uses.matrices, uses.tables, uses.order
    # tensors no graph reads (a fused matrix read through its row views, phi3) take no RAM
    sizes = {name: ref.nbytes for name, ref in gguf_file.tensors.items() if name in uses.used}
    if plan is not None:   # the plan's bundles serve every FFN block's up and down matrices
        served = {name for g in graphs.values() for b in g.ffn_blocks for name in b.weights[1:]}
        matrices -= served
        order = [name for name in order if name not in served]
        sizes = {name: n for name, n in sizes.items() if name not in served}
    buffers = stream_buffer_bytes(gguf_file.tensors, matrices) + expert_buffer_bytes(gguf_file.tensors, uses.experts)
    reserve = 0 if plan is None else min_neuron_bytes(plan)   # the neuron cache's minimum
    residency: Residency = plan_residency(sizes, matrices | uses.experts, tables, budget - reserve, buffers)
    node = head_node(graphs["decode"])
    head = node.weights[0] if node is not None else None
    rows = 0
    if draft and plan is None and head in residency.streamed:
        residency, rows = _with_draft_rows(residency, gguf_file.tensors[head], sizes, matrices | uses.experts, tables,
                                           budget, buffers)
    schedule = [name for name in order if name in residency.streamed]
    schedule += [name for name in residency.streamed if name not in schedule and name not in uses.experts]
    schedules = [[n for n in schedule if n != head], [head]] if rows else [schedule]
    neurons = None if plan is None else neuron_budget(plan, budget - residency.resident_bytes)
    return Placement(residency, schedules, neurons, rows)


def _with_draft_rows(residency: Residency, head_ref, sizes, matrices, tables, budget: int,
                     buffers: int) -> tuple[Residency, int]:
    """(residency, draft rows) with resident_draft.draft_rows of the streamed head's rows set
    aside first, and whatever the matrices then leave over as more rows; or (residency, 0) as
    given where that is not expected to pay (resident_draft.draft_pays) or leaves no room."""
    from .resident_draft import draft_pays, draft_rows

    rows, nbytes = draft_rows(head_ref, budget)
    if not rows:
        return residency, 0
    try:
        drafting = plan_residency(sizes, matrices, tables, budget - nbytes, buffers)
    except ValueError:           # the draft's rows leave no room for what must be resident
        return residency, 0
    body = lambda r: sum(sizes[n] for n in r.streamed if n != head_ref.name)    # noqa: E731
    if not draft_pays(body(residency), body(drafting), sizes[head_ref.name]):
        return residency, 0
    leftover = budget - nbytes - drafting.resident_bytes
    return drafting, min(row_shape(head_ref)[0], rows + leftover // (nbytes // rows))
