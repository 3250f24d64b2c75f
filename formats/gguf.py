"""Our own GGUF reader: metadata and tensor table over a read-only memory map.

`read_gguf(path)` maps the file, parses the header (GGUF v2 or v3, little-endian) and returns a
`GGUFFile` whose tensors are zero-copy views of the mapping. It knows nothing of models.

What the metadata values look like (`GGUFFile.kv`):

- integer scalars -> `int`, float32/float64 -> `float` (a float32 widened exactly), bool -> `bool`,
  string -> `str`;
- arrays of a numeric or bool type -> a 1-D numpy array of that exact little-endian dtype
  (`uint32` stays `uint32`, bool becomes `np.bool_`), an owned copy, so the vocabulary's scores
  and token types come back as one array each and do not pin the mapping;
- arrays of strings -> `list[str]`; arrays of arrays -> `list` of inner values built by the
  same rules.

GGUF strings are meant to be UTF-8, but some converted vocabularies carry raw byte tokens that are
not. Strings are decoded with `errors="surrogateescape"`, so nothing is refused and nothing is lost:
`s.encode("utf-8", "surrogateescape")` gives back the exact bytes (the writer does this).

The GGUF value type of every key is kept in `GGUFFile.kv_types`, and the element type of every
array in `GGUFFile.kv_array_types`, so a file can be rewritten with the same types.

Anything malformed raises `GGUFError` naming the problem and the byte offset where it was found;
every count and length is checked against the bytes that remain before anything is allocated,
so a hostile file cannot make the reader crash, hang or allocate more than the file's size.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

__all__ = ["GGUFError", "TensorRef", "GGUFFile", "read_gguf", "parse_gguf"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)  # v2 and v3 share one layout; v3 only added big-endian files
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_NESTING = 8  # real files nest at most once; a bound keeps recursion shallow
ALIGNMENT_KEY = "general.alignment"
ARCHITECTURE_KEY = "general.architecture"

_HEADER = struct.Struct("<4sIQQ")  # magic, version, n_tensors, n_kv
_U64 = struct.Struct("<Q")
_INT64_LIMIT = 1 << 63  # dims and element counts are int64 in ggml

# Fixed-size value types: struct format for one scalar, numpy dtype for an array of them.
_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_SCALAR_STRUCTS = {vtype: struct.Struct(fmt) for vtype, fmt in _SCALAR_FORMATS.items()}
# bool arrays are read as bytes and compared with zero, so a stray byte 2 still means True
_ARRAY_DTYPES = {vtype: np.dtype("<u1" if fmt == "<?" else fmt) for vtype, fmt in _SCALAR_FORMATS.items()}
# The fewest bytes one element can occupy: what an array's count is checked against.
_MIN_ELEMENT_BYTES = {
    **{vtype: st.size for vtype, st in _SCALAR_STRUCTS.items()},
    GGUFValueType.STRING: 8,  # length prefix
    GGUFValueType.ARRAY: 12,  # element type + count
}
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset
_INTEGER_TYPES = frozenset(vtype for vtype, fmt in _SCALAR_FORMATS.items() if fmt[1] in "bBhHiIqQ")


class GGUFError(ValueError):
    """A GGUF file is malformed or unsupported; the message names the problem and byte offset."""


@dataclass(frozen=True, slots=True)
class TensorRef:
    """One tensor of a GGUF file.

    shape is in numpy order, outermost first (GGUF stores dims innermost first); data is a
    read-only uint8 view of exactly this tensor's `nbytes` bytes of the mapped file, starting
    at the absolute file offset `offset`.
    """

    name: str
    type: GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    data: np.ndarray = field(repr=False)


class GGUFFile:
    """A parsed GGUF file: `kv` metadata, `tensors` by name (in file order), header facts.

    Attributes: path, version, alignment, data_offset (absolute start of the tensor data
    section), kv, kv_types (GGUFValueType of each key), kv_array_types (element type of each
    array key), tensors. Use as a context manager or call close() to release the mapping.
    """

    def __init__(self, *, path, version, alignment, data_offset, kv, kv_types, kv_array_types, tensors):
        self.path: str | None = path
        self.version: int = version
        self.alignment: int = alignment
        self.data_offset: int = data_offset
        self.kv: dict[str, Any] = kv
        self.kv_types: dict[str, GGUFValueType] = kv_types
        self.kv_array_types: dict[str, GGUFValueType] = kv_array_types
        self.tensors: dict[str, TensorRef] = tensors
        self._mapping: mmap.mmap | None = None  # set by read_gguf

    @property
    def arch(self) -> str | None:
        """general.architecture, or None when the file does not say."""
        return self.kv.get(ARCHITECTURE_KEY)

    def close(self) -> None:
        """Drop this file's tensor views and unmap the file.

        Views a caller still holds keep the mapping alive (and valid) until they are garbage
        collected, so closing never leaves a dangling array.
        """
        self.tensors = {}
        mapping, self._mapping = self._mapping, None
        if mapping is not None:
            _release(mapping)

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"GGUFFile({self.path!r}, v{self.version}, arch={self.arch!r}, "
                f"{len(self.kv)} keys, {len(self.tensors)} tensors)")


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Map the GGUF file at `path` read-only and parse its header; tensors stay on disk."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < _HEADER.size:
            raise GGUFError(f"truncated file: {size} bytes is shorter than the {_HEADER.size}-byte "
                            f"GGUF header (at byte offset 0)")
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # stays valid after close
    try:
        parsed = parse_gguf(mapping, path=path)
    except BaseException:
        _release(mapping)
        raise
    parsed._mapping = mapping  # close() unmaps it
    return parsed


def _release(mapping: mmap.mmap) -> None:
    """Unmap now if nothing still views the mapping, else when the last view is collected."""
    try:
        mapping.close()
    except BufferError:
        pass


def parse_gguf(buffer, *, path: str | None = None) -> GGUFFile:
    """Parse a whole GGUF file held in `buffer` (bytes, bytearray or mmap).

    The tensors' data are read-only views into `buffer`.
    """
    if not isinstance(buffer, (bytes, bytearray, mmap.mmap)):
        raise TypeError(f"parse_gguf needs bytes, bytearray or mmap, not {type(buffer).__name__}")
    reader = _Reader(buffer)
    version, n_tensors, n_kv = reader.header()
    kv, kv_types, kv_array_types = reader.metadata(n_kv)
    alignment = _alignment_from(kv, kv_types, reader.key_offsets.get(ALIGNMENT_KEY))
    infos = reader.tensor_infos(n_tensors)
    data_offset = -(-reader.pos // alignment) * alignment
    _check_data_ranges(infos, data_offset, alignment, reader.end)
    all_bytes = np.frombuffer(buffer, dtype=np.uint8)
    all_bytes.flags.writeable = False
    tensors = {}
    for info in infos:
        start = data_offset + info.relative_offset
        tensors[info.name] = TensorRef(info.name, info.type, info.shape, start, info.nbytes,
                                       all_bytes[start:start + info.nbytes])
    return GGUFFile(path=path, version=version, alignment=alignment, data_offset=data_offset, kv=kv,
                    kv_types=kv_types, kv_array_types=kv_array_types, tensors=tensors)


@dataclass(frozen=True, slots=True)
class _TensorInfo:
    """A tensor-table entry as read, before it is placed in the data section."""

    name: str
    type: GGMLQuantizationType
    shape: tuple[int, ...]
    nbytes: int
    relative_offset: int
    at: int  # file offset of the entry, for error messages


class _Reader:
    """A bounds-checked cursor over the header bytes."""

    def __init__(self, buffer) -> None:
        self.buf = buffer
        self.pos = 0
        self.end = len(buffer)
        self.key_offsets: dict[str, int] = {}

    def fail(self, message: str, at: int | None = None) -> NoReturn:
        raise GGUFError(f"{message} (at byte offset {self.pos if at is None else at})")

    def take(self, size: int, what: str) -> int:
        """Advance over `size` bytes and return where they start."""
        start = self.pos
        if size > self.end - start:
            self.fail(f"truncated file: {what} needs {size} bytes but only {self.end - start} remain")
        self.pos = start + size
        return start

    def scalar(self, vtype: GGUFValueType, what: str):
        layout = _SCALAR_STRUCTS[vtype]
        return layout.unpack_from(self.buf, self.take(layout.size, what))[0]

    def string(self, what: str) -> str:
        size = self.scalar(GGUFValueType.UINT64, f"length of {what}")
        start = self.take(size, what)
        return self.buf[start:start + size].decode("utf-8", "surrogateescape")

    def header(self) -> tuple[int, int, int]:
        start = self.take(_HEADER.size, "GGUF header")
        magic, version, n_tensors, n_kv = _HEADER.unpack_from(self.buf, start)
        if magic != GGUF_MAGIC:
            self.fail(f"not a GGUF file: magic is {magic!r}, expected {GGUF_MAGIC!r}", at=0)
        if version & 0xFFFF == 0 and version != 0:
            self.fail(f"version field {version:#010x} looks byte-swapped: big-endian GGUF files "
                      f"are not supported", at=4)
        if version == 1:
            self.fail("GGUF v1 is not supported (it uses 32-bit counts); re-convert the model", at=4)
        if version not in SUPPORTED_VERSIONS:
            self.fail(f"unsupported GGUF version {version} (supported: 2, 3)", at=4)
        self.check_count(n_kv, _MIN_KV_BYTES, "metadata key-value pairs", at=16)
        self.check_count(n_tensors, _MIN_TENSOR_INFO_BYTES, "tensor-table entries", at=8)
        return version, n_tensors, n_kv

    def check_count(self, count: int, min_bytes: int, what: str, at: int | None = None) -> None:
        """Refuse a count whose smallest possible encoding is longer than what remains."""
        if count * min_bytes > self.end - self.pos:
            self.fail(f"impossible count: {count} {what} need at least {count * min_bytes} bytes "
                      f"but only {self.end - self.pos} remain", at=at)

    def value_type(self, what: str) -> GGUFValueType:
        at = self.pos
        raw = self.scalar(GGUFValueType.UINT32, f"value type of {what}")
        try:
            return GGUFValueType(raw)
        except ValueError:
            self.fail(f"unknown value type {raw} for {what}", at=at)

    def metadata(self, n_kv: int):
        kv: dict[str, Any] = {}
        kv_types: dict[str, GGUFValueType] = {}
        kv_array_types: dict[str, GGUFValueType] = {}
        first_seen: dict[str, int] = {}
        for index in range(n_kv):
            at = self.pos
            key = self.string(f"key of metadata entry {index}")
            if key in first_seen:
                self.fail(f"duplicate metadata key {key!r} (first at byte offset {first_seen[key]})", at=at)
            first_seen[key] = at
            vtype = self.value_type(f"key {key!r}")
            if vtype == GGUFValueType.ARRAY:
                kv[key], kv_array_types[key] = self.array(f"key {key!r}", depth=1)
            elif vtype == GGUFValueType.STRING:
                kv[key] = self.string(f"value of key {key!r}")
            else:
                kv[key] = self.scalar(vtype, f"value of key {key!r}")
            kv_types[key] = vtype
        self.key_offsets = first_seen
        return kv, kv_types, kv_array_types

    def array(self, what: str, depth: int):
        at = self.pos
        if depth > MAX_ARRAY_NESTING:
            self.fail(f"{what}: arrays nested deeper than {MAX_ARRAY_NESTING} levels")
        elem_type = self.value_type(f"elements of {what}")
        count = self.scalar(GGUFValueType.UINT64, f"element count of {what}")
        self.check_count(count, _MIN_ELEMENT_BYTES[elem_type], f"{elem_type.name} elements of {what}", at=at)
        if elem_type == GGUFValueType.STRING:
            return self.string_array(count, what), elem_type
        if elem_type == GGUFValueType.ARRAY:
            return [self.array(f"{what}[{i}]", depth + 1)[0] for i in range(count)], elem_type
        dtype = _ARRAY_DTYPES[elem_type]
        start = self.take(count * dtype.itemsize, what)
        raw = np.frombuffer(self.buf, dtype=dtype, count=count, offset=start) if count else np.empty(0, dtype)
        values = raw != 0 if elem_type == GGUFValueType.BOOL else raw.astype(dtype.newbyteorder("="))
        return values, elem_type

    def string_array(self, count: int, what: str) -> list[str]:
        # The hot loop of the whole reader (262k tokens in Gemma 3): locals only, one decode per
        # string, and the length read past the end left to struct to detect.
        buf, pos, end = self.buf, self.pos, self.end
        unpack_length = _U64.unpack_from
        strings = [""] * count
        i = size = 0
        try:
            for i in range(count):
                size = unpack_length(buf, pos)[0]
                pos += 8
                stop = pos + size
                if stop > end:
                    break
                strings[i] = buf[pos:stop].decode("utf-8", "surrogateescape")
                pos = stop
            else:
                self.pos = pos
                return strings
        except struct.error:
            self.pos = pos
            self.fail(f"truncated file: length of {what}[{i}] needs 8 bytes but only {end - pos} remain")
        self.pos = pos
        self.fail(f"truncated file: {what}[{i}] needs {size} bytes but only {end - pos} remain")

    def tensor_infos(self, n_tensors: int) -> list[_TensorInfo]:
        infos = []
        first_seen: dict[str, int] = {}
        for index in range(n_tensors):
            at = self.pos
            name = self.string(f"name of tensor {index}")
            if name in first_seen:
                self.fail(f"duplicate tensor name {name!r} (first at byte offset {first_seen[name]})", at=at)
            first_seen[name] = at
            infos.append(self.tensor_info(name, at))
        return infos

    def tensor_info(self, name: str, at: int) -> _TensorInfo:
        what = f"tensor {name!r}"
        n_dims = self.scalar(GGUFValueType.UINT32, f"n_dims of {what}")
        if not 1 <= n_dims <= MAX_DIMS:
            self.fail(f"{what} has {n_dims} dimensions; GGUF tensors have 1 to {MAX_DIMS}", at=self.pos - 4)
        dims_at = self.take(8 * n_dims, f"dimensions of {what}")
        dims = struct.unpack_from(f"<{n_dims}Q", self.buf, dims_at)  # innermost first
        type_at = self.pos
        raw_type = self.scalar(GGUFValueType.UINT32, f"type of {what}")
        relative_offset = self.scalar(GGUFValueType.UINT64, f"data offset of {what}")
        n_elements = 1
        for dim in dims:
            if dim >= _INT64_LIMIT:
                self.fail(f"{what} has dimension {dim - (1 << 64)} (negative as int64)", at=dims_at)
            n_elements *= dim
        if n_elements >= _INT64_LIMIT:
            self.fail(f"{what} with dims {list(dims)} has {n_elements} elements, more than int64 holds", at=dims_at)
        ttype = _tensor_type(raw_type)
        if ttype is None:
            self.fail(f"{what} has unknown tensor type {raw_type}", at=type_at)
        block_size, type_size = GGML_QUANT_SIZES[ttype]
        if dims[0] % block_size:
            self.fail(f"{what} of type {ttype.name} has rows of {dims[0]} elements, not a multiple "
                      f"of its block size {block_size}", at=dims_at)
        return _TensorInfo(name, ttype, tuple(reversed(dims)), n_elements // block_size * type_size,
                           relative_offset, at)


def _tensor_type(raw: int) -> GGMLQuantizationType | None:
    """The GGML type with this number, if gguf-py knows it and its block layout."""
    try:
        ttype = GGMLQuantizationType(raw)
    except ValueError:
        return None
    return ttype if ttype in GGML_QUANT_SIZES else None


def _alignment_from(kv: dict[str, Any], kv_types: dict[str, GGUFValueType], at: int | None) -> int:
    if ALIGNMENT_KEY not in kv:
        return DEFAULT_ALIGNMENT
    alignment = kv[ALIGNMENT_KEY]
    if kv_types[ALIGNMENT_KEY] not in _INTEGER_TYPES:
        raise GGUFError(f"{ALIGNMENT_KEY} has type {kv_types[ALIGNMENT_KEY].name}, expected an integer "
                        f"(at byte offset {at})")
    if alignment <= 0 or alignment & (alignment - 1):
        raise GGUFError(f"{ALIGNMENT_KEY} = {alignment} is not a nonzero power of two (at byte offset {at})")
    return alignment


def _check_data_ranges(infos: list[_TensorInfo], data_offset: int, alignment: int, file_size: int) -> None:
    """Each tensor's data must be aligned, inside the file, and overlap no other tensor's."""
    for info in infos:
        if info.relative_offset % alignment:
            raise GGUFError(f"tensor {info.name!r} data offset {info.relative_offset} is not a multiple "
                            f"of the alignment {alignment} (tensor entry at byte offset {info.at})")
        end = data_offset + info.relative_offset + info.nbytes
        if end > file_size:
            raise GGUFError(f"tensor {info.name!r} data [{data_offset + info.relative_offset}, {end}) runs "
                            f"past the end of the {file_size}-byte file (tensor entry at byte offset {info.at})")
    previous = None
    for info in sorted((i for i in infos if i.nbytes), key=lambda i: i.relative_offset):
        if previous is not None and info.relative_offset < previous.relative_offset + previous.nbytes:
            raise GGUFError(f"tensor {info.name!r} data overlaps tensor {previous.name!r} "
                            f"(tensor entry at byte offset {info.at})")
        previous = info
