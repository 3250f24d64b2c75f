"""Serving throughput and latency: `lantern serve` against llama.cpp's llama-server.

    python benchmarks/bench_serve.py [MODEL ...] [--streams 1,4,8,16,32] [-n 64] [-t 2]
                                     [--llama-server PATH] [--chat-turns 4]

For each model and each number of concurrent streams C, C streaming /v1/completions requests
start together (short distinct prompts, greedy, end-of-generation tokens banned with
logit_bias so every stream produces exactly n tokens). Measured on the client:

  aggregate decode   tokens after each stream's first / (last token of any - first token of any)
  TTFT               request sent -> first text chunk, p50 and p99 over the streams
  ITL                between consecutive chunks of a stream, p50 and p99 over all gaps

lantern serve runs with --parallel 32 (a limit; a step batches whatever streams are active);
llama-server (if --llama-server names the binary) runs with -np C and C x 1024 tokens of
context, continuous batching on, the same threads, restarted for each C. Each server runs in a
child process; the load generator (httpx, one asyncio loop) runs here, on the same cores.

The prefix-cache workload: 8 chats of --chat-turns turns sharing a system prompt, each turn
resending the whole conversation; reported as the share of prompt tokens the prefix cache
supplied (lantern's /metrics).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np

from lanternlm.formats.catalog import resolve
from lanternlm.formats.gguf import read_gguf
from lanternlm.formats.tokenizer import load_tokenizer

WORDS = ("river mountain lantern garden engine window orange silver market thunder violin harbor "
         "meadow castle pepper rocket").split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], url: str, timeout: float = 300) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"{cmd[0]} did not become healthy in {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


async def one_stream(http: httpx.AsyncClient, prompt: str, n: int, bias: dict) -> tuple[float, list[float]]:
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True, "logit_bias": bias}
    sent = time.perf_counter()
    times = []
    async with http.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data:") and "[DONE]" not in line and '"text": ""' not in line \
                    and '"text":""' not in line:
                times.append(time.perf_counter())
    return sent, times


async def load(url: str, streams: int, n: int, bias: dict) -> dict:
    prompts = [f"Write a short note about the {WORDS[i % len(WORDS)]} and the {WORDS[(3 * i + 1) % len(WORDS)]}:"
               for i in range(streams)]
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=64)) as http:
        results = await asyncio.gather(*(one_stream(http, p, n, bias) for p in prompts))
    firsts = [t[0] for _, t in results if t]
    lasts = [t[-1] for _, t in results if t]
    decoded = sum(len(t) - 1 for _, t in results)
    ttft = [t[0] - sent for sent, t in results if t]
    gaps = np.concatenate([np.diff(t) for _, t in results if len(t) > 1])
    return {"streams": streams, "aggregate": decoded / (max(lasts) - min(firsts)),
            "ttft_p50": float(np.percentile(ttft, 50)), "ttft_p99": float(np.percentile(ttft, 99)),
            "itl_p50": float(np.percentile(gaps, 50)), "itl_p99": float(np.percentile(gaps, 99)),
            "chunks": sum(len(t) for _, t in results)}


async def chat_workload(url: str, turns: int) -> None:
    system = ("You are a concise assistant for a hardware store. Answer in one sentence, mention a product, "
              "and never use lists. ") * 4
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        async def chat(k):
            messages = [{"role": "system", "content": system}]
            for t in range(turns):
                messages.append({"role": "user", "content": f"Customer {k}, question {t}: what do I need for "
                                                            f"a {WORDS[(k + t) % len(WORDS)]} project?"})
                r = await http.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 24,
                                                                 "temperature": 0})
                r.raise_for_status()
                messages.append(r.json()["choices"][0]["message"])
        await asyncio.gather(*(chat(k) for k in range(8)))


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def bench_lantern(path: str, args, bias: dict) -> tuple[list[dict], float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "lanternlm.cli", "serve", path, "--port", str(port), "--parallel", "32",
           "--threads", str(args.threads), "--kv-memory", "512MB", "--ctx", "1024"]
    proc = start(cmd, url)
    try:
        asyncio.run(load(url, 2, 8, bias))     # warm-up
        rows = [asyncio.run(load(url, c, args.n, bias)) for c in args.streams]
        before = httpx.get(url + "/metrics").text
        asyncio.run(chat_workload(url, args.chat_turns))
        after = httpx.get(url + "/metrics").text
        reused = metric(after, "lantern_prefix_cache_tokens_total") - metric(before, "lantern_prefix_cache_tokens_total")
        prompt = metric(after, "lantern_prompt_tokens_total") - metric(before, "lantern_prompt_tokens_total")
        return rows, reused / prompt if prompt else 0.0
    finally:
        stop(proc)


def bench_llama_server(binary: str, path: str, args, bias: dict) -> list[dict]:
    rows = []
    for c in args.streams:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start([binary, "-m", path, "--port", str(port), "-np", str(c), "-c", str(1024 * c), "-t",
                      str(args.threads), "-tb", str(args.threads), "--cont-batching", "--log-disable"], url)
        try:
            asyncio.run(load(url, min(c, 2), 8, bias))
            rows.append(asyncio.run(load(url, c, args.n, bias)))
        finally:
            stop(proc)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="*", default=["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
    p.add_argument("--streams", default="1,4,8,16,32", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("-n", type=int, default=64, help="tokens per stream (default 64)")
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("--llama-server", default=None, metavar="PATH", help="llama-server binary for the reference")
    p.add_argument("--chat-turns", type=int, default=4)
    args = p.parse_args()
    for name in args.models:
        path = str(resolve(name))
        tokenizer = load_tokenizer(read_gguf(path).kv)
        bias = {str(t): -100 for t in tokenizer.eot_ids}
        rows, hit_rate = bench_lantern(path, args, bias)
        ref = bench_llama_server(args.llama_server, path, args, bias) if args.llama_server else [None] * len(rows)
        single = rows[0]["aggregate"] if rows[0]["streams"] == 1 else None
        print(f"\n{name}: {args.n} tokens per stream, {args.threads} threads")
        print("| streams | lantern tok/s | x single | llama-server tok/s | ratio | TTFT p50 / p99 (s) | "
              "ITL p50 / p99 (ms) |")
        print("|---:|---:|---:|---:|---:|---|---|")
        for row, r in zip(rows, ref):
            times = single and row["aggregate"] / single
            print(f"| {row['streams']} | {row['aggregate']:.1f} | {times:.2f} | "
                  f"{r['aggregate'] if r else float('nan'):.1f} | "
                  f"{row['aggregate'] / r['aggregate'] if r else float('nan'):.2f} | "
                  f"{row['ttft_p50']:.2f} / {row['ttft_p99']:.2f} | "
                  f"{1e3 * row['itl_p50']:.0f} / {1e3 * row['itl_p99']:.0f} |")
            if r:
                print(f"|   llama-server | TTFT {r['ttft_p50']:.2f} / {r['ttft_p99']:.2f} s, "
                      f"ITL {1e3 * r['itl_p50']:.0f} / {1e3 * r['itl_p99']:.0f} ms |")
        print(f"prefix cache: {hit_rate:.0%} of prompt tokens reused over 8 chats x {args.chat_turns} turns")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
