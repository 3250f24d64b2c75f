"""Time GGUF header loading: lanternlm's read_gguf against gguf-py's GGUFReader, like with like.

    python benchmarks/bench_gguf_load.py MODEL.gguf [MORE.gguf ...] [--repeat 5] [--no-reference]

Both readers are timed the same way: `--repeat` runs each, reported as the best and the first
(a cold first run pays for page faults and imports the later ones do not). read_gguf reads the
metadata and tensor table (tensors mapped, not read); for GGUFReader the time includes turning
every metadata field into Python values with ReaderField.contents(), which is what read_gguf
returns. The ratio compares best with best.
"""
import argparse
import time
from typing import Callable, NamedTuple

import gguf

from lanternlm.formats.gguf import read_gguf


class Timing(NamedTuple):
    best: float
    first: float


def timing(run: Callable[[], object], repeat: int, clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Best and first wall time of `repeat` calls of `run`."""
    if repeat < 1:
        raise ValueError(f"--repeat must be >= 1, got {repeat}")
    times = []
    for _ in range(repeat):
        start = clock()
        run()
        times.append(clock() - start)
    return Timing(min(times), times[0])


def load_with_read_gguf(path: str) -> str:
    with read_gguf(path) as f:
        return (f"{f.arch}, {len(f.kv)} keys, {len(f.tensors)} tensors, "
                f"{len(f.kv.get('tokenizer.ggml.tokens', ()))} tokens")


def load_with_gguf_reader(path: str) -> None:
    reader = gguf.GGUFReader(path)
    for field in reader.fields.values():
        field.contents()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-reference", action="store_true", help="skip gguf.GGUFReader (slow)")
    args = parser.parse_args(argv)
    for path in args.paths:
        ours = timing(lambda: load_with_read_gguf(path), args.repeat)
        print(f"{path}\n  {load_with_read_gguf(path)}")
        print(f"  lanternlm read_gguf               best {ours.best:7.3f} s   first {ours.first:7.3f} s")
        if not args.no_reference:
            ref = timing(lambda: load_with_gguf_reader(path), args.repeat)
            print(f"  gguf.GGUFReader + contents()    best {ref.best:7.3f} s   first {ref.first:7.3f} s"
                  f"   (best / best: {ref.best / ours.best:.0f}x read_gguf, over {args.repeat} runs each)")


if __name__ == "__main__":
    main()
