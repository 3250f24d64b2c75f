"""What constrained output costs per token, against decode time measured in the same run.

    python benchmarks/bench_constrained.py [MODEL] [-n 128] [-t 2] [-r 3]

Generates greedily from a chat prompt twice per repetition: unconstrained, then under a JSON
schema (runtime/constraints.py, llguidance). Prints the unconstrained decode time per token and
the constraint's own time per token (llguidance's mask, masking the logits, advancing the
grammar; the sampler itself excluded), and their ratio. The issue's bound: at most 5% of
SmolLM2's decode time.
"""
from __future__ import annotations

import argparse
import time

from lanternlm.runtime.constraints import ConstrainedSampler, Grammar
from lanternlm.runtime.generate import stream_generate
from lanternlm.runtime.model import Model
from lanternlm.runtime.sampling import make_sampler

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["people"],
          "properties": {"people": {"type": "array", "maxItems": 40, "items": {
              "type": "object", "additionalProperties": False, "required": ["name", "age", "city"],
              "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"},
                             "city": {"type": "string", "maxLength": 20}}}}}}
ASK = [{"role": "user", "content": "List as many people as you can, with their age and city, as JSON."}]


class TimedConstraint(ConstrainedSampler):
    """Counts the seconds spent in the constraint's own work."""

    seconds = 0.0
    steps = 0

    def __call__(self, logits, history) -> int:
        t0 = time.perf_counter()
        masked = self.masked(logits)
        t1 = time.perf_counter()
        token = self.sampler(masked, history)
        t2 = time.perf_counter()
        self.advance(token)
        self.seconds += (t1 - t0) + (time.perf_counter() - t2)
        self.steps += 1
        return token


def decode_seconds_per_token(model, prompt, sampler, n) -> tuple[float, int]:
    stats = None
    for chunk in stream_generate(model.context, model.tokenizer, prompt, sampler, max_tokens=n):
        stats = chunk.stats
    steps = max(stats.completion_tokens - 1, 1)
    return stats.decode_seconds / steps, stats.completion_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="smollm2-135m-instruct")
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    args = ap.parse_args()
    model = Model.load(args.model, n_ctx=1024, threads=args.threads)
    prompt = model.chat_prompt_ids(ASK)
    grammar = Grammar.from_json_schema(SCHEMA)
    greedy = make_sampler(temperature=0)
    decode_seconds_per_token(model, prompt, greedy, 8)                  # warm-up
    rows = []
    for _ in range(args.repetitions):
        plain, _ = decode_seconds_per_token(model, prompt, greedy, args.n_gen)
        constrained = TimedConstraint(greedy, grammar, model.tokenizer)
        with_schema, tokens = decode_seconds_per_token(model, prompt, constrained, args.n_gen)
        rows.append((plain, constrained.seconds / constrained.steps, with_schema, tokens))
    print(f"{args.model}, {args.threads} threads, greedy, {args.n_gen} tokens per run:")
    print(f"{'decode ms/token':>16} {'constraint ms/token':>20} {'share':>6} {'constrained decode ms/token':>28}")
    for plain, cost, with_schema, tokens in rows:
        print(f"{plain * 1e3:16.2f} {cost * 1e3:20.3f} {cost / plain:6.1%} {with_schema * 1e3:28.2f}")


if __name__ == "__main__":
    main()
