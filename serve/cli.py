"""`lantern serve [MODEL]`: the OpenAI-compatible server (app.py) under uvicorn, or Ray Serve.

    lantern serve                                   # smollm2-135m-instruct on 127.0.0.1:8080
    lantern serve qwen2.5-coder-0.5b-instruct --parallel 16 --kv-memory 512MB --api-key KEY
    lantern serve --ray --replicas 2                # Ray Serve, one engine per replica

The sampling flags are `lantern run`'s and set the defaults for what requests leave out.
"""
from __future__ import annotations

import argparse
import sys

from ..formats.catalog import DEFAULT_MODEL
from ..runtime.cli_common import SAMPLING_FLAGS, add_sampling_args, max_tokens_option, sampling_options

DEFAULT_CTX = 4096


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"a GGUF file or catalog name (default {DEFAULT_MODEL})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("-np", "--parallel", type=int, default=8, metavar="N",
                   help="sequences generated at once, batched into each step (default 8)")
    p.add_argument("--kv-memory", default="256MB", metavar="SIZE",
                   help="memory for the shared KV cache of all sequences, e.g. 256MB, 1GiB (default 256MB)")
    p.add_argument("-c", "--ctx", type=int, default=None, metavar="N",
                   help=f"most tokens one sequence holds, prompt and output (default: the model's training "
                        f"context, at most {DEFAULT_CTX})")
    p.add_argument("-t", "--threads", type=int, default=None, metavar="N", help="CPU threads (default: all)")
    p.add_argument("--batch-tokens", type=int, default=128, metavar="N",
                   help="tokens one step computes at most: every running stream's next token, then prompt "
                        "chunks (default 128)")
    p.add_argument("--queue-size", type=int, default=64, metavar="N",
                   help="requests waiting to start before the server answers 503 (default 64)")
    p.add_argument("--api-key", default=None, metavar="KEY", help="require Authorization: Bearer KEY")
    p.add_argument("--name", default=None, help="the model's id in the API (default: the file's name)")
    for short, part in (("-ctk", "k"), ("-ctv", "v")):
        p.add_argument(f"--cache-type-{part}", short, dest=f"cache_type_{part}", default="f16",
                       choices=["f32", "f16", "q8_0", "q4_0"], metavar="TYPE",
                       help=f"KV cache type for {'keys' if part == 'k' else 'values'} (default f16)")
    p.add_argument("--ray", action="store_true", help="deploy on Ray Serve (pip install 'lanternlm[ray]')")
    p.add_argument("--replicas", type=int, default=1, metavar="N", help="with --ray: engine replicas (default 1)")
    add_sampling_args(p, max_tokens=-1)


def app_options(args: argparse.Namespace) -> dict:
    """create_app's keywords from the flags, checked before a model is loaded."""
    from ..offload.budget import parse_size

    for flag in ("parallel", "batch_tokens", "queue_size", "replicas"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    if args.ctx is not None and args.ctx < 2:
        raise ValueError(f"--ctx must be at least 2, got {args.ctx}")
    sampling = sampling_options(args)
    max_tokens = max_tokens_option(args)
    return {"name": args.name, "n_ctx": args.ctx, "kv_memory": parse_size(args.kv_memory, "--kv-memory"),
            "parallel": args.parallel, "batch_tokens": args.batch_tokens, "queue_size": args.queue_size,
            "threads": args.threads, "api_key": args.api_key, "cache_type_k": args.cache_type_k,
            "cache_type_v": args.cache_type_v, "sampling": sampling, "max_tokens": max_tokens}


def main(args: argparse.Namespace) -> int:
    from ..formats.catalog import resolve

    options = app_options(args)
    path = resolve(args.model)
    if args.ray:
        from .ray_deploy import serve_with_ray

        return serve_with_ray(path, options, host=args.host, port=args.port, replicas=args.replicas)
    import uvicorn

    from ..runtime.compile_notice import notice_if_compiling
    from .app import create_app

    with notice_if_compiling():
        app = create_app(path, **options)
    print(f"lantern: serving {app.state.server.name} on http://{args.host}:{args.port}/v1 "
          f"({options['parallel']} parallel sequences, {app.state.engine.n_blocks} KV blocks)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


__all__ = ["configure_parser", "main", "SAMPLING_FLAGS"]
