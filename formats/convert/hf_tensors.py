"""Checkpoint tensors -> GGUF tensors: names, completeness, storage types, conversion.

Names come from gguf-py's TensorNameMap for the family's architecture (the table llama.cpp's
converter uses), so `model.layers.3.self_attn.q_proj.weight` becomes `blk.3.attn_q.weight`.

Storage types follow llama.cpp's converter: 1-D tensors, norms and anything that is not a
`.weight` (biases) stay float32; the other weights take the requested type, except that a
block type whose block does not divide the row length (Q8_0 on rows that are not a multiple of
32) falls back to F16, as llama.cpp does when gguf-py refuses to quantize.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .checkpoint import ConvertError, HFCheckpoint, SafetensorsTensor
from .families import Family
from .hf_config import HFConfig

__all__ = ["TensorJob", "plan_tensors", "storage_type", "convert_tensors"]

T = gguf.MODEL_TENSOR
F32 = GGMLQuantizationType.F32
TOKEN_EMBD = gguf.TENSOR_NAMES[T.TOKEN_EMBD] + ".weight"
OUTPUT = gguf.TENSOR_NAMES[T.OUTPUT] + ".weight"
OUTPUT_NORM = gguf.TENSOR_NAMES[T.OUTPUT_NORM] + ".weight"
ROPE_FREQS = gguf.TENSOR_NAMES[T.ROPE_FREQS] + ".weight"
# rows indexed by token id: cut to the vocabulary (Gemma's out-of-vocabulary rows)
VOCAB_ROWS = (TOKEN_EMBD, OUTPUT)
# checkpoint tensors llama.cpp's converter drops: buffers, not weights
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")
LM_HEAD = "lm_head.weight"


@dataclass(frozen=True)
class TensorJob:
    """One GGUF tensor to write: read from the checkpoint, computed from the config, or stacked
    from several checkpoint tensors (`parts`: (HF name, tensor) in stacking order)."""
    gguf_name: str
    hf_name: str | None = None
    source: SafetensorsTensor | None = None
    generated: np.ndarray | None = None
    parts: tuple[tuple[str, SafetensorsTensor], ...] = ()

    def load(self, family: Family, cfg: HFConfig) -> np.ndarray:
        if self.generated is not None:
            return self.generated
        if self.parts:
            return np.stack([family.transform(name, part.to_f32(), cfg) for name, part in self.parts])
        return family.transform(self.hf_name, self.source.to_f32(), cfg)


def _file_order(name: str) -> tuple:
    """llama.cpp's layout: embeddings and rope factors, the blocks in number order, then the head."""
    group = 1 if name.startswith("blk.") else 0 if name in (TOKEN_EMBD, ROPE_FREQS) else 2
    return group, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def plan_tensors(ckpt: HFCheckpoint, family: Family, cfg: HFConfig) -> list[TensorJob]:
    """The GGUF tensors of the checkpoint, in file order; refuses unknown or missing ones."""
    name_map = gguf.get_tensor_name_map(family.arch, cfg.n_layer)
    jobs: dict[str, TensorJob] = {}
    stacks: dict[str, dict[int, tuple[str, SafetensorsTensor]]] = {}
    for hf_name, source in ckpt.tensors.items():
        if hf_name.endswith(_IGNORED_SUFFIXES) or (hf_name == LM_HEAD and cfg.tied_embeddings):
            continue  # a tied lm_head is the embedding again: the file stores it once
        if (slot := family.stacked(hf_name)) is not None:
            stacks.setdefault(slot[0], {})[slot[1]] = (hf_name, source)
            continue
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ConvertError(f"checkpoint tensor {hf_name!r} has no GGUF name for the "
                               f"{family.arch_name} architecture")
        if gguf_name in jobs:
            raise ConvertError(f"checkpoint tensors {jobs[gguf_name].hf_name!r} and {hf_name!r} "
                               f"both map to {gguf_name}")
        jobs[gguf_name] = TensorJob(gguf_name, hf_name, source)
    for gguf_name, parts in stacks.items():
        if sorted(parts) != list(range(len(parts))):
            missing = sorted(set(range(max(parts) + 1)) - set(parts))
            raise ConvertError(f"{gguf_name} stacks checkpoint tensors 0..{max(parts)} but lacks {missing}")
        jobs[gguf_name] = TensorJob(gguf_name, parts[0][0], parts=tuple(parts[i] for i in range(len(parts))))
    for gguf_name, data in family.extra_tensors(cfg):
        jobs[gguf_name] = TensorJob(gguf_name, generated=data)
    required = [TOKEN_EMBD, OUTPUT_NORM, *family.required_tensors(cfg.n_layer)]
    if not cfg.tied_embeddings:
        required.append(OUTPUT)
    missing = [name for name in required if name not in jobs]
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise ConvertError(f"{ckpt.directory}: checkpoint lacks weights the {family.arch_name} "
                           f"architecture needs: {shown}")
    return [jobs[name] for name in sorted(jobs, key=_file_order)]


def storage_type(gguf_name: str, shape: tuple[int, ...], wanted: GGMLQuantizationType) -> GGMLQuantizationType:
    """The GGML type a tensor is stored as when the file's type is `wanted`."""
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return F32
    if shape[-1] % GGML_QUANT_SIZES[wanted][0]:
        return GGMLQuantizationType.F16
    return wanted


def _fit_vocab_rows(name: str, data: np.ndarray, n_vocab: int) -> np.ndarray:
    if name not in VOCAB_ROWS:
        return data
    if data.shape[0] < n_vocab:
        raise ConvertError(f"{name} has {data.shape[0]} rows, fewer than the {n_vocab} tokens of "
                           f"the vocabulary (config.json vocab_size)")
    return data[:n_vocab]


def convert_tensors(jobs: Iterable[TensorJob], family: Family, cfg: HFConfig, n_vocab: int,
                    wanted: GGMLQuantizationType, progress=None) -> Iterator[tuple]:
    """Yield write_gguf's (name, raw, type, shape) per job, reading one tensor at a time.

    `progress`: optional tqdm-like object, advanced once per tensor.
    """
    from ...quant import quantize  # Numba kernels: imported only when tensors are converted

    for job in jobs:
        data = _fit_vocab_rows(job.gguf_name, job.load(family, cfg), n_vocab)
        qtype = storage_type(job.gguf_name, data.shape, wanted)
        yield job.gguf_name, quantize(data, qtype), qtype, data.shape
        if progress is not None:
            progress.update(1)
