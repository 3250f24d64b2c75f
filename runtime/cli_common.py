"""Command-line flags shared by `lantern chat`, `lantern run` and `lantern perplexity`.

One place defines the sampling flags (named as in llama.cpp, defaults taken from the
library's `SamplingParams`, so the CLI and `Model.generate` mean the same thing by default)
and the runtime flags (--ctx, --threads, --backend, --device). Heavy modules (Numba, the engine) are
imported only when a model is actually loaded, so building the parser stays cheap.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from contextlib import nullcontext
from typing import Any, Callable

from .sampling import SamplingParams

_SAMPLING_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SamplingParams)}

# flag -> (SamplingParams keyword, type, help). The keyword also names the argparse dest.
SAMPLING_FLAGS: dict[str, tuple[str, type, str]] = {
    "--temp": ("temperature", float, "sampling temperature; 0 = greedy"),
    "--top-k": ("top_k", int, "keep the k most likely tokens; 0 = all"),
    "--top-p": ("top_p", float, "nucleus: keep tokens up to this probability mass; 1 = off"),
    "--min-p": ("min_p", float, "drop tokens below min-p x the top probability; 0 = off"),
    "--repeat-penalty": ("repeat_penalty", float, "penalty on recently seen tokens; 1 = off"),
    "--repeat-last-n": ("repeat_last_n", int, "how many recent tokens the penalty looks at; -1 = all"),
    "--presence-penalty": ("presence_penalty", float, "subtracted once from every seen token; 0 = off"),
    "--frequency-penalty": ("frequency_penalty", float, "subtracted per occurrence of a seen token; 0 = off"),
}


def add_sampling_args(p: argparse.ArgumentParser, max_tokens: int) -> None:
    """Sampling flags, --seed and -n/--max-tokens (default `max_tokens`; -1 = until the
    context is full)."""
    g = p.add_argument_group("sampling")
    for flag, (dest, kind, help_text) in SAMPLING_FLAGS.items():
        default = _SAMPLING_DEFAULTS[dest]
        g.add_argument(flag, dest=dest, type=kind, default=default, metavar="N" if kind is int else "X",
                       help=f"{help_text} (default {default})")
    g.add_argument("--seed", type=int, default=None,
                   help="random seed: the same seed and flags give the same text (default: random)")
    g.add_argument("-n", "--max-tokens", type=int, default=max_tokens, metavar="N",
                   help=f"most tokens to generate; -1 = until the context is full (default {max_tokens})")


def add_runtime_args(p: argparse.ArgumentParser, ctx: int | None, ctx_help: str | None = None) -> None:
    """--ctx, --threads, --backend, --device."""
    g = p.add_argument_group("runtime")
    g.add_argument("-c", "--ctx", type=int, default=ctx, metavar="N",
                   help=ctx_help or f"context window in tokens (default {ctx})")
    g.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                   help="CPU threads (default: all cores Numba sees)")
    g.add_argument("--backend", default="cpu", metavar="NAME", help="engine backend: cpu or torch (default cpu)")
    g.add_argument("--device", default=None, metavar="NAME",
                   help="device for --backend torch: auto, cuda, cuda:N, mps or cpu (default auto)")


def sampling_options(args: argparse.Namespace) -> dict:
    """The `make_sampler` keywords the flags set, validated now (before a model is loaded)."""
    from .sampling import make_sampler

    options = {dest: getattr(args, dest) for dest, _, _ in SAMPLING_FLAGS.values()}
    options["seed"] = args.seed
    make_sampler(**options)         # raises ValueError naming a bad value
    return options


def max_tokens_option(args: argparse.Namespace) -> int | None:
    """-n as the library's max_tokens: None means 'until the context is full'."""
    return _max_tokens(args.max_tokens)


def _max_tokens(n: int) -> int | None:
    if n < -1:
        raise ValueError(f"-n/--max-tokens must be >= 0, or -1 for 'until the context is full'; got {n}")
    return None if n == -1 else n


# What `/set NAME VALUE` in the chat may change: each sampling flag (without its dashes),
# the seed and n. name -> (library keyword, how to read the value).
SETTINGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    **{flag[2:]: (dest, kind) for flag, (dest, kind, _) in SAMPLING_FLAGS.items()},
    "seed": ("seed", lambda text: None if text.lower() == "none" else int(text)),
    "n": ("max_tokens", lambda text: _max_tokens(int(text))),
}


def apply_setting(options: dict, name: str, text: str) -> dict:
    """`options` (sampling keywords + max_tokens) with setting `name` set from `text`,
    validated; ValueError names what is wrong."""
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}; settable: {', '.join(SETTINGS)}")
    key, read = SETTINGS[name]
    try:
        value = read(text)
    except ValueError as exc:
        raise ValueError(f"bad value {text!r} for {name}: {exc}") from None
    updated = {**options, key: value}
    from .sampling import make_sampler

    make_sampler(**{k: v for k, v in updated.items() if k != "max_tokens"})
    return updated


def describe_settings(options: dict) -> str:
    """`name=value` for every setting, in /set's names."""
    return " ".join(f"{name}={'-1' if key == 'max_tokens' and options.get(key) is None else options.get(key)}"
                    for name, (key, _) in SETTINGS.items())


def load_model(model: str, n_ctx: int, args: argparse.Namespace):
    """Load a model (path or catalog name, pulled on first use) with the runtime flags and warm
    its kernels up (saying so on stderr if that takes a while, unless args.quiet)."""
    from .model import Model

    if n_ctx is None or n_ctx < 1:
        raise ValueError(f"--ctx must be a positive number of tokens, got {n_ctx}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    from .compile_notice import notice_if_slow

    loaded = Model.load(model, n_ctx=n_ctx, threads=args.threads, backend=args.backend, device=args.device)
    # the first run on a machine compiles the kernels: say so unless asked to be quiet
    with nullcontext() if getattr(args, "quiet", False) else notice_if_slow():
        loaded.engine.warm_up()
    return loaded


def speed(tokens: int, seconds: float) -> str:
    return f"{tokens / seconds:.1f} tok/s" if seconds > 0 and tokens > 0 else "- tok/s"


def generation_summary(stats) -> str:
    """One line of a generation's counters: generated tokens and decode speed, then prefill.

    Decode speed counts the steps after the first token (the first one's time is the
    prefill's), so it is what a longer answer would sustain.
    """
    decode_steps = max(stats.completion_tokens - 1, 0)
    return (f"{stats.completion_tokens} tokens, {speed(decode_steps, stats.decode_seconds)} | "
            f"prefill {stats.prefill_tokens} tokens, {speed(stats.prefill_tokens, stats.prompt_seconds)}")


def dim(text: str, stream=None) -> str:
    """`text` in the terminal's faint style when `stream` (stderr by default) is a terminal."""
    stream = stream or sys.stderr
    return f"\x1b[2m{text}\x1b[0m" if stream.isatty() else text


__all__ = ["SAMPLING_FLAGS", "SETTINGS", "add_sampling_args", "add_runtime_args", "sampling_options",
           "max_tokens_option", "apply_setting", "describe_settings", "load_model", "generation_summary", "speed", "dim"]
