"""Decode under a memory cap on the whole process (page cache included): lantern vs llama.cpp.

    python benchmarks/bench_memory_cap.py MODEL --cap 350MiB [--engines lantern llama.cpp]
                                          [-n 32] [-t 2] [--ctx 256] [--lantern-args ...]

Each engine runs in a child process inside a cgroup v1 memory group made for it under this
process's own (see /proc/self/cgroup), with memory.limit_in_bytes set to the cap, so the page
cache it fills counts against the cap as it would in a memory-limited container. Before each
run the model file is evicted from the page cache (fsync, then posix_fadvise DONTNEED), so that
pages cached earlier are not free for the child. The group is removed afterwards.

lantern is loaded with no --ram-budget (unless --lantern-budget gives one): it must find the
limit itself and choose its budget.
llama.cpp (llama-cpp-python, if importable; not a dependency) uses its default mmap. Both decode
greedily after the same prose prompt (lantern's offload/texts/evaluation.txt, tokenized here),
lantern as `lantern run` does (drafting where its head streams, runtime/resident_draft.py; the
tokens are plain decode's); the figure is generated tokens per second, the prompt excluded.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lanternlm.formats.catalog import resolve
from lanternlm.offload.budget import parse_budget

CHILD = r"""
import json, sys, time
import numpy as np
engine, path, n_gen, threads, ctx = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
prompt, ram_budget = json.loads(sys.argv[6]), (sys.argv[7] if sys.argv[7] != "auto" else None)
t0 = time.perf_counter()
if engine == "lantern":
    import warnings
    from lanternlm.runtime.engine import Engine
    notices = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eng = Engine.load(path, n_ctx=ctx, threads=threads, ram_budget=ram_budget)
    notices = [str(w.message) for w in caught]
    budget = getattr(eng.backend, "ram_budget", None)
    from lanternlm.runtime.generate import KVContext, generate_step
    def tokens(prompt, n):   # as `lantern run` generates: drafts verified where the engine drafts
        return generate_step(KVContext(eng, ctx), prompt, lambda logits, history: int(np.argmax(logits)),
                             max_tokens=n)
else:
    from llama_cpp import Llama
    llm = Llama(model_path=path, n_ctx=ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
    notices, budget = [], None
    def tokens(prompt, n):
        ids = prompt
        for _ in range(n):
            llm.eval(ids)
            ids = [int(np.argmax(llm.scores[llm.n_tokens - 1]))]
            yield ids[0]
load_s = time.perf_counter() - t0
steps = tokens(prompt, n_gen + 1)
next(steps)          # the prompt's prefill and the first token: not timed
counters = lambda: ((eng.backend.bytes_read, eng.backend.read_seconds)
                    if engine == "lantern" and hasattr(eng.backend, "bytes_read") else (0, 0.0))
read0, read_s0 = counters()
t0 = time.perf_counter()
for _ in steps:
    pass
seconds = time.perf_counter() - t0
read1, read_s1 = counters()
print(json.dumps({"tok_s": n_gen / seconds, "load_s": load_s, "budget": budget, "notices": notices,
                  "read_mb_per_token": (read1 - read0) / n_gen / 1e6,
                  "read_gbps": (read1 - read0) / (read_s1 - read_s0) / 1e9 if read_s1 > read_s0 else None}))
"""


def own_memory_cgroup() -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/")
    raise SystemExit("no cgroup v1 memory controller for this process")


def evict(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_capped(engine: str, path: str, cap: int, args, prompt: list[int]) -> dict:
    group = own_memory_cgroup() / f"lantern-bench-{os.getpid()}-{engine.replace('.', '')}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(cap))
        evict(path)
        procs = str(group / "cgroup.procs")

        def enter_group():          # in the child, before exec: every allocation is capped
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, engine, path, str(args.n_gen), str(args.threads),
                               str(args.ctx), json.dumps(prompt), args.lantern_budget], preexec_fn=enter_group,
                              capture_output=True, text=True, timeout=args.timeout)
        wall = time.perf_counter() - t0
        peak = int((group / "memory.max_usage_in_bytes").read_text())
        failcnt = int((group / "memory.failcnt").read_text())
    finally:
        for _ in range(50):          # the group empties once the child is reaped
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    if proc.returncode != 0:
        return {"engine": engine, "error": (proc.stderr.strip().splitlines() or ["killed"])[-1],
                "returncode": proc.returncode, "peak_mib": peak / 2**20, "failcnt": failcnt, "wall_s": wall}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"engine": engine, **result, "peak_mib": peak / 2**20, "failcnt": failcnt, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--cap", required=True, help="memory cap on the whole process, e.g. 350MiB")
    ap.add_argument("--engines", nargs="+", default=["lantern", "llama.cpp"], choices=["lantern", "llama.cpp"])
    ap.add_argument("-n", "--n-gen", type=int, default=32)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=1200.0)
    ap.add_argument("--lantern-budget", default="auto",
                    help="lantern's --ram-budget (default auto: no budget given, lantern chooses)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    path = str(resolve(args.model))
    cap = parse_budget(args.cap, os.path.getsize(path))
    from lanternlm.formats.gguf import read_gguf
    from lanternlm.formats.tokenizer import load_tokenizer
    from lanternlm.offload.texts import read_text

    g = read_gguf(path)
    prompt = list(load_tokenizer(g.kv).encode(read_text("evaluation"), add_special=True)[:64])
    g.close()
    rows = [run_capped(engine, path, cap, args, prompt) for engine in args.engines]
    if args.json:
        print(json.dumps({"model": args.model, "cap_bytes": cap, "rows": rows}))
        return
    print(f"{args.model}: {os.path.getsize(path) / 2**20:.0f} MiB file, cap {cap / 2**20:.0f} MiB "
          f"(page cache included), {args.n_gen} greedy tokens after a {len(prompt)}-token prompt")
    for r in rows:
        if "error" in r:
            print(f"  {r['engine']:>9}: failed ({r['error']}), peak {r['peak_mib']:.0f} MiB")
            continue
        budget = "" if r["budget"] is None else f", budget chosen {r['budget'] / 2**20:.0f} MiB"
        if r.get("read_gbps"):
            budget += f", read {r['read_mb_per_token']:.0f} MB/token at {r['read_gbps']:.2f} GB/s"
        print(f"  {r['engine']:>9}: {r['tok_s']:6.2f} tok/s, load {r['load_s']:.1f} s, peak {r['peak_mib']:.0f} MiB, "
              f"failcnt {r['failcnt']}{budget}")


if __name__ == "__main__":
    main()
