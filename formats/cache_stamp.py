"""Stamps that let a verified file in the model cache stay verified without hashing it again.

`pull` checks a model's sha256 once, when it assembles the file. Hashing it again at every
load would cost about a second per 500 MB, so a stamp beside the file (`NAME.gguf.verified`)
records the sha256 it matched together with the file's size, mtime and inode at that moment.
A file whose stamp still agrees with a `stat` is the verified file; one that was replaced or
written to since (a new inode, size or mtime) is hashed again, and stamped again if its bytes
still match.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

__all__ = ["STAMP_SUFFIX", "stamp_path", "file_sha256", "write_stamp", "remove_stamp", "holds"]

STAMP_SUFFIX = ".verified"
_CHUNK = 1 << 22


def stamp_path(path: Path) -> Path:
    return path.with_name(path.name + STAMP_SUFFIX)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stamp(path: Path, sha256: str) -> dict:
    st = path.stat()
    return {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def write_stamp(path: Path, sha256: str) -> None:
    """Record that `path`, as it is now, holds the bytes of `sha256` (which the caller checked).

    Written atomically. A cache the user may read but not write gets no stamp: its files are
    then hashed at each check, which is slower but still correct."""
    target = stamp_path(path)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        temporary.write_text(json.dumps(_stamp(path, sha256)) + "\n", encoding="utf-8")
        os.replace(temporary, target)
    except OSError:
        temporary.unlink(missing_ok=True)


def remove_stamp(path: Path) -> None:
    stamp_path(path).unlink(missing_ok=True)


def _stamped(path: Path, sha256: str) -> bool:
    try:
        recorded = json.loads(stamp_path(path).read_text(encoding="utf-8"))
        return recorded == _stamp(path, sha256)
    except (OSError, ValueError):       # no stamp, or not one we wrote
        return False


def holds(path: Path, sha256: str) -> bool:
    """Whether the file at `path` holds the bytes whose sha256 is `sha256`: from its stamp when
    the file is unchanged since it was stamped, else by hashing it (and stamping it on a match)."""
    if _stamped(path, sha256):
        return True
    if file_sha256(path) != sha256:
        return False
    write_stamp(path, sha256)
    return True
