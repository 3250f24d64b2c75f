"""GGUF metadata collected through gguf-py's typed `add_*` methods, then written by write_gguf.

gguf-py's GGUFWriter knows every key's name and value type (`add_context_length` writes
`<arch>.context_length` as UINT32, `add_rope_freq_base` a FLOAT32, ...), and gguf-py's
SpecialVocab emits the special-token keys through the same methods. `MetadataBuilder` keeps those
methods but records each key instead of preparing a file, so the converter states metadata the
way llama.cpp's converter does and our own atomic `write_gguf` writes it with the same types.
"""
from __future__ import annotations

from typing import Any

from gguf import GGUFValueType, GGUFWriter

__all__ = ["MetadataBuilder"]


class MetadataBuilder(GGUFWriter):
    """A GGUFWriter that never opens a file: `add_*` calls record (value, type, element type)."""

    def __init__(self, arch: str):
        self.entries: dict[str, tuple[Any, GGUFValueType, GGUFValueType | None]] = {}
        super().__init__(None, arch)  # records general.architecture through add_key_value

    def add_key_value(self, key: str, val: Any, vtype: GGUFValueType,
                      sub_type: GGUFValueType | None = None) -> None:
        # a later call wins: family hooks override the generic values on purpose
        if vtype == GGUFValueType.ARRAY and sub_type is None and len(val):
            sub_type = GGUFValueType.get_type(val[0])  # what GGUFWriter would infer on writing
        self.entries[key] = (val, vtype, sub_type)

    def get(self, key: str, default: Any = None) -> Any:
        entry = self.entries.get(key)
        return default if entry is None else entry[0]

    def export(self) -> tuple[dict[str, Any], dict[str, GGUFValueType], dict[str, GGUFValueType]]:
        """(kv, kv_types, kv_array_types) in the form `write_gguf` takes."""
        kv = {key: value for key, (value, _, _) in self.entries.items()}
        kv_types = {key: vtype for key, (_, vtype, _) in self.entries.items()}
        array_types = {key: sub for key, (_, _, sub) in self.entries.items() if sub is not None}
        return kv, kv_types, array_types
