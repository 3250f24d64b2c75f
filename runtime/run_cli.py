"""`lantern run [MODEL] [PROMPT]`: one-shot generation, streamed to stdout.

As with ollama, `lantern run MODEL "prompt"` takes the prompt after the model; -p PROMPT and
-f FILE give it too. MODEL defaults to the catalog's default model, as for `lantern chat`.

The continuation of the prompt (not the prompt itself) is written as it is generated; a
summary line (tokens, speed) follows on stderr unless --quiet. With --chat the prompt is
sent as a user message through the model's chat template. The same --seed and flags give the
same text, as `Model.generate` does.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..formats.catalog import DEFAULT_MODEL
from .cli_common import (add_constraint_args, add_runtime_args, add_sampling_args, constraint_option, decode_utf8,
                         dim, generation_summary, load_model, max_tokens_option, sampling_options,
                         utf8_argument)

DEFAULT_RUN_CTX = 2048
DEFAULT_RUN_MAX_TOKENS = 128


def configure_parser(p) -> None:
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"GGUF path or catalog name (default {DEFAULT_MODEL}, downloaded on first use)")
    source = p.add_mutually_exclusive_group(required=True)
    # (its own dest: a positional that matched nothing would overwrite -p's value with None)
    source.add_argument("positional_prompt", nargs="?", metavar="PROMPT", help="the prompt text, as -p gives it")
    source.add_argument("-p", "--prompt", help="the prompt text")
    source.add_argument("-f", "--file", metavar="FILE", help="read the prompt from FILE ('-' = stdin)")
    p.add_argument("--chat", action="store_true", help="send the prompt as a user message through the chat template")
    p.add_argument("--system", metavar="TEXT", help="system prompt (with --chat)")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line on stderr")
    add_sampling_args(p, max_tokens=DEFAULT_RUN_MAX_TOKENS)
    add_constraint_args(p)
    add_runtime_args(p, ctx=DEFAULT_RUN_CTX)


def read_prompt(args) -> str:
    """The prompt text, checked to be UTF-8 (before any model is loaded)."""
    if args.prompt is not None:
        return utf8_argument(args.prompt, "-p/--prompt")
    if args.file == "-":
        return decode_utf8(sys.stdin.buffer.read(), "standard input")
    path = Path(args.file)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    return decode_utf8(path.read_bytes(), str(path))


def main(args) -> int:
    if args.positional_prompt is not None:
        args.prompt = args.positional_prompt
    if args.system is not None and not args.chat:
        raise ValueError("--system only applies with --chat")
    utf8_argument(args.system, "--system")
    sampling = sampling_options(args)
    grammar = constraint_option(args)
    max_tokens = max_tokens_option(args)
    prompt = read_prompt(args)
    if not prompt:
        raise ValueError("the prompt is empty")
    model = load_model(args.model, args.ctx, args)
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) \
            + [{"role": "user", "content": prompt}]
        prompt_ids = model.chat_prompt_ids(messages)
    else:
        prompt_ids = model.prompt_ids(prompt)

    out = sys.stdout
    stats = None
    for chunk in model.stream_generate(prompt_ids, max_tokens=max_tokens, grammar=grammar, **sampling):
        if chunk.text:
            out.write(chunk.text)
            out.flush()
        stats = chunk.stats
    out.write("\n")
    out.flush()
    if not args.quiet and stats is not None:
        print(dim(f"[{generation_summary(stats)}]"), file=sys.stderr)
    return 0
