"""`lantern pull NAME` and `lantern list`."""
from __future__ import annotations

from .catalog import CATALOG, cached_path, downloaded, pull


def configure_pull_parser(p) -> None:
    p.add_argument("name", choices=sorted(CATALOG), metavar="NAME", help="catalog model name")


def pull_main(args) -> int:
    print(pull(args.name))
    return 0


def configure_list_parser(p) -> None:
    pass


def list_main(args) -> int:
    have = downloaded()
    width = max(len(n) for n in CATALOG)
    for name, e in CATALOG.items():
        state = f"{have[name] / 1e6:7.1f} MB  {cached_path(name)}" if name in have else "not downloaded"
        print(f"{name:<{width}}  {state}\n{'':<{width}}  {e.description}")
    return 0
