"""Decode under RAM budgets against in-RAM decode, measured in one process.

    python benchmarks/bench_offload.py MODEL [--budgets 30% 50% 70%] [--plan PLAN.gguf]
                                       [-n 32] [-r 2] [-t 2] [--json]

For each budget: dense streaming one token per read ("dense", --no-draft), dense streaming with
drafts verified several per read of the output head ("drafts", runtime/resident_draft.py; where
the engine drafts at that budget), and with --plan the sparse FFN served from that offload plan.
Decode is timed as `lantern bench --ram-budget` times it (greedy generation after
the prose prompt, runtime/bench.py), and so is the in-RAM reference, measured first in the same
run. Prints tok/s and its ratio to in-RAM decode, bytes read per generated token against dense
streaming at the same budget, the neuron cache's hit rate, the read throughput and, with drafts,
the tokens each read of the head served.
"""
from __future__ import annotations

import argparse
import json

from lanternlm.formats.catalog import resolve
from lanternlm.offload.budget import format_bytes
from lanternlm.runtime.bench import PROSE_PROMPT_TOKENS, LoadOptions, bench_engine, prose_prompt, time_greedy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--budgets", nargs="+", default=["30%", "50%", "70%"])
    ap.add_argument("--plan", help="an offload plan (lantern offload) to run at each budget too")
    ap.add_argument("-n", "--n-gen", type=int, default=32)
    ap.add_argument("-r", "--repetitions", type=int, default=2)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="one line of JSON instead of the table")
    args = ap.parse_args()

    path = resolve(args.model)
    n_ctx = PROSE_PROMPT_TOKENS + args.n_gen
    base = LoadOptions(threads=args.threads, n_ctx=n_ctx, n_batch=PROSE_PROMPT_TOKENS)
    protocol = dict(n_prompt=PROSE_PROMPT_TOKENS, n_gen=args.n_gen, repetitions=args.repetitions)

    # in RAM, decode timed the same way (greedy after the prose prompt)
    from lanternlm.runtime.bench import load_lantern

    runner, _ = load_lantern(path, base)
    prompt = prose_prompt(runner.engine)
    time_greedy(runner, prompt, 2)                               # warm-up
    in_ram = max(args.n_gen / time_greedy(runner, prompt, args.n_gen) for _ in range(args.repetitions))
    del runner

    rows = []
    modes = [("dense", False, False), ("drafts", False, True)] + ([("plan", args.plan, False)] if args.plan else [])
    for budget in args.budgets:
        for mode, plan, draft in modes:
            opts = LoadOptions(**{**base.__dict__, "ram_budget": budget, "offload_plan": plan, "draft": draft})
            r = bench_engine("lantern", path, opts, **protocol)
            off = r.offload
            if draft and off["draft"] is None:       # no draft at this budget: the dense row says it
                continue
            rows.append({"budget": budget, "mode": mode, "tg_tps": r.tg.best, "in_ram_tps": in_ram,
                         "ratio": r.tg.best / in_ram, **off})
    if args.json:
        print(json.dumps({"model": args.model, "rows": rows}))
        return
    print(f"{args.model}: in-RAM decode {in_ram:.1f} tok/s (best of {args.repetitions}, greedy after the prose prompt)")
    print(f"{'budget':>7} {'mode':>6} {'tok/s':>7} {'vs RAM':>7} {'read/token':>11} {'dense/token':>12} "
          f"{'less':>6} {'hit rate':>8} {'GB/s':>5} {'tokens/read':>11} {'kept':>5}")
    for row in rows:
        less = row["dense_read_bytes_per_token"] / row["read_bytes_per_token"] if row["read_bytes_per_token"] else 0
        hit = "-" if row["cache_hit_rate"] is None else f"{row['cache_hit_rate']:.0%}"
        gbps = "-" if row["read_gbps"] is None else f"{row['read_gbps']:.2f}"
        d = row["draft"] or {}
        per_read = "-" if d.get("tokens_per_pass") is None else f"{d['tokens_per_pass']:.2f}"
        kept = "-" if d.get("acceptance") is None else f"{d['acceptance']:.0%}"
        print(f"{row['budget']:>7} {row['mode']:>6} {row['tg_tps']:7.1f} {row['ratio']:7.0%} "
              f"{format_bytes(row['read_bytes_per_token']):>11} {format_bytes(row['dense_read_bytes_per_token']):>12} "
              f"{less:5.2f}x {hit:>8} {gbps:>5} {per_read:>11} {kept:>5}")


if __name__ == "__main__":
    main()
