"""`lantern bench MODEL`: prefill and decode speed as llama-bench measures it.

    lantern bench MODEL [-p 128] [-n 64] [-r 3] [-t 2] [--json] [--vs-llama-cpp] [--backend cpu]

pp: one eval of p tokens from an empty cache; tg: n one-token evals from an empty cache;
tokens/s as mean +- std over r repetitions after a warm-up (see runtime.bench). Also the
load time (Engine.load, in this process) and memory: private (anon) and file-backed pages
apart, read the same way for each engine. Without -t, lantern runs as it does by default
(threads=None: the thread count chosen while it runs, and how many tokens ran on each count
is printed) and llama.cpp on every core; -t N fixes both. With --vs-llama-cpp, llama.cpp runs
the same file through llama-cpp-python (if importable) with the same protocol and ids, and the
ratios ours / llama.cpp are printed. A table (or JSON with --json) goes to stdout; progress
to stderr.
"""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from .bench import PROSE_PROMPT_TOKENS, BenchResult, LoadOptions, bench_engine, require_llama_cpp
from .cli_common import add_runtime_args, draft_option, offload_plan_option


def configure_parser(p) -> None:
    p.add_argument("model", help="GGUF path or catalog name")
    p.add_argument("-p", "--n-prompt", type=int, default=128, metavar="N", help="prefill tokens (default 128)")
    p.add_argument("-n", "--n-gen", type=int, default=64, metavar="N", help="decode tokens (default 64)")
    p.add_argument("-r", "--repetitions", type=int, default=3, metavar="N", help="repetitions (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random token ids (default 0)")
    p.add_argument("--json", action="store_true", help="print one line of JSON instead of the table")
    p.add_argument("--vs-llama-cpp", action="store_true",
                   help="also run llama.cpp (llama-cpp-python, if installed) on the same file and compare")
    add_runtime_args(p, ctx=None, ctx_help="context window (default: p + n)")


def _check(args) -> None:
    for flag, value in (("-p", args.n_prompt), ("-n", args.n_gen), ("-r", args.repetitions),
                        ("--threads", args.threads)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    prompt = max(args.n_prompt, PROSE_PROMPT_TOKENS) if greedy_decode(args) else args.n_prompt
    if args.ctx is not None and args.ctx < prompt + args.n_gen:
        raise ValueError(f"--ctx {args.ctx} is smaller than the {prompt + args.n_gen} tokens the test needs")
    if args.vs_llama_cpp and args.backend != "cpu":
        raise ValueError("--vs-llama-cpp compares CPU engines: use --backend cpu")


def _progress(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def _ratio(ours: float, theirs: float) -> float | None:
    return ours / theirs if theirs > 0 else None


def ratios(ours: BenchResult, theirs: BenchResult) -> dict:
    """ours / llama.cpp: tokens/s (mean and best; > 1 = we are faster) and load time (< 1 = faster)."""
    return {"pp": _ratio(ours.pp.mean, theirs.pp.mean), "tg": _ratio(ours.tg.mean, theirs.tg.mean),
            "pp_best": _ratio(ours.pp.best, theirs.pp.best), "tg_best": _ratio(ours.tg.best, theirs.tg.best),
            "load": _ratio(ours.load_s, theirs.load_s)}


def format_table(model: str, size_mib: float, results: list[tuple[str, BenchResult]]) -> str:
    """llama-bench's markdown table: one row per (backend, test); threads "auto" where the
    engine chose them as it ran."""
    header = ["model", "size", "backend", "threads", "test", "t/s", "best t/s"]
    rows = []
    for backend, res in results:
        threads = "auto" if res.threads is None else str(res.threads)
        for test, tp in (("pp", res.pp), ("tg", res.tg)):
            rows.append([model, f"{size_mib:.2f} MiB", backend, threads, f"{test}{tp.tokens}",
                         f"{tp.mean:.2f} ± {tp.std:.2f}", f"{tp.best:.2f}"])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    right = {3, 5, 6}

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "| " + " | ".join("-" * (w - 1) + (":" if i in right else "-") for i, w in enumerate(widths)) + " |"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _mib(x: float | None, sign: str = "") -> str:
    return "-" if x is None else f"{x:{sign}.0f} MiB"


def format_memory(r: BenchResult) -> str:
    """Private and file-backed memory after the run (and what this engine added), the peak."""
    if r.memory is None:
        return "memory not reported on this OS"
    return (f"private (anon) {_mib(r.memory.anon_mib)} ({_mib(r.growth('anon_mib'), '+')}), "
            f"file pages {_mib(r.memory.file_mib)} ({_mib(r.growth('file_mib'), '+')}), "
            f"peak {_mib(r.memory.peak_mib)}")


def format_threads_used(used: dict[str, dict[int, int]]) -> str:
    """'prefill 2: 384, 1: 0 tokens; decode ...' for the thread counts an engine chose."""
    return "; ".join(f"{phase} " + ", ".join(f"{n}: {tokens}" for n, tokens in counts.items()) + " tokens"
                     for phase, counts in used.items())


def greedy_decode(args) -> bool:
    """Whether tg is greedy generation after the prose prompt (runtime.bench): under a RAM
    budget, or with speculative decoding (--spec, --draft)."""
    return args.ram_budget is not None or isinstance(draft_option(args), str)


def format_offload(name: str, off: dict) -> str:
    """One line of the offload report (runtime.bench.offload_report)."""
    from ..offload.budget import format_bytes

    gbps = "-" if off["read_gbps"] is None else f"{off['read_gbps']:.2f} GB/s"
    saved = off["dense_read_bytes_per_token"] / off["read_bytes_per_token"] if off["read_bytes_per_token"] else None
    return (f"{name} offload: budget {format_bytes(off['ram_budget_bytes'])}, resident "
            f"{format_bytes(off['resident_bytes'])}; read {format_bytes(off['read_bytes_per_token'])}/token "
            f"(dense streaming {format_bytes(off['dense_read_bytes_per_token'])}/token"
            + (f", {saved:.2f}x less" if saved else "") + f") at {gbps}; tg is greedy after a prose prompt"
            + (format_draft(off["draft"]) if off.get("draft") else ""))


def format_draft(d: dict) -> str:
    """What drafting did (runtime.bench.draft_report), as part of a line."""
    kept = "-" if d["acceptance"] is None else f"{d['acceptance']:.0%}"
    per_pass = "-" if d["tokens_per_pass"] is None else f"{d['tokens_per_pass']:.2f}"
    source = {"resident": f"{d['head_rows']} head rows", "ngram": "prompt lookup", "model": "a draft model"}[d["kind"]]
    unit = "read of the head" if d["kind"] == "resident" else "verification or plain step"
    mean = "-" if d["mean_kept_per_round"] is None else f"{d['mean_kept_per_round']:.2f}"
    line = (f"; drafts from {source}: {d['rounds']} rounds, {d['plain_steps']} plain steps, "
            f"{kept} of drafted tokens kept (acceptance), {mean} kept per round (mean accepted length), "
            f"{per_pass} tokens per {unit}")
    if "speedup" in d:
        line += f"; {d['tok_s']:.1f} tok/s against {d['plain_tok_s']:.1f} without drafts: {d['speedup']:.2f}x"
    return line


def format_summary(results: list[tuple[str, BenchResult]], ratio: dict | None) -> str:
    out = []
    for name, r in results:
        out.append(f"{name}: load {r.load_s:.3f} s, {format_memory(r)}")
        if r.threads_used:
            out.append(f"{name}: threads chosen per phase, {format_threads_used(r.threads_used)}")
    out += [format_offload(name, r.offload) for name, r in results if r.offload]
    out += [f"{name}: tg is greedy after a prose prompt" + format_draft(r.draft) for name, r in results if r.draft]
    if ratio:
        fmt = lambda x: "-" if x is None else f"{x:.2f}x"  # noqa: E731
        out.append(f"ours / llama.cpp: pp {fmt(ratio['pp'])} (best {fmt(ratio['pp_best'])}), "
                   f"tg {fmt(ratio['tg'])} (best {fmt(ratio['tg_best'])}), load time {fmt(ratio['load'])}")
    return "\n".join(out)


def main(args) -> int:
    import numba

    from ..formats.catalog import resolve

    _check(args)
    path = Path(resolve(args.model))
    # under a RAM budget tg generates after a prose prompt of PROSE_PROMPT_TOKENS
    prompt = max(args.n_prompt, PROSE_PROMPT_TOKENS) if greedy_decode(args) else args.n_prompt
    n_ctx = args.ctx or prompt + args.n_gen
    opts = LoadOptions(threads=args.threads, n_ctx=n_ctx, n_batch=args.n_prompt,
                       backend=args.backend, device=args.device, ram_budget=args.ram_budget,
                       offload_plan=offload_plan_option(args), draft=draft_option(args),
                       cache_type_k=args.cache_type_k, cache_type_v=args.cache_type_v)
    # llama.cpp has no automatic choice: every core Numba sees, unless -t fixes both engines
    llama_opts = replace(opts, threads=args.threads or numba.config.NUMBA_NUM_THREADS)
    if args.vs_llama_cpp:
        require_llama_cpp()         # fail before the long part when llama-cpp-python is missing

    protocol = dict(n_prompt=args.n_prompt, n_gen=args.n_gen, repetitions=args.repetitions, seed=args.seed,
                   progress=_progress)
    ours = bench_engine("lantern", path, opts, **protocol)
    results = [(f"lantern {args.backend}", ours)]
    report = {"model": str(args.model), "path": str(path), "backend": args.backend,
              "n_prompt": args.n_prompt, "n_gen": args.n_gen, "repetitions": args.repetitions,
              "n_ctx": n_ctx, **ours.as_dict()}
    ratio = None
    if args.vs_llama_cpp:
        theirs = bench_engine("llama.cpp", path, llama_opts, vocab_check=ours.n_vocab, **protocol)
        results.append(("llama.cpp cpu", theirs))
        ratio = ratios(ours, theirs)
        report["llama_cpp"] = theirs.as_dict()
        report["ratios"] = ratio

    if args.json:
        print(json.dumps(report))
    else:
        size_mib = path.stat().st_size / 2**20
        print(format_table(path.stem if Path(args.model).exists() else args.model, size_mib, results))
        print()
        print(format_summary(results, ratio))
    return 0
