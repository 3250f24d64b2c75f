"""What a quantized KV cache saves and what it costs: memory, perplexity, KL divergence, speed.

    python benchmarks/bench_kv_cache.py [MODEL ...] [--chunks 3] [--ctx 512] [-t 2]

For each model (default: the three catalog models) the f16 cache (llama.cpp's default) is the
base: `lantern perplexity` scores ../shared/reference/mlsys_essay.txt in chunks of --ctx tokens and
saves its log-probabilities, then the same chunks are scored with q8_0, q8_0 keys with q4_0
values, and q4_0 caches against them (`--kl-divergence`). Printed per cache type: the cache's bytes per
token, its size at the model's full trained context, perplexity and its ratio to the base, mean
KL divergence, how often the top token is the base's, and decode speed at --ctx tokens of
context (greedy, after a prompt of --ctx - 64 tokens; measured in the same process).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lanternlm.formats.catalog import resolve
from lanternlm.runtime.engine import Engine
from lanternlm.runtime.kv_cache import CACHE_TYPES, KVCache

TEXT = Path(__file__).resolve().parents[2] / "shared" / "reference" / "mlsys_essay.txt"
MODELS = ["smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct"]
TYPES = [("f16", "f16"), ("q8_0", "q8_0"), ("q8_0", "q4_0"), ("q4_0", "q4_0")]   # (keys, values)


def perplexity(model: str, kinds: tuple[str, str], args, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "lanternlm.cli", "perplexity", model, str(TEXT), "--json", "--ctx", str(args.ctx),
           "--chunks", str(args.chunks), "-t", str(args.threads), "-ctk", kinds[0], "-ctv", kinds[1], *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def decode_tok_s(path, kinds: tuple[str, str], args) -> float:
    eng = Engine.load(path, n_ctx=args.ctx, threads=args.threads, cache_type_k=kinds[0], cache_type_v=kinds[1])
    logits = eng.eval(list(range(10, 10 + args.ctx - 64)))
    start = time.perf_counter()
    for _ in range(48):
        logits = eng.eval([int(logits.argmax())])
    return 48 / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=MODELS)
    p.add_argument("--chunks", type=int, default=3)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("-t", "--threads", type=int, default=2)
    args = p.parse_args()
    print("| model | cache (K / V) | bytes/token | at full context | perplexity | ratio | KL divergence | same top | decode tok/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for model in args.models:
        path = resolve(model)
        cfg = Engine.load(path, n_ctx=16, threads=1).cfg
        with tempfile.TemporaryDirectory() as tmp:
            base_file = str(Path(tmp) / "base.npy")
            for kinds in TYPES:
                per_token = KVCache.nbytes_for(cfg, 1, CACHE_TYPES[kinds[0]], CACHE_TYPES[kinds[1]])
                if kinds == TYPES[0]:
                    r = perplexity(model, kinds, args, "--save-logits", base_file)
                    r.update(kl_mean=0.0, same_top_percent=100.0, ppl_ratio=1.0)
                else:
                    r = perplexity(model, kinds, args, "--kl-divergence", base_file)
                full = per_token * cfg.n_ctx_train / 2**20
                print(f"| {model} | {' / '.join(kinds)} | {per_token} | {full:,.0f} MiB ({cfg.n_ctx_train} tokens) | "
                      f"{r['ppl']:.4f} | {r['ppl_ratio']:.4f} | {r['kl_mean']:.5f} | {r['same_top_percent']:.1f}% | "
                      f"{decode_tok_s(path, kinds, args):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
