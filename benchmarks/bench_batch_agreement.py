"""Greedy agreement of the serving engine: each request alone, then beside 31 others.

    python benchmarks/bench_batch_agreement.py [MODEL ...] [--requests 32] [-n 32] [-t 2]

Every request runs greedily for n tokens (end-of-generation tokens banned) first alone in the
engine, then all together (prompts of mixed lengths, so steps mix prompt chunks and decode
tokens). Prints how many outputs are identical and, for the others, the first token where
they part. With batch-invariant kernels (the legacy and float types: SmolLM2) every output is
identical; the K-quant tiles sum a one-token product in another order than a batched one
(quant/registry.py), so a near-tie can go the other way.
"""
from __future__ import annotations

import argparse
import threading

from lanternlm.formats.catalog import resolve
from lanternlm.formats.gguf import read_gguf
from lanternlm.runtime.sampling import make_sampler
from lanternlm.runtime.serving_engine import Choice, ServingEngine, Token

WORDS = "the quick brown fox jumps over the lazy dog while a small bird sings on the old stone wall".split()


def run(engine: ServingEngine, prompts: list[list[int]], n: int) -> list[list[int]]:
    out = [[] for _ in prompts]
    left = [len(prompts)]
    done = threading.Event()
    bias = {t: -100.0 for t in engine.end_ids}

    def emitter(i):
        def emit(event):
            if isinstance(event, Token):
                out[i].append(event.token)
            else:
                left[0] -= 1
                if not left[0]:
                    done.set()
        return emit
    for i, p in enumerate(prompts):
        engine.submit(p, [Choice(make_sampler(temperature=0, logit_bias=bias), emitter(i))], max_tokens=n)
    done.wait()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="*", default=["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("-n", type=int, default=32)
    p.add_argument("-t", "--threads", type=int, default=2)
    args = p.parse_args()
    for name in args.models:
        gguf_file = read_gguf(resolve(name))
        engine = ServingEngine(gguf_file, n_ctx=512, kv_memory=256 << 20, parallel=args.requests,
                               token_budget=128, threads=args.threads).start()
        try:
            texts = [" ".join(WORDS[i % 7:i % 7 + 3 + (5 * i) % 17] * (1 + i % 3)) for i in range(args.requests)]
            prompts = [list(engine.tokenizer.encode(t)) for t in texts]
            alone = [run(engine, [p], args.n)[0] for p in prompts]
            together = run(engine, prompts, args.n)
        finally:
            engine.close()
        same = sum(a == b for a, b in zip(alone, together))
        parts = [next(j for j in range(args.n) if a[j] != b[j]) for a, b in zip(alone, together) if a != b]
        print(f"{name}: {same}/{args.requests} outputs identical alone and in a batch of {args.requests}"
              + (f"; the others part at tokens {sorted(parts)}" if parts else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
