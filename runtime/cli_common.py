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
from pathlib import Path
from typing import Any, Callable

from .generate import generation_summary, speed
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
                   help="random seed: the same seed and flags give the same text; -1 = random, "
                        "as in llama.cpp (default: random)")
    g.add_argument("-n", "--max-tokens", type=int, default=max_tokens, metavar="N",
                   help=f"most tokens to generate; -1 = until the context is full (default {max_tokens})")


def add_constraint_args(p: argparse.ArgumentParser) -> None:
    """--json-schema FILE and --grammar FILE: output that follows a schema or a GBNF grammar."""
    g = p.add_argument_group("constrained output").add_mutually_exclusive_group()
    g.add_argument("--json-schema", metavar="FILE",
                   help="the output is JSON valid against the JSON schema in FILE")
    g.add_argument("--grammar", metavar="FILE", help="the output follows the GBNF grammar in FILE (llama.cpp's format)")


def constraint_option(args: argparse.Namespace):
    """--json-schema / --grammar as a constraints.Grammar (or None), read and checked now,
    before a model is loaded."""
    from .constraints import Grammar

    path = args.json_schema or args.grammar
    if path is None:
        return None
    flag = "--json-schema" if args.json_schema else "--grammar"
    if not Path(path).is_file():
        raise FileNotFoundError(f"{flag}: file not found: {path}")
    text = decode_utf8(Path(path).read_bytes(), path)
    return Grammar.from_json_schema(text) if args.json_schema else Grammar.from_gbnf(text)


def add_runtime_args(p: argparse.ArgumentParser, ctx: int | None, ctx_help: str | None = None) -> None:
    """--ctx, --threads, --backend, --device, --ram-budget, --offload-plan, --no-draft,
    --context-shift, --keep, --spec, --cache-type-k, --cache-type-v."""
    g = p.add_argument_group("runtime")
    g.add_argument("-c", "--ctx", type=int, default=ctx, metavar="N",
                   help=ctx_help or f"context window in tokens (default {ctx})")
    g.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                   help="CPU threads (default: all cores Numba sees)")
    g.add_argument("--backend", default="cpu", metavar="NAME", help="engine backend: cpu or torch (default cpu)")
    g.add_argument("--device", default=None, metavar="NAME",
                   help="device for --backend torch: auto, cuda, cuda:N, mps or cpu (default auto)")
    g.add_argument("--ram-budget", default=None, metavar="SIZE",
                   help="keep at most SIZE of weights in RAM (300MB, 1.5GB, 40%% of the file) and "
                        "stream the rest from disk (default: all in RAM)")
    g.add_argument("--offload-plan", default=None, metavar="PATH",
                   help="with --ram-budget: the offload plan (`lantern offload`) serving the FFN sparsely; "
                        "'none' streams densely (default: MODEL.offload.gguf beside the model, if any)")
    g.add_argument("--no-draft", dest="draft", action="store_false",
                   help="with --ram-budget: decode one token per read of the streamed output head "
                        "(default: draft tokens without it and verify several per read; same output)")
    g.add_argument("--context-shift", action="store_true",
                   help="when generation fills the context, drop half of it (after --keep tokens) and go "
                        "on, re-rotating the cached keys, instead of stopping")
    g.add_argument("--keep", type=int, default=0, metavar="N",
                   help="with --context-shift: prompt tokens kept at the start, besides BOS (default 0)")
    for short, part in (("-ctk", "k"), ("-ctv", "v")):
        g.add_argument(f"--cache-type-{part}", short, dest=f"cache_type_{part}", default="f16",
                       choices=["f32", "f16", "q8_0", "q4_0"], metavar="TYPE",
                       help=f"KV cache type for {'keys' if part == 'k' else 'values'}: f32, f16, q8_0 or q4_0 "
                            f"(default f16; q8_0 about halves the cache, q4_0 keeps 28%% of it)")
    g.add_argument("--spec", type=_spec, default=None, metavar="ngram|draft:PATH",
                   help="speculative decoding, verified exactly (same output): 'ngram' drafts from what "
                        "followed the same tokens earlier in the prompt and reply (prompt lookup: faster "
                        "where the reply repeats its prompt, editing code or text); 'draft:PATH' drafts "
                        "with a smaller model of the same vocabulary (a GGUF path or catalog name)")
    g.add_argument("--draft", "-md", dest="draft_model", default=None, metavar="MODEL",
                   help="the same as --spec draft:MODEL (llama.cpp's --model-draft)")


def _spec(value: str) -> str:
    """--spec's value: 'ngram', or 'draft:' and a draft model."""
    if value == "ngram" or (value.startswith("draft:") and len(value) > len("draft:")):
        return value
    raise argparse.ArgumentTypeError(f"expected 'ngram' or 'draft:PATH', got {value!r}")


def sampling_options(args: argparse.Namespace) -> dict:
    """The `make_sampler` keywords the flags set, validated now (before a model is loaded)."""
    from .sampling import make_sampler

    options = {dest: getattr(args, dest) for dest, _, _ in SAMPLING_FLAGS.values()}
    options["seed"] = _seed(args.seed)
    make_sampler(**options)         # raises ValueError naming a bad value
    return options


def max_tokens_option(args: argparse.Namespace) -> int | None:
    """-n as the library's max_tokens: None means 'until the context is full'."""
    return _max_tokens(args.max_tokens)


def _seed(seed: int | None) -> int | None:
    """--seed as the library's seed: -1 means random (None), as in llama.cpp."""
    if seed is not None and seed < -1:
        raise ValueError(f"--seed must be >= 0, or -1 for a random seed; got {seed}")
    return None if seed == -1 else seed


def utf8_argument(text: str | None, flag: str) -> str | None:
    """`text` from the command line, or ValueError naming `flag` if its bytes were not UTF-8.

    Python keeps such bytes as lone surrogates ("\\udcXX" for byte XX); the tokenizer would
    refuse them only after the model has loaded."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        byte = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"character U+{code:04X}"
        raise ValueError(f"{flag} is not valid UTF-8 text ({byte} at character {exc.start})") from None
    return text


def decode_utf8(data: bytes, source: str) -> str:
    """`data` as text, or ValueError naming `source` (a file name) and the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source}: not valid UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                         f"{exc.start})") from None


def _max_tokens(n: int) -> int | None:
    if n < -1:
        raise ValueError(f"-n/--max-tokens must be >= 0, or -1 for 'until the context is full'; got {n}")
    return None if n == -1 else n


# What `/set NAME VALUE` in the chat may change: each sampling flag (without its dashes),
# the seed and n. name -> (library keyword, how to read the value).
SETTINGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    **{flag[2:]: (dest, kind) for flag, (dest, kind, _) in SAMPLING_FLAGS.items()},
    "seed": ("seed", lambda text: None if text.strip().lower() == "none" else _seed(int(text))),
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

    make_sampler(**{k: v for k, v in updated.items() if k not in ("max_tokens", "grammar")})
    return updated


def describe_settings(options: dict) -> str:
    """`name=value` for every setting, in /set's names."""
    return " ".join(f"{name}={'-1' if key == 'max_tokens' and options.get(key) is None else options.get(key)}"
                    for name, (key, _) in SETTINGS.items())


def draft_option(args: argparse.Namespace) -> bool | str:
    """--spec / --no-draft as Engine's draft: "ngram", "draft:PATH", or True/False for the
    budget's draft."""
    spec = getattr(args, "spec", None)
    if getattr(args, "draft_model", None) is not None:
        if spec is not None:
            raise ValueError("--draft and --spec both choose the drafts: give one")
        spec = "draft:" + args.draft_model
    if spec is not None:
        if not args.draft:
            raise ValueError("--spec and --no-draft contradict each other")
        return spec
    return args.draft


def offload_plan_option(args: argparse.Namespace):
    """--offload-plan as Engine's offload_plan: a path, False for 'none', None to look beside."""
    plan = getattr(args, "offload_plan", None)
    if plan is not None and args.ram_budget is None:
        raise ValueError("--offload-plan applies with --ram-budget (a plan serves the weights that stream)")
    return False if plan == "none" else plan


def load_model(model: str, n_ctx: int, args: argparse.Namespace):
    """Load a model (path or catalog name, pulled on first use) with the runtime flags and warm
    its kernels up (saying so on stderr when that compiles them, unless args.quiet)."""
    from .model import Model

    if n_ctx is None or n_ctx < 1:
        raise ValueError(f"--ctx must be a positive number of tokens, got {n_ctx}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    from .compile_notice import notice_if_compiling

    # the first run on a machine compiles the kernels: say so unless asked to be quiet
    with nullcontext() if getattr(args, "quiet", False) else notice_if_compiling():
        loaded = Model.load(model, n_ctx=n_ctx, threads=args.threads, backend=args.backend, device=args.device,
                            ram_budget=args.ram_budget, offload_plan=offload_plan_option(args),
                            draft=draft_option(args), context_shift=getattr(args, "context_shift", False),
                            n_keep=getattr(args, "keep", 0), type_k=args.cache_type_k,
                            type_v=args.cache_type_v)
        loaded.engine.warm_up()
    return loaded


def dim(text: str, stream=None) -> str:
    """`text` in the terminal's faint style when `stream` (stderr by default) is a terminal."""
    stream = stream or sys.stderr
    return f"\x1b[2m{text}\x1b[0m" if stream.isatty() else text


__all__ = ["SAMPLING_FLAGS", "SETTINGS", "add_sampling_args", "add_runtime_args", "sampling_options",
           "max_tokens_option", "utf8_argument", "decode_utf8", "apply_setting", "describe_settings", "load_model", "generation_summary", "speed", "dim"]
