"""A Hugging Face checkpoint directory: config.json and lazily read safetensors weights.

    ckpt = HFCheckpoint.open("path/to/model")
    ckpt.config                      # config.json as a dict
    ckpt.tensors["model.norm.weight"].to_f32()   # one tensor, float32, read on demand

Weights come from `model.safetensors`, or from the shards that `model.safetensors.index.json`
lists, or from every `model*.safetensors` when there is no index (as llama.cpp's converter finds
them). Only the JSON headers are read up front; a tensor's bytes are mapped from its file when
asked for, so converting keeps about one tensor in memory at a time.

The headers are parsed here rather than through the `safetensors` package because its numpy API
cannot return bfloat16 tensors, the dtype most released checkpoints use; the format is an
8-byte little-endian header length, a JSON header of {name: {dtype, shape, data_offsets}}, and
the raw little-endian tensor bytes. Every offset is checked against the file before use.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ConvertError", "HFCheckpoint", "SafetensorsTensor"]

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit on the JSON header

# safetensors dtype -> (numpy dtype of the stored elements, function widening them to float32)
_DTYPES = {
    "F32": (np.dtype("<f4"), lambda a: a),
    "F16": (np.dtype("<f2"), lambda a: a.astype(np.float32)),
    # bfloat16 is the top half of a float32: widening is a 16-bit shift, exact
    "BF16": (np.dtype("<u2"), lambda a: (a.astype(np.uint32) << 16).view(np.float32)),
    "F64": (np.dtype("<f8"), lambda a: a.astype(np.float32)),
}


class ConvertError(ValueError):
    """The checkpoint cannot be converted; the message names the file or tensor at fault."""


@dataclass(frozen=True)
class SafetensorsTensor:
    """Where one tensor's bytes live, and how to read them."""
    name: str
    path: Path
    dtype: str             # safetensors dtype name, e.g. "BF16"
    shape: tuple[int, ...]
    offset: int            # absolute byte offset of the data in `path`
    nbytes: int

    def to_f32(self) -> np.ndarray:
        """The tensor as float32 of `shape` (a read-only file view when stored as F32)."""
        stored, widen = _DTYPES[self.dtype]
        count = math.prod(self.shape)
        if count == 0:
            return np.zeros(self.shape, dtype=np.float32)
        raw = np.memmap(self.path, dtype=stored, mode="r", offset=self.offset, shape=(count,))
        return widen(raw).reshape(self.shape)


class HFCheckpoint:
    def __init__(self, directory: Path, config: dict[str, Any], tensors: dict[str, SafetensorsTensor]):
        self.directory = directory
        self.config = config
        self.tensors = tensors

    @classmethod
    def open(cls, directory: str | os.PathLike) -> HFCheckpoint:
        directory = Path(directory)
        if not directory.is_dir():
            raise ConvertError(f"{directory}: not a directory (expected a Hugging Face checkpoint folder)")
        config = read_json(directory / CONFIG_FILE, what="model config")
        tensors: dict[str, SafetensorsTensor] = {}
        shards, weight_map = _shards(directory)
        for shard in shards:
            for name, tensor in _read_header(directory / shard).items():
                if name in tensors:
                    raise ConvertError(f"tensor {name!r} appears in both {tensors[name].path.name} and {shard}")
                tensors[name] = tensor
        if weight_map is not None:
            _check_index_complete(directory, weight_map, tensors)
        return cls(directory, config, tensors)

    @property
    def files(self) -> list[Path]:
        """The files the checkpoint is read from: config, shard index (if any) and shards."""
        shards = sorted({t.path for t in self.tensors.values()})
        index = self.directory / INDEX_FILE
        return [self.directory / CONFIG_FILE, *([index] if index.is_file() else []), *shards]


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`, with a one-line error naming the file when it is absent or bad."""
    if not path.is_file():
        raise ConvertError(f"{path.parent}: no {path.name} ({what} missing; is this a Hugging Face "
                           f"checkpoint folder?)")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConvertError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise ConvertError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def _shards(directory: Path) -> tuple[list[str], dict[str, str] | None]:
    """File names of the safetensors shards holding the weights, and the index's weight map."""
    index_path = directory / INDEX_FILE
    if index_path.is_file():
        weight_map = read_json(index_path, what="shard index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConvertError(f"{index_path}: no 'weight_map' object")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise ConvertError(f"{directory}: {INDEX_FILE} lists weight files that are missing: "
                               f"{', '.join(missing)}")
        return shards, weight_map
    shards = sorted(p.name for p in directory.glob("model*.safetensors") if p.is_file())
    if shards:
        return shards, None
    others = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt*"))
    hint = f" (found {', '.join(others)}: only safetensors weights are supported)" if others else ""
    raise ConvertError(f"{directory}: no model weights: no model*.safetensors{hint}")


def _check_index_complete(directory: Path, weight_map: dict[str, str],
                          tensors: dict[str, SafetensorsTensor]) -> None:
    absent = sorted(name for name in weight_map if name not in tensors)
    if absent:
        shown = ", ".join(f"{n} ({weight_map[n]})" for n in absent[:5])
        more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
        raise ConvertError(f"{directory}: {INDEX_FILE} lists tensors its shards do not hold: {shown}{more}")


def _read_header(path: Path) -> dict[str, SafetensorsTensor]:
    """The tensor table of one safetensors file, every entry checked against the file size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ConvertError(f"{path}: too short to be a safetensors file")
        header_len = int.from_bytes(prefix, "little")
        if header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise ConvertError(f"{path}: not a safetensors file (header length {header_len} "
                               f"exceeds the file size {size})")
        try:
            header = json.loads(f.read(header_len).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConvertError(f"{path}: safetensors header is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise ConvertError(f"{path}: safetensors header is not a JSON object")
    data_start = 8 + header_len
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = _tensor_entry(path, name, entry, data_start, size)
    return tensors


def _tensor_entry(path: Path, name: str, entry: Any, data_start: int, size: int) -> SafetensorsTensor:
    try:
        dtype, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        begin, end = int(begin), int(end)
    except (KeyError, TypeError, ValueError):
        raise ConvertError(f"{path}: malformed safetensors entry for tensor {name!r}") from None
    if dtype not in _DTYPES:
        raise ConvertError(f"{path}: tensor {name!r} has dtype {dtype}; only {', '.join(_DTYPES)} "
                           f"weights can be converted (quantized checkpoints are not supported)")
    expected = math.prod(shape) * _DTYPES[dtype][0].itemsize
    if min(shape, default=0) < 0 or not 0 <= begin <= end or end - begin != expected \
            or data_start + end > size:
        raise ConvertError(f"{path}: tensor {name!r} has an inconsistent size or offsets "
                           f"(shape {list(shape)}, bytes {begin}..{end}, file {size} bytes)")
    return SafetensorsTensor(name, path, dtype, shape, data_start + begin, expected)
