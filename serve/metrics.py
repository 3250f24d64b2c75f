"""GET /metrics: Prometheus text, kept with prometheus_client in a registry of the app's own.

Counted: requests by endpoint and status, prompt and generated tokens, prompt tokens the
prefix cache supplied, finished sequences by reason, preemptions; sampled at each scrape: the
queue length, running sequences, KV blocks in use and in the pool, cached prefix blocks and
the prefix cache's hit rate; histograms of the time to first token, the time between tokens,
and the engine's step time.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from ..runtime.serving_engine import EngineObserver

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class ServerMetrics(EngineObserver):
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("lantern_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.prompt_tokens = Counter("lantern_prompt_tokens", "Prompt tokens of admitted sequences", registry=r)
        self.reused_tokens = Counter("lantern_prefix_cache_tokens", "Prompt tokens the prefix cache supplied",
                                     registry=r)
        self.generated_tokens = Counter("lantern_generation_tokens", "Tokens sampled", registry=r)
        self.finished_total = Counter("lantern_sequences_finished", "Sequences ended, by reason", ["reason"], registry=r)
        self.ttft = Histogram("lantern_time_to_first_token_seconds", "From submission to the first sampled token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("lantern_inter_token_latency_seconds", "Between consecutive tokens of a sequence",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.step_seconds = Histogram("lantern_step_seconds", "One engine step (a batch of tokens)",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.step_tokens = Counter("lantern_step_tokens", "Tokens computed by engine steps", registry=r)

    def watch(self, engine) -> None:
        """Gauges read from the engine at each scrape."""
        r = self.registry
        pool, scheduler = engine.pool, engine.scheduler
        for name, doc, read in (
                ("lantern_queue_length", "Requests waiting to start", lambda: engine.queue_length),
                ("lantern_running_sequences", "Sequences being generated", lambda: engine.running),
                ("lantern_kv_blocks_in_use", "KV pool blocks referenced by sequences", lambda: pool.in_use),
                ("lantern_kv_blocks_total", "KV pool blocks", lambda: pool.n_blocks),
                ("lantern_kv_blocks_cached", "Unreferenced blocks kept for the prefix cache", lambda: pool.cached),
                ("lantern_prefix_cache_hit_blocks", "Prompt blocks found in the prefix cache",
                 lambda: pool.hit_blocks),
                ("lantern_prefix_cache_queried_blocks", "Prompt blocks looked up in the prefix cache",
                 lambda: pool.queried_blocks),
                ("lantern_prefix_cache_hit_rate", "Share of looked-up prompt blocks found",
                 lambda: pool.hit_blocks / pool.queried_blocks if pool.queried_blocks else 0.0),
                ("lantern_preemptions", "Sequences preempted for lack of KV blocks", lambda: scheduler.preemptions)):
            Gauge(name, doc, registry=r).set_function(read)

    def text(self) -> bytes:
        return generate_latest(self.registry)

    # ---- EngineObserver (called on the engine thread) ----------------------------------------
    def admitted(self, prompt_tokens: int, reused_tokens: int) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.reused_tokens.inc(reused_tokens)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)
        self.generated_tokens.inc()

    def next_token(self, seconds: float) -> None:
        self.itl.observe(seconds)
        self.generated_tokens.inc()

    def step(self, tokens: int, sequences: int, seconds: float) -> None:
        self.step_seconds.observe(seconds)
        self.step_tokens.inc(tokens)

    def finished(self, reason: str) -> None:
        self.finished_total.labels(reason).inc()
