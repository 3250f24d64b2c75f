"""Decode speed and where the time goes: kernels versus Python dispatch.

    python benchmarks/bench_decode.py [model-or-path] [--threads 2] [--tokens 64] [--prompt 32] [--ops]

Prints the prompt's prefill speed, then, for one-token decode steps after the prompt (fixed
seeded ids, timed by runtime.bench as `lantern bench` times them):
- tok/s and ms per token of `Engine.eval([token])`;
- the time outside kernels: the same call list run through a Numba no-op that accepts the same
  arguments (the Python loop plus Numba's argument checking), plus `eval` itself with an empty
  call list (input checks, cache bookkeeping); and its fraction of the token time;
- with --ops, time per kernel (each call timed alone, so it includes its own dispatch).
Figures only; nothing here asserts on time.
"""
from __future__ import annotations

import argparse
import collections
import os
import time

from numba import njit

from lanternlm.formats.catalog import pull
from lanternlm.runtime.bench import bench_ids, time_decode, time_prefill
from lanternlm.runtime.engine import Engine


@njit(cache=True)
def _noop(*args):
    """Accepts a kernel's arguments and does nothing: what calling costs before any work."""
    return None


def per_call(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - t0) / repeat)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="smollm2-135m-instruct", help="catalog name or GGUF path")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64, help="decode steps to time")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens evaluated first")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (the best is kept)")
    ap.add_argument("--ops", action="store_true", help="also print time per kernel")
    args = ap.parse_args()

    path = args.model if os.path.exists(args.model) else pull(args.model, progress=False)
    t0 = time.perf_counter()
    eng = Engine.load(path, n_ctx=args.prompt + args.tokens + 64, threads=args.threads)
    prompt, gen = bench_ids(eng.cfg.n_vocab, args.prompt, args.tokens)   # fixed ids: no sampling timed
    eng.eval(prompt)                              # compiles every kernel the model needs
    eng.eval([int(prompt[-1])])
    print(f"{eng}  load+compile {time.perf_counter() - t0:.1f} s")

    prog = eng.decode_program
    t_token = t_run = float("inf")
    for _ in range(args.rounds):  # interleaved, best of each: a shared machine's noise only adds
        eng.truncate(args.prompt)
        t_token = min(t_token, time_decode(eng.eval, gen) / args.tokens)
        t0 = time.perf_counter()
        for _ in range(args.tokens):
            prog.run()                             # the same position each time: one cache slot
        t_run = min(t_run, (time.perf_counter() - t0) / args.tokens)
    t_prefill = float("inf")
    for _ in range(args.rounds):
        eng.reset()
        t_prefill = min(t_prefill, time_prefill(eng.eval, prompt))
    repeat = 20
    noop_calls = [(args_,) for _, args_ in prog.calls]
    for (a,) in noop_calls:
        _noop(*a)                                  # compile each argument signature once

    def dispatch_only():
        for (a,) in noop_calls:
            _noop(*a)

    t_dispatch = per_call(dispatch_only, repeat)
    def eval_bookkeeping_only():
        eng.truncate(args.prompt)
        eng.eval(gen[:1])

    calls, prog.calls = prog.calls, []             # eval() with nothing to run: its own bookkeeping
    t_eval_only = per_call(eval_bookkeeping_only, repeat)
    prog.calls = calls
    overhead = t_dispatch + t_eval_only
    print(f"prefill: {args.prompt / t_prefill:.1f} tok/s ({args.prompt} tokens, last logits only)")
    print(f"decode: {1 / t_token:.1f} tok/s, {t_token * 1e3:.2f} ms/token, {len(prog.calls)} kernel calls/token")
    print(f"Program.run: {t_run * 1e3:.2f} ms/token")
    print(f"outside kernels: {overhead * 1e3:.3f} ms/token = {100 * overhead / t_token:.1f}% "
          f"(dispatch {t_dispatch * 1e6 / len(prog.calls):.2f} us/call x {len(prog.calls)}, eval bookkeeping "
          f"{t_eval_only * 1e6:.0f} us)")

    if args.ops:
        acc = collections.defaultdict(float)
        for fn, a in prog.calls:
            acc[getattr(fn, "__name__", repr(fn))] += per_call(lambda: fn(*a), 5)
        total = sum(acc.values())
        for name, t in sorted(acc.items(), key=lambda kv: -kv[1]):
            print(f"  {name:28s} {t * 1e3:8.3f} ms  {100 * t / total:5.1f}%")


if __name__ == "__main__":
    main()
