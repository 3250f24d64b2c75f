"""`lantern pull NAME` and `lantern list`."""
from __future__ import annotations

from .catalog import CATALOG, cache_status, cached_path, pull


def configure_pull_parser(p) -> None:
    p.add_argument("name", choices=sorted(CATALOG), metavar="NAME", help="catalog model name")


def pull_main(args) -> int:
    print(pull(args.name))
    return 0


def configure_list_parser(p) -> None:
    pass


def list_main(args) -> int:
    width = max(len(n) for n in CATALOG)
    for name, e in CATALOG.items():
        print(f"{name:<{width}}  {_state(name)}\n{'':<{width}}  {e.description}")
    return 0


def _state(name: str) -> str:
    path, status = cached_path(name), cache_status(name)
    if status == "missing":
        return "not downloaded"
    if status == "modified":
        return f"MODIFIED: {path} no longer matches its sha256 (`lantern pull {name}` downloads it again)"
    return f"{path.stat().st_size / 1e6:7.1f} MB  {path}"
