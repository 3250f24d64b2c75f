"""Refuse output paths that would destroy what a model tool reads or what the catalog owns.

`lantern quantize` and `lantern convert` write atomically (formats/writer.py): the new file is
renamed over whatever the output path names. That is right for an old output and data loss
for the tool's own input (`quantize m.gguf m.gguf`, or OUT a hard or symbolic link to IN),
or for a catalog model in the cache, which `list`, `info` and `pull` would take for the
verified download.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .catalog import cache_dir

__all__ = ["UnsafeOutputError", "check_output_path"]


class UnsafeOutputError(ValueError):
    """The output path would overwrite an input or write into the model cache."""


def check_output_path(output: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """`output` as a Path, or UnsafeOutputError when writing it would replace one of `inputs`
    (the same file by any name: samefile compares device and inode) or land in the model cache."""
    out = Path(output)
    for source in inputs:
        if _same_file(out, source):
            raise UnsafeOutputError(f"{out} is the input file {source}; write the output to another file")
    cache = cache_dir()
    if _is_within(Path(os.path.realpath(out)), Path(os.path.realpath(cache))):
        raise UnsafeOutputError(f"{out} is in the model cache {cache}, which holds only verified catalog "
                                f"downloads; write the output elsewhere")
    return out


def _same_file(a: Path, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:             # one of them does not exist: the output cannot be that input
        return False


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents
