"""How much memory this process can still take, and a check to run before a large allocation.

    available_memory() -> AvailableMemory(bytes, source) | None
    available_memory_bytes() -> int | None
    ensure_available(nbytes, what, available, advice="")   # InsufficientMemoryError past it
    format_bytes(n) -> "35.8 GiB"

On Linux the answer is the smallest of: the kernel's estimate of memory available without
swapping (MemAvailable in /proc/meminfo), and for every cgroup with a memory limit on this
process's path (the cgroup and its ancestors, v2 `memory.max` or v1 `memory.limit_in_bytes`)
the limit minus the cgroup's working set (usage minus its inactive file pages, which the kernel
reclaims before it kills anything; the working set is what container runtimes compare with the
limit). Elsewhere the machine's physical memory stands in when the OS tells it, else None.
A request above the answer would swap, be killed by the OOM killer, or fail with MemoryError.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# cgroup version -> (limit file, usage file, memory.stat field of reclaimable inactive file pages)
_CGROUP_FILES = {
    2: ("memory.max", "memory.current", "inactive_file"),
    1: ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
}


class InsufficientMemoryError(MemoryError, ValueError):
    """An allocation would need more memory than this process can get (a ValueError too: it is
    the request, a context size or a budget, that is too large for this machine)."""


@dataclass(frozen=True)
class AvailableMemory:
    bytes: int
    source: str     # which limit decided it, for messages: "MemAvailable", "cgroup v2 limit ..."


def format_bytes(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None     # v2 writes "max" for no limit


def _stat_field(path: Path, field: str) -> int:
    try:
        for line in path.read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(" ")
            if name == field and value.isdigit():
                return int(value)
    except (OSError, UnicodeDecodeError):
        pass
    return 0


def _mem_available(proc: Path) -> int | None:
    try:
        for line in (proc / "meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, UnicodeDecodeError, ValueError, IndexError):
        pass
    return None


def _own_cgroups(proc: Path) -> dict[int, str]:
    """cgroup version -> this process's cgroup path in the hierarchy that holds its memory
    controller (v1: the line naming `memory`; v2: the unified `0::` line)."""
    paths: dict[int, str] = {}
    try:
        lines = (proc / "self" / "cgroup").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return paths
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            paths[2] = path
        elif "memory" in controllers.split(","):
            paths[1] = path
    return paths


def _cgroup_mounts(proc: Path) -> dict[int, tuple[str, Path]]:
    """cgroup version -> (root of the hierarchy seen by the mount, mount point), from mountinfo."""
    mounts: dict[int, tuple[str, Path]] = {}
    try:
        lines = (proc / "self" / "mountinfo").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return mounts
    for line in lines:
        fields = line.split()
        if "-" not in fields or len(fields) < 5:
            continue
        after = fields[fields.index("-") + 1:]
        fstype, options = after[0], after[2] if len(after) > 2 else ""
        root, mount_point = fields[3], Path(fields[4].replace("\\040", " "))
        if fstype == "cgroup2":
            mounts.setdefault(2, (root, mount_point))
        elif fstype == "cgroup" and "memory" in options.split(","):
            mounts.setdefault(1, (root, mount_point))
    return mounts


def _cgroup_headroom(proc: Path) -> AvailableMemory | None:
    """The tightest cgroup limit on this process's path, minus that cgroup's working set."""
    tightest = None
    mounts = _cgroup_mounts(proc)
    for version, path in _own_cgroups(proc).items():
        if version not in mounts:
            continue
        root, mount_point = mounts[version]
        relative = os.path.relpath(path, root) if path.startswith(root) else "."
        directory = (mount_point / relative).resolve()
        if not directory.is_dir() or mount_point.resolve() not in (directory, *directory.parents):
            directory = mount_point.resolve()  # our cgroup is not visible in this mount
        limit_file, usage_file, inactive_field = _CGROUP_FILES[version]
        for level in (directory, *directory.parents):
            limit = _read_int(level / limit_file)
            usage = _read_int(level / usage_file)
            if limit is not None and usage is not None:
                working_set = max(0, usage - _stat_field(level / "memory.stat", inactive_field))
                headroom = max(0, limit - working_set)
                if tightest is None or headroom < tightest.bytes:
                    tightest = AvailableMemory(headroom, f"cgroup v{version} limit "
                                               f"{format_bytes(limit)} in {level}")
            if level == mount_point.resolve():
                break
    return tightest


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def available_memory(proc: str | os.PathLike = "/proc") -> AvailableMemory | None:
    """The memory this process can still take (see the module docstring), and what decided it;
    None where the OS says nothing. `proc` is where procfs is mounted (tests point it elsewhere)."""
    proc = Path(proc)
    candidates = []
    mem_available = _mem_available(proc)
    if mem_available is not None:
        candidates.append(AvailableMemory(mem_available, "MemAvailable"))
        cgroup = _cgroup_headroom(proc)
        if cgroup is not None:
            candidates.append(cgroup)
    else:
        physical = _physical_memory()
        if physical is not None:
            candidates.append(AvailableMemory(physical, "physical memory"))
    return min(candidates, key=lambda m: m.bytes, default=None)


def available_memory_bytes() -> int | None:
    """Bytes this process can still take; None where the OS says nothing."""
    available = available_memory()
    return None if available is None else available.bytes


def ensure_available(nbytes: int, what: str, available: AvailableMemory | None,
                     advice: str = "") -> None:
    """Raise InsufficientMemoryError when `what`, needing `nbytes`, would not fit in `available`
    (e.g. available_memory(); None, where nothing is known, lets everything through)."""
    if available is not None and nbytes > available.bytes:
        raise InsufficientMemoryError(
            f"{what} needs {format_bytes(nbytes)}, but only {format_bytes(available.bytes)} of "
            f"memory is available ({available.source})" + (f"; {advice}" if advice else ""))
