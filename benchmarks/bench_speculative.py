"""Speculative decoding against plain decode, measured in one process.

    python benchmarks/bench_speculative.py [MODEL] [--spec ngram|draft:PATH] [-n 160] [-t 2] [-r 2]

Greedy generation of up to n tokens for each prompt: two that ask to edit a given piece of
code or text (the reply repeats much of its prompt, where prompt lookup pays) and one without
repetition. For each: plain decode tok/s, with drafts (Model(draft="ngram"), prompt lookup, by
default; or a draft model with --spec draft:PATH), the speedup, the
share of drafted tokens kept, the tokens per verification, and whether the texts are identical
(they must be). Also verify(k) / decode for k = 1, 2, 4, 8: what checking k tokens at once
costs on our kernels.
"""
from __future__ import annotations

import argparse
import time

from lanternlm.runtime.model import Model

CODE = '''def merge_sorted(a, b):
    result = []
    i = 0
    j = 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            result.append(a[i])
            i += 1
        else:
            result.append(b[j])
            j += 1
    result.extend(a[i:])
    result.extend(b[j:])
    return result
'''
TEXT = ("The lighthouse stood at the end of the harbour wall. Every night its keeper climbed the ninety "
        "steps, trimmed the wick and wound the clockwork that turned the lens. Ships that passed saw "
        "the beam sweep across the water every ten seconds, and knew where the rocks were.")
PROMPTS = {
    "edit code": "Add type hints to this Python function and rename `result` to `merged`. Reply with the "
                 "code only.\n\n" + CODE,
    "edit text": "Rewrite this paragraph in the present tense, changing nothing else:\n\n" + TEXT,
    "no repetition": "Write a short story about a cat who learns to play the piano.",
}


def run(model, ids, n):
    model.context.invalidate()
    tokens, stats = [], None
    for chunk in model.stream_generate(ids, max_tokens=n, temperature=0):
        if chunk.token is not None:
            tokens.append(chunk.token)
        stats = chunk.stats
    return tokens, (stats.completion_tokens - 1) / stats.decode_seconds


def verify_costs(engine, ks=(1, 2, 4, 8)) -> dict[int, float]:
    engine.reset()
    engine.eval(list(range(1000, 1100)))
    base = engine.n_past

    def best(fn, reps=5):
        times = []
        for _ in range(reps):
            engine.truncate(base)
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    decode = best(lambda: [engine.eval([5 + i]) for i in range(4)]) / 4
    return {k: best(lambda: engine.verify(list(range(5, 5 + k)))) / decode for k in ks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("-n", "--n-gen", type=int, default=160)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--repetitions", type=int, default=2)
    ap.add_argument("--spec", default="ngram", help="the draft: ngram (default) or draft:PATH")
    args = ap.parse_args()
    plain = Model.load(args.model, n_ctx=1024, threads=args.threads, draft=False)
    drafting = Model.load(args.model, n_ctx=1024, threads=args.threads, draft=args.spec)
    print(f"{args.model}, {args.threads} threads, greedy, up to {args.n_gen} tokens, best of {args.repetitions}, "
          f"drafts: {args.spec}")
    print(f"{'prompt':>14} {'tokens':>6} {'plain tok/s':>11} {'spec tok/s':>11} {'speedup':>7} "
          f"{'kept':>5} {'tokens/verify':>13} {'identical':>9}")
    for name, ask in PROMPTS.items():
        ids = plain.chat_prompt_ids([{"role": "user", "content": ask}])
        run(plain, ids, 8), run(drafting, ids, 8)                       # warm-up
        base, fast, before, same = 0.0, 0.0, None, True
        for _ in range(args.repetitions):
            want, tps = run(plain, ids, args.n_gen)
            base = max(base, tps)
            before = drafting.engine.draft.counts()
            got, tps = run(drafting, ids, args.n_gen)
            fast = max(fast, tps)
            same &= got == want
        after = drafting.engine.draft.counts()
        d = {key: after[key] - before[key] for key in after}
        kept = d["kept"] / d["drafted"] if d["drafted"] else 0.0
        per_verify = len(got) / (d["rounds"] + d["plain_steps"]) if d["rounds"] + d["plain_steps"] else 1.0
        print(f"{name:>14} {len(got):6d} {base:11.1f} {fast:11.1f} {fast / base:6.2f}x {kept:5.0%} "
              f"{per_verify:13.2f} {str(same):>9}")
    costs = verify_costs(drafting.engine)
    print("verify(k) / decode: " + ", ".join(f"k={k}: {c:.2f}" for k, c in costs.items()))


if __name__ == "__main__":
    main()
