"""Write a GGUF file atomically, through gguf-py's GGUFWriter.

    write_gguf(path, kv, tensors, *, kv_types=None, kv_array_types=None, arch=None,
               spool_to_disk=False, progress=False) -> Path

- `kv`: metadata, in the shapes `read_gguf` produces (int, float, bool, str, numpy arrays,
  lists of str, lists of arrays). `general.architecture` may be in `kv` or given as `arch`;
  `general.alignment`, if present, sets the data alignment (a nonzero power of two).
- `kv_types` / `kv_array_types`: the GGUF value type of each key and the element type of each
  array key, e.g. `GGUFFile.kv_types` / `GGUFFile.kv_array_types`, so a copied file keeps
  uint32 as uint32. Keys they do not cover get an inferred type: bool -> BOOL, a Python int ->
  UINT32 when it fits (llama.cpp reads most hyperparameters as uint32), else INT32, INT64,
  UINT64; a Python float -> FLOAT32; numpy scalars and arrays -> their dtype; str -> STRING;
  list -> ARRAY of the inferred element type. Inner arrays of nested arrays take the types
  GGUFWriter infers (int32, float32, bool, string, uint8 from `bytes`); other inner types and
  empty arrays are refused, because GGUFWriter cannot write them.
- `tensors`: an iterable of `(name, raw, qtype, shape)` tuples or `TensorRef`-like objects
  (`.name`, `.data`, `.type`, `.shape`). `raw` is any numpy array whose bytes are the tensor's
  data in file order; `qtype` a `GGMLQuantizationType`; `shape` the logical shape in numpy
  order (outermost first, in elements, not bytes). `raw.nbytes` must match the shape and type.
- GGUFWriter keeps every tensor array until the data is written; `spool_to_disk=True` makes it
  copy each tensor into a spooled temporary file instead, for iterators that compute tensors.

The file is written as a hidden temporary file in the destination directory, flushed to disk,
then renamed over `path`, so a crash or exception never leaves a partial file at `path` (an
existing file there is untouched) and the temporary file is removed on any exception. Renaming
also makes it safe to overwrite the very file whose mapped tensors are being copied.
"""
from __future__ import annotations

import math
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, GGUFWriter

from .gguf import ALIGNMENT_KEY, ARCHITECTURE_KEY, MAX_DIMS

__all__ = ["write_gguf"]

_DTYPE_VALUE_TYPES = {
    np.dtype(np.uint8): GGUFValueType.UINT8,
    np.dtype(np.int8): GGUFValueType.INT8,
    np.dtype(np.uint16): GGUFValueType.UINT16,
    np.dtype(np.int16): GGUFValueType.INT16,
    np.dtype(np.uint32): GGUFValueType.UINT32,
    np.dtype(np.int32): GGUFValueType.INT32,
    np.dtype(np.float32): GGUFValueType.FLOAT32,
    np.dtype(np.bool_): GGUFValueType.BOOL,
    np.dtype(np.uint64): GGUFValueType.UINT64,
    np.dtype(np.int64): GGUFValueType.INT64,
    np.dtype(np.float64): GGUFValueType.FLOAT64,
}
_VALUE_TYPE_DTYPES = {vtype: dtype for dtype, vtype in _DTYPE_VALUE_TYPES.items()}
# Integer types tried, in order, for a Python int of unstated type.
_INT_INFERENCE_ORDER = (GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.INT64, GGUFValueType.UINT64)
# How GGUFWriter must receive the inner arrays of a nested array: it infers their element type
# from the first Python item, so each supported numpy dtype maps to a converter it recognises.
_INNER_ARRAY_CONVERTERS = {
    np.dtype(np.int32): lambda a: a.tolist(),
    np.dtype(np.float32): lambda a: a.tolist(),
    np.dtype(np.bool_): lambda a: a.tolist(),
    np.dtype(np.uint8): lambda a: a.tobytes(),
}


def write_gguf(path: str | os.PathLike[str], kv: Mapping[str, Any], tensors: Iterable = (), *,
               kv_types: Mapping[str, GGUFValueType] | None = None,
               kv_array_types: Mapping[str, GGUFValueType] | None = None,
               arch: str | None = None, spool_to_disk: bool = False, progress: bool = False) -> Path:
    """Write `kv` and `tensors` to a GGUF v3 file at `path`, atomically. Returns the path."""
    final = Path(path)
    kv_types = kv_types or {}
    kv_array_types = kv_array_types or {}
    arch = _architecture(kv, arch)
    temporary = final.with_name(f".{final.name}.{secrets.token_hex(6)}.tmp")
    writer = GGUFWriter(None, arch or "", use_temp_file=spool_to_disk)
    try:
        for key, value in kv.items():
            if key == ARCHITECTURE_KEY:
                continue  # GGUFWriter writes it from `arch`
            vtype, sub_type, packed = _typed_value(key, value, kv_types.get(key), kv_array_types.get(key))
            writer.add_key_value(_wire_name(key), packed, vtype, sub_type)
        if ALIGNMENT_KEY in kv:
            writer.data_alignment = _alignment(kv[ALIGNMENT_KEY])
        for item in tensors:
            name, raw_bytes, qtype = _tensor_bytes(item)
            writer.add_tensor(_wire_name(name), raw_bytes, raw_dtype=qtype)
        writer.write_header_to_file(path=temporary)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=progress)
        writer.close()
        _fsync_file(temporary)
        os.replace(temporary, final)
    except BaseException:
        writer.close()
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(final.parent)
    return final


def _architecture(kv: Mapping[str, Any], arch: str | None) -> str | None:
    in_kv = kv.get(ARCHITECTURE_KEY)
    if arch is not None and in_kv is not None and arch != in_kv:
        raise ValueError(f"arch={arch!r} contradicts {ARCHITECTURE_KEY}={in_kv!r} in kv")
    return arch if arch is not None else in_kv


def _alignment(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value <= 0 or value & (value - 1):
        raise ValueError(f"{ALIGNMENT_KEY} must be a nonzero power of two, got {value!r}")
    return int(value)


def _wire_name(name: str) -> str | bytes:
    """Keys and tensor names as GGUFWriter takes them; bytes only for undecodable ones."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape")


def _wire_string(value: Any) -> bytes:
    """A string value's exact bytes (reader strings carry raw bytes as surrogate escapes)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    raise ValueError(f"expected a string, got {type(value).__name__}")


def _typed_value(key: str, value: Any, vtype: GGUFValueType | None, sub_type: GGUFValueType | None):
    """(value type, element type, value as GGUFWriter packs it) for one metadata entry."""
    if vtype is None:
        vtype = _infer_type(key, value)
    vtype = GGUFValueType(vtype)
    try:
        if vtype == GGUFValueType.ARRAY:
            if sub_type is None:
                sub_type = _infer_element_type(key, value)
            sub_type = GGUFValueType(sub_type)
            return vtype, sub_type, _array_items(value, sub_type)
        if vtype == GGUFValueType.STRING:
            return vtype, None, _wire_string(value)
        return vtype, None, _checked_scalars([value], vtype)[0]
    except (ValueError, TypeError, OverflowError) as err:
        raise ValueError(f"metadata key {key!r} cannot be written as {vtype.name}: {err}") from None


def _infer_type(key: str, value: Any) -> GGUFValueType:
    if isinstance(value, (bool, np.bool_)):
        return GGUFValueType.BOOL
    if isinstance(value, np.generic) and value.dtype in _DTYPE_VALUE_TYPES:
        return _DTYPE_VALUE_TYPES[value.dtype]
    if isinstance(value, int):
        return _integer_type(key, value, value)
    if isinstance(value, float):
        return GGUFValueType.FLOAT32
    if isinstance(value, (str, bytes)):
        return GGUFValueType.STRING
    if isinstance(value, (list, tuple, np.ndarray)):
        return GGUFValueType.ARRAY
    raise ValueError(f"metadata key {key!r}: cannot store a {type(value).__name__} in GGUF")


def _integer_type(key: str, low: int, high: int) -> GGUFValueType:
    for vtype in _INT_INFERENCE_ORDER:
        limits = np.iinfo(_VALUE_TYPE_DTYPES[vtype])
        if limits.min <= low and high <= limits.max:
            return vtype
    raise ValueError(f"metadata key {key!r}: integers in [{low}, {high}] fit no GGUF integer type")


def _infer_element_type(key: str, items: Any) -> GGUFValueType:
    if isinstance(items, np.ndarray):
        if items.dtype.kind == "U":
            return GGUFValueType.STRING
        if items.dtype not in _DTYPE_VALUE_TYPES:
            raise ValueError(f"metadata key {key!r}: no GGUF type for arrays of {items.dtype}")
        return _DTYPE_VALUE_TYPES[items.dtype]
    if len(items) == 0:
        raise ValueError(f"metadata key {key!r}: GGUFWriter cannot write an empty array")
    if all(isinstance(x, (str, bytes)) for x in items):
        return GGUFValueType.STRING
    if all(isinstance(x, (list, tuple, np.ndarray)) for x in items):
        return GGUFValueType.ARRAY
    if all(isinstance(x, (bool, np.bool_)) for x in items):
        return GGUFValueType.BOOL
    if all(isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)) for x in items):
        return _integer_type(key, int(min(items)), int(max(items)))
    if all(isinstance(x, (int, float, np.integer, np.floating)) for x in items):
        return GGUFValueType.FLOAT32
    raise ValueError(f"metadata key {key!r}: array items of mixed or unsupported types")


def _array_items(items: Any, sub_type: GGUFValueType) -> list:
    if len(items) == 0:
        raise ValueError("GGUFWriter cannot write an empty array")
    if sub_type == GGUFValueType.STRING:
        return [_wire_string(s) for s in items]
    if sub_type == GGUFValueType.ARRAY:
        return [_inner_array(inner) for inner in items]
    return _checked_scalars(items, sub_type)


def _checked_scalars(values: Any, vtype: GGUFValueType) -> list:
    """Python numbers of type `vtype`, refusing values the type cannot hold exactly."""
    dtype = _VALUE_TYPE_DTYPES.get(vtype)
    if dtype is None:
        raise ValueError(f"{vtype.name} is not a numeric type")
    source = np.asarray(values)
    if source.ndim != 1:
        raise ValueError(f"expected {vtype.name} scalars, got nested values")
    if dtype.kind in "iu":
        if source.dtype.kind not in "biu":
            raise ValueError(f"expected integers, got {source.dtype}")
        limits = np.iinfo(dtype)
        if source.size and (int(source.min()) < limits.min or int(source.max()) > limits.max):
            raise ValueError(f"values outside [{limits.min}, {limits.max}]")
    elif source.dtype.kind not in "biuf":
        raise ValueError(f"expected numbers, got {source.dtype}")
    return source.astype(dtype).tolist()


def _inner_array(inner: Any) -> list | bytes:
    """An inner array of a nested array, as Python items GGUFWriter infers the right type from."""
    if len(inner) == 0:
        raise ValueError("GGUFWriter cannot write an empty inner array")
    if isinstance(inner, np.ndarray):
        convert = _INNER_ARRAY_CONVERTERS.get(inner.dtype)
        if convert is None:
            raise ValueError(f"GGUFWriter writes nested arrays only of int32, float32, bool, uint8, "
                             f"strings or arrays, not {inner.dtype}")
        return convert(inner)
    if isinstance(inner, (bytes, bytearray)):
        return bytes(inner)
    if all(isinstance(x, (str, bytes)) for x in inner):
        return [_wire_string(s) for s in inner]
    if all(isinstance(x, (list, tuple, np.ndarray)) for x in inner):
        return [_inner_array(x) for x in inner]
    if all(isinstance(x, (bool, np.bool_)) for x in inner):
        return [bool(x) for x in inner]
    if all(isinstance(x, (int, np.integer)) for x in inner):
        return _checked_scalars(inner, GGUFValueType.INT32)
    return _checked_scalars(inner, GGUFValueType.FLOAT32)


def _tensor_bytes(item: Any) -> tuple[str, np.ndarray, GGMLQuantizationType]:
    """(name, uint8 array shaped as GGUFWriter's byte shape, type) for one tensor."""
    if isinstance(item, tuple):
        name, raw, qtype, shape = item
    else:
        name, raw, qtype, shape = item.name, item.data, item.type, item.shape
    qtype = GGMLQuantizationType(qtype)
    if qtype not in GGML_QUANT_SIZES:
        raise ValueError(f"tensor {name!r}: no block layout known for type {qtype.name}")
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    shape = tuple(int(d) for d in shape)
    if not 1 <= len(shape) <= MAX_DIMS or min(shape) < 0:
        raise ValueError(f"tensor {name!r}: shape {shape} must have 1 to {MAX_DIMS} non-negative dims")
    if shape[-1] % block_size:
        raise ValueError(f"tensor {name!r}: rows of {shape[-1]} elements are not a multiple of "
                         f"the {qtype.name} block size {block_size}")
    # GGUFWriter takes quantized data as uint8 rows of bytes and converts that byte shape back
    byte_shape = (*shape[:-1], shape[-1] // block_size * type_size)
    raw = np.ascontiguousarray(raw)
    if raw.nbytes != math.prod(byte_shape):
        raise ValueError(f"tensor {name!r}: {raw.nbytes} bytes of data, but a {qtype.name} tensor of "
                         f"shape {shape} takes {math.prod(byte_shape)}")
    return name, raw.reshape(-1).view(np.uint8).reshape(byte_shape), qtype


def _fsync_file(path: Path) -> None:
    """Push a written file's data to the disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    """Best effort to make a rename durable: not every platform can open or fsync a directory."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
