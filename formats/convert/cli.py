"""`lantern convert HF_DIR OUT.gguf [--outtype f32|f16|bf16|q8_0]`."""
from __future__ import annotations

import argparse
import sys

from .converter import DEFAULT_OUTTYPE, OUTTYPES, convert_hf_to_gguf


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hf_dir", metavar="HF_DIR",
                        help="Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer files)")
    parser.add_argument("out", metavar="OUT.gguf", help="GGUF file to write (replaced atomically)")
    parser.add_argument("--outtype", choices=list(OUTTYPES), default=DEFAULT_OUTTYPE,
                        help=f"type of the weight matrices; norms and biases stay f32 (default {DEFAULT_OUTTYPE})")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def main(args: argparse.Namespace) -> int:
    report = convert_hf_to_gguf(args.hf_dir, args.out, outtype=args.outtype,
                                progress=not args.no_progress and sys.stderr.isatty())
    size_mib = report.path.stat().st_size / 2**20
    print(f"wrote {report.path} ({report.hf_architecture} -> {report.arch}, {report.outtype}, "
          f"{report.n_tensors} tensors, {report.n_vocab} tokens, {size_mib:.1f} MiB)")
    return 0
