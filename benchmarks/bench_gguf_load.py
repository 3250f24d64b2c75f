"""Time GGUF header loading: lanternlm's read_gguf against gguf-py's GGUFReader.

    python benchmarks/bench_gguf_load.py MODEL.gguf [MORE.gguf ...] [--repeat 5] [--no-reference]

For each file it prints read_gguf's best and first wall time (metadata + tensor table, tensors
mapped, not read), then GGUFReader's constructor time and the time to also turn every metadata
field into Python values with ReaderField.contents(), which is what read_gguf returns.
"""
import argparse
import time

import gguf

from lanternlm.formats.gguf import read_gguf


def time_read_gguf(path: str, repeat: int) -> tuple[float, float, str]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        with read_gguf(path) as f:
            times.append(time.perf_counter() - start)
            summary = f"{f.arch}, {len(f.kv)} keys, {len(f.tensors)} tensors, " \
                      f"{len(f.kv.get('tokenizer.ggml.tokens', ()))} tokens"
    return min(times), times[0], summary


def time_gguf_reader(path: str) -> tuple[float, float]:
    start = time.perf_counter()
    reader = gguf.GGUFReader(path)
    constructed = time.perf_counter() - start
    for field in reader.fields.values():
        field.contents()
    return constructed, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-reference", action="store_true", help="skip gguf.GGUFReader (slow)")
    args = parser.parse_args()
    for path in args.paths:
        best, first, summary = time_read_gguf(path, args.repeat)
        print(f"{path}\n  {summary}")
        print(f"  lanternlm read_gguf     best {best:7.3f} s   first {first:7.3f} s")
        if not args.no_reference:
            constructed, with_values = time_gguf_reader(path)
            print(f"  gguf.GGUFReader         init {constructed:7.3f} s   +contents() {with_values:7.3f} s"
                  f"   ({with_values / best:.0f}x read_gguf)")


if __name__ == "__main__":
    main()
