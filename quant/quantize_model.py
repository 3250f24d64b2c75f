"""Quantize a GGUF model the way llama.cpp's `llama-quantize` does (without an importance matrix).

    from lanternlm.quant.quantize_model import quantize_model
    quantize_model("model-f16.gguf", "model-q4_k_m.gguf", "Q4_K_M")

The output is byte-identical to llama-quantize's for the same input and type: tensors in
llama.cpp's order (quant/mix.py), each converted to the type its mix rules pick (a tensor
already in that type is copied untouched), metadata copied with its value types, split keys
dropped, and `general.quantization_version` (2) and `general.file_type` (the llama ftype
number) set last. Every tensor is converted from float32: F32 directly, F16/BF16 widened
exactly, already quantized types dequantized first (only with `allow_requantize`, as in
llama.cpp, since quantizing twice compounds the error).

The file is written atomically (formats/writer.py): an error leaves no partial output, and an
output that is the input or lies in the model cache is refused before anything is written.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from gguf import GGML_QUANT_VERSION, GGMLQuantizationType as T, GGUFValueType, Keys

from ..formats.catalog import resolve
from ..formats.gguf import GGUFError, GGUFFile, read_gguf
from ..formats.output_guard import check_output_path
from ..formats.progress import progress_bar
from ..formats.writer import write_gguf
from . import QTYPES, dequantize, quantize
from .mix import FileType, TensorPlan, get_ftype, plan_mix

__all__ = ["QuantizeSummary", "plan_model", "quantize_model", "format_plan", "output_metadata"]

# Sources converted without --allow-requantize: widening them to float32 is exact.
FLOAT_SOURCES = frozenset({T.F32, T.F16, T.BF16})
# Keys llama-quantize removes (a quantized model is written as one file) or rewrites.
_DROPPED_KEYS = (Keys.Split.LLM_KV_SPLIT_NO, Keys.Split.LLM_KV_SPLIT_COUNT, Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT)
_SET_KEYS = (Keys.General.QUANTIZATION_VERSION, Keys.General.FILE_TYPE)
_MIB = 1024.0 * 1024.0


@dataclass(frozen=True)
class QuantizeSummary:
    ftype: FileType
    plan: list[TensorPlan]

    @property
    def n_elements(self) -> int:
        return sum(p.n_elements for p in self.plan)

    @property
    def src_nbytes(self) -> int:
        return sum(p.src_nbytes for p in self.plan)

    @property
    def dst_nbytes(self) -> int:
        return sum(p.dst_nbytes for p in self.plan)

    @property
    def n_fallbacks(self) -> int:
        return sum(p.fallback_from is not None for p in self.plan)


def open_model(path) -> GGUFFile:
    """read_gguf of a path or catalog name, with errors that name the file."""
    path = os.fspath(resolve(path))
    if not os.path.isfile(path):
        raise ValueError(f"{path}: not a file")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFError(f"{path}: not a GGUF file")
    try:
        return read_gguf(path)
    except GGUFError as err:
        raise GGUFError(f"{path}: {err}") from None


def plan_model(gguf_file: GGUFFile, qtype: str | FileType, *, allow_requantize: bool = False) -> QuantizeSummary:
    """The plan for quantizing an open model to `qtype`, checked to be executable."""
    ftype = get_ftype(qtype) if isinstance(qtype, str) else qtype
    plan = plan_mix(gguf_file, ftype)
    for p in plan:
        if p.converts:
            _check_conversion(p, allow_requantize)
    return QuantizeSummary(ftype, plan)


def _check_conversion(p: TensorPlan, allow_requantize: bool) -> None:
    if p.src_type not in QTYPES:
        raise ValueError(f"tensor {p.name!r} is {p.src_type.name}, which cannot be dequantized")
    if p.src_type not in FLOAT_SOURCES and not allow_requantize:
        raise ValueError(f"tensor {p.name!r} is already quantized ({p.src_type.name}); requantizing "
                         f"loses quality, pass --allow-requantize to do it anyway")
    if QTYPES.get(p.dst_type) is None or QTYPES[p.dst_type].quantize is None:
        raise ValueError(f"tensor {p.name!r}: quantizing to {p.dst_type.name} is not supported")


def output_metadata(gguf_file: GGUFFile, ftype: FileType):
    """(kv, kv_types, kv_array_types) of the quantized file, keys in llama-quantize's order."""
    kv = {k: v for k, v in gguf_file.kv.items() if k not in _DROPPED_KEYS and k not in _SET_KEYS}
    kv_types = {k: gguf_file.kv_types[k] for k in kv}
    kv_array_types = {k: t for k, t in gguf_file.kv_array_types.items() if k in kv}
    for key, value in ((Keys.General.QUANTIZATION_VERSION, GGML_QUANT_VERSION),
                       (Keys.General.FILE_TYPE, int(ftype.ftype))):
        kv[key] = value  # appended after the copied keys, as llama.cpp re-adds what it sets
        kv_types[key] = GGUFValueType.UINT32
    return kv, kv_types, kv_array_types


def convert_tensor(data: np.ndarray, p: TensorPlan) -> np.ndarray:
    """One planned tensor's output bytes: its source data, or the data converted to dst_type."""
    if not p.converts:
        return data
    x = dequantize(data, p.src_type, p.shape)
    if not np.isfinite(x).all():
        raise ValueError(f"tensor {p.name!r} contains NaN or infinite values")
    return quantize(x, p.dst_type)


def _converted(gguf_file: GGUFFile, plan: list[TensorPlan], progress: bool) -> Iterator[tuple]:
    with progress_bar(len(plan), "quantizing", "tensor", enabled=progress) as bar:
        for p in plan:
            bar.set_postfix_str(p.name, refresh=False)
            out = convert_tensor(gguf_file.tensors[p.name].data, p)
            bar.update(1)
            yield p.name, out, p.dst_type, p.shape


def quantize_model(src, dst, qtype: str | FileType, *, allow_requantize: bool = False,
                   progress: bool = False) -> QuantizeSummary:
    """Quantize the GGUF model `src` to `qtype` (e.g. "Q4_K_M") and write it to `dst`.

    `progress` shows it on stderr: a bar on a terminal, a line every few seconds elsewhere.

    `dst` may not be `src` (by any name) nor a path in the model cache (formats/output_guard.py)."""
    ftype = get_ftype(qtype) if isinstance(qtype, str) else qtype
    with open_model(src) as g:
        check_output_path(dst, inputs=[g.path])
        summary = plan_model(g, ftype, allow_requantize=allow_requantize)
        kv, kv_types, kv_array_types = output_metadata(g, ftype)
        write_gguf(dst, kv, _converted(g, summary.plan, progress), kv_types=kv_types,
                   kv_array_types=kv_array_types, spool_to_disk=True)
    return summary


def format_plan(summary: QuantizeSummary) -> str:
    """The plan as a table: one line per tensor, then the totals (what --dry-run prints)."""
    plan = summary.plan
    width = max((len(p.name) for p in plan), default=0)
    lines = []
    for i, p in enumerate(plan, 1):
        shape = "x".join(str(d) for d in p.shape)
        change = f"{p.src_type.name:>6} -> {p.dst_type.name:<6}" if p.converts else f"{p.src_type.name:>6}    {'':<6}"
        note = f"  ({p.fallback_from.name} does not fit rows of {p.shape[-1]})" if p.fallback_from else ""
        lines.append(f"[{i:4d}/{len(plan):4d}] {p.name:<{width}}  {shape:>15}  {change}  "
                     f"{p.src_nbytes / _MIB:9.3f} MiB -> {p.dst_nbytes / _MIB:9.3f} MiB{note}")
    n = max(summary.n_elements, 1)
    lines.append(f"{summary.ftype.name} (file type {int(summary.ftype.ftype)}): "
                 f"{summary.src_nbytes / _MIB:.2f} MiB ({summary.src_nbytes * 8 / n:.2f} bpw) -> "
                 f"{summary.dst_nbytes / _MIB:.2f} MiB ({summary.dst_nbytes * 8 / n:.2f} bpw)")
    if summary.n_fallbacks:
        lines.append(f"{summary.n_fallbacks} of {len(plan)} tensors fall back to a type whose blocks fit their rows")
    return "\n".join(lines)
