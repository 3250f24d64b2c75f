"""The offload plan: a GGUF file of its own, beside the model it was made for.

    general.architecture          "lantern-offload"
    offload.version               1
    offload.model.sha256 / .size  the model file's, so a plan never runs against another model
    offload.model.architecture, offload.block_count, offload.embedding_length,
    offload.feed_forward_length   the model's shapes, checked again at load
    offload.up_types              GGML type of each layer's up rows (as in the model, unchanged)
    offload.down_type             GGML type of the requantized down columns (Q8_0)
    offload.kld_target            the KL target the thresholds were calibrated for
    offload.calibration.tokens    how many calibration tokens
    offload.quality.*             measured on held-out text: kld_mean, ppl_dense, ppl_sparse,
                                  same_top_percent, sparsity_mean, tokens

    offload.thresholds   F32 (n_layer,)        |act(gate)| below which a neuron is off
    offload.sparsity     F32 (n_layer,)        the calibrated fraction of neurons off per layer
    blk.N.neuron_order   I32 (n_ff,)           model neuron index at each plan position
                                               (hottest first)
    blk.N.ffn_bundles    I8  (n_ff, bundle)    per plan position: the neuron's up row (the model's
                                               bytes) then its down column (Q8_0), adjacent,
                                               so that one read brings both

The model's own GGUF is never modified. Written through the gguf package, atomically
(formats.writer.write_gguf).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
from gguf import GGMLQuantizationType as T

from ..formats.cache_stamp import file_sha256, holds
from ..formats.gguf import GGUFError, read_gguf
from ..formats.writer import write_gguf
from ..quant import QTYPES

PLAN_ARCH = "lantern-offload"
PLAN_VERSION = 1
DOWN_TYPE = T.Q8_0
QUALITY_KEYS = ("kld_mean", "ppl_dense", "ppl_sparse", "same_top_percent", "sparsity_mean", "tokens")


class PlanError(ValueError):
    """An offload plan that is unreadable, damaged, or made for another model."""


__all__ = ["PlanError", "OffloadPlan", "LayerPlan", "read_plan", "write_plan", "check_plan_for_model",
           "default_plan_path", "bundle_bytes", "file_sha256", "DOWN_TYPE"]


def default_plan_path(model_path: str | os.PathLike) -> Path:
    """Where a model's plan is looked for: MODEL.offload.gguf beside MODEL.gguf."""
    p = Path(model_path)
    return p.with_name(p.stem + ".offload.gguf")


def bundle_bytes(up_type: T, n_embd: int) -> tuple[int, int]:
    """(up row bytes, down column bytes) of one neuron's bundle."""
    return QTYPES[up_type].row_bytes(n_embd), QTYPES[DOWN_TYPE].row_bytes(n_embd)


@dataclass(frozen=True)
class LayerPlan:
    order: np.ndarray      # int32 (n_ff,): model neuron index at each plan position
    up_type: T
    bundles: np.ndarray    # uint8 (n_ff, up bytes + down bytes), a view of the plan file


@dataclass(frozen=True)
class OffloadPlan:
    path: str
    model_sha256: str
    model_size: int
    arch: str
    n_embd: int
    n_ff: int
    kld_target: float
    calibration_tokens: int
    thresholds: np.ndarray       # float32 (n_layer,)
    sparsity: np.ndarray         # float32 (n_layer,)
    quality: dict
    layers: tuple[LayerPlan, ...]
    bundle_offsets: tuple[int, ...]  # file offset of each layer's first bundle

    @property
    def n_layer(self) -> int:
        return len(self.layers)


def write_plan(path: str | os.PathLike, *, model_path: str | os.PathLike, model_sha256: str, arch: str,
               n_embd: int, thresholds: np.ndarray, sparsity: np.ndarray, orders: list[np.ndarray],
               up_types: list[T], bundles: list[np.ndarray], kld_target: float, calibration_tokens: int,
               quality: Mapping[str, float]) -> Path:
    n_layer, n_ff = len(orders), int(orders[0].shape[0])
    kv = {
        "offload.version": PLAN_VERSION,
        "offload.model.sha256": model_sha256,
        "offload.model.size": np.uint64(os.path.getsize(model_path)),
        "offload.model.architecture": arch,
        "offload.block_count": n_layer,
        "offload.embedding_length": n_embd,
        "offload.feed_forward_length": n_ff,
        "offload.up_types": np.asarray([int(t) for t in up_types], dtype=np.uint32),
        "offload.down_type": int(DOWN_TYPE),
        "offload.kld_target": float(kld_target),
        "offload.calibration.tokens": int(calibration_tokens),
        **{f"offload.quality.{k}": float(quality[k]) for k in QUALITY_KEYS},
    }
    tensors = [("offload.thresholds", np.asarray(thresholds, np.float32), T.F32, (n_layer,)),
               ("offload.sparsity", np.asarray(sparsity, np.float32), T.F32, (n_layer,))]
    for il in range(n_layer):
        tensors.append((f"blk.{il}.neuron_order", np.asarray(orders[il], np.int32), T.I32, (n_ff,)))
        b = bundles[il].view(np.int8)
        tensors.append((f"blk.{il}.ffn_bundles", b, T.I8, b.shape))
    return write_gguf(path, kv, tensors, arch=PLAN_ARCH)


def _require(g, key: str, kind) -> object:
    value = g.kv.get(key)
    if value is None:
        raise PlanError(f"{g.path}: not a complete offload plan (metadata key {key} is missing)")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise PlanError(f"{g.path}: offload plan key {key} has a bad value {value!r}") from None


def _tensor(g, name: str, qtype: T, shape: tuple):
    ref = g.tensors.get(name)
    if ref is None:
        raise PlanError(f"{g.path}: not a complete offload plan (tensor {name} is missing)")
    if ref.type != qtype or tuple(ref.shape) != tuple(shape):
        raise PlanError(f"{g.path}: offload plan tensor {name} is {ref.type.name} {tuple(ref.shape)}, "
                        f"expected {qtype.name} {tuple(shape)}")
    return ref


def read_plan(path: str | os.PathLike) -> OffloadPlan:
    """Parse and check a plan file (not yet against a model: see check_plan_for_model)."""
    try:
        g = read_gguf(path)
    except GGUFError as exc:
        raise PlanError(f"offload plan {path} is damaged: {exc}") from None
    if g.arch != PLAN_ARCH:
        raise PlanError(f"{path} is not an offload plan (general.architecture is {g.arch!r}, "
                        f"expected {PLAN_ARCH!r}); build one with `lantern offload MODEL`")
    version = _require(g, "offload.version", int)
    if version != PLAN_VERSION:
        raise PlanError(f"{path}: offload plan version {version}; this lanternlm reads version {PLAN_VERSION} "
                        f"(rebuild it with `lantern offload`)")
    n_layer = _require(g, "offload.block_count", int)
    n_embd = _require(g, "offload.embedding_length", int)
    n_ff = _require(g, "offload.feed_forward_length", int)
    up_types = np.asarray(_require(g, "offload.up_types", np.asarray)).reshape(-1)
    if not (0 < n_layer <= 4096 and 0 < n_embd <= 1 << 20 and 0 < n_ff <= 1 << 22) or up_types.size != n_layer:
        raise PlanError(f"{path}: offload plan shapes are inconsistent (block_count {n_layer}, "
                        f"embedding_length {n_embd}, feed_forward_length {n_ff}, {up_types.size} up types)")
    if _require(g, "offload.down_type", int) != int(DOWN_TYPE):
        raise PlanError(f"{path}: offload plan down columns must be {DOWN_TYPE.name}")
    layers, offsets = [], []
    for il in range(n_layer):
        try:
            up_type = T(int(up_types[il]))
            up_b, down_b = bundle_bytes(up_type, n_embd)
        except (ValueError, KeyError):
            raise PlanError(f"{path}: layer {il}'s up rows have an unusable type {int(up_types[il])}") from None
        order = np.asarray(_tensor(g, f"blk.{il}.neuron_order", T.I32, (n_ff,)).data.view(np.int32))
        if not np.array_equal(np.sort(order), np.arange(n_ff)):
            raise PlanError(f"{path}: blk.{il}.neuron_order is not a permutation of the {n_ff} neurons")
        ref = _tensor(g, f"blk.{il}.ffn_bundles", T.I8, (n_ff, up_b + down_b))
        layers.append(LayerPlan(order, up_type, ref.data.reshape(n_ff, up_b + down_b)))
        offsets.append(ref.offset)
    thresholds = np.array(_tensor(g, "offload.thresholds", T.F32, (n_layer,)).data.view(np.float32))
    sparsity = np.array(_tensor(g, "offload.sparsity", T.F32, (n_layer,)).data.view(np.float32))
    if not (np.isfinite(thresholds).all() and (thresholds >= 0).all()):
        raise PlanError(f"{path}: offload plan thresholds must be finite and >= 0")
    return OffloadPlan(
        path=str(path), model_sha256=_require(g, "offload.model.sha256", str),
        model_size=_require(g, "offload.model.size", int), arch=_require(g, "offload.model.architecture", str),
        n_embd=n_embd, n_ff=n_ff, kld_target=_require(g, "offload.kld_target", float),
        calibration_tokens=_require(g, "offload.calibration.tokens", int), thresholds=thresholds,
        sparsity=sparsity, quality={k: _require(g, f"offload.quality.{k}", float) for k in QUALITY_KEYS},
        layers=tuple(layers), bundle_offsets=tuple(offsets))


def check_plan_for_model(plan: OffloadPlan, model_path: str | os.PathLike) -> None:
    """Refuse a plan made for another model file: its size, then its sha256 (hashed once, then
    remembered in a stamp beside the model while the file is unchanged: formats.cache_stamp)."""
    if os.path.getsize(model_path) != plan.model_size or not holds(Path(model_path), plan.model_sha256):
        raise PlanError(f"offload plan {plan.path} was made for another model file (sha256 "
                        f"{plan.model_sha256[:12]}..., {plan.model_size} bytes), not {model_path}; "
                        f"build a plan for it with `lantern offload`")
