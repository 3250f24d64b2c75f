"""`lantern` command line: a thin dispatcher.

Each subcommand lives with the code it drives, in a module exposing
`configure_parser(parser)` and `main(args) -> int`. This file only maps names to modules,
imports the chosen one lazily (so `lantern info` never pays for Numba), and turns expected
errors into one-line messages with a non-zero exit code.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "chat": ("lanternlm.runtime.chat_cli", "chat with a model in the terminal (default: smollm2-135m-instruct)"),
    "run": ("lanternlm.runtime.run_cli", "generate a continuation of a prompt, streamed to stdout"),
    "bench": ("lanternlm.runtime.bench_cli", "prefill and decode speed, load time and memory (llama-bench style)"),
    "serve": ("lanternlm.serve.cli", "an OpenAI-compatible HTTP server with continuous batching"),
    "perplexity": ("lanternlm.runtime.perplexity", "perplexity (and KL divergence to a base model) on a text"),
    "offload": ("lanternlm.runtime.offload_plan", "build an offload plan: which FFN neurons a token needs, "
                                                  "for models larger than RAM"),
    "info": ("lanternlm.formats.info", "describe a GGUF model"),
    "pull": ("lanternlm.formats.catalog_cli", "download a catalog model"),
    "list": ("lanternlm.formats.catalog_cli", "list catalog models and what is downloaded"),
    "convert": ("lanternlm.formats.convert.cli", "convert a Hugging Face checkpoint to GGUF"),
    "quantize": ("lanternlm.quant.quantize_cli", "quantize a GGUF model (llama-quantize compatible)"),
}


def _load(name: str):
    return importlib.import_module(COMMANDS[name][0])


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (so `lantern info` never loads Numba)."""
    parser = argparse.ArgumentParser(prog="lantern", description="Run GGUF language models locally.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name != command:
            continue
        mod = _load(name)
        configure = getattr(mod, f"configure_{name}_parser", None) or mod.configure_parser
        configure(p)
        p.set_defaults(_main=getattr(mod, f"{name}_main", None) or mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args._main(args) or 0)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except (OSError, ValueError, RuntimeError) as exc:
        # GGUFError, PullError and friends derive from these: bad input, not a bug.
        print(f"lantern: error: {exc}", file=sys.stderr)
        return 1


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # a warning is for the user, one line like an error, not a source location
    print(f"lantern: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
