"""`lantern quantize IN.gguf OUT.gguf TYPE`: llama-quantize's output, from Python.

    lantern quantize model-f16.gguf model-q4_k_m.gguf Q4_K_M
    lantern quantize --dry-run model-f16.gguf Q4_K_M      # the plan: tensor -> type, sizes

The heavy modules are imported only when the command runs.
"""
from __future__ import annotations

import argparse

from .mix import FTYPES, get_ftype

_MIB = 1024.0 * 1024.0


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("TYPE is one of: " + ", ".join(FTYPES) + ".\n"
                "Tensor types follow llama.cpp's llama-quantize mixes (no importance matrix); "
                "the file is byte-identical to llama-quantize's.")
    p.add_argument("input", metavar="IN.gguf", help="model to quantize (F32/F16/BF16 weights)")
    p.add_argument("output", metavar="OUT.gguf", help="file to write (omit with --dry-run)")
    p.add_argument("type", metavar="TYPE", nargs="?", help="quantization type, e.g. Q4_K_M")
    p.add_argument("--dry-run", action="store_true",
                   help="print each tensor's planned type and size, write nothing")
    p.add_argument("--allow-requantize", action="store_true",
                   help="allow quantizing tensors that are already quantized (loses quality)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress (a bar on a terminal, a line every few seconds elsewhere) or summary")


def main(args: argparse.Namespace) -> int:
    output, qtype = args.output, args.type
    if qtype is None:
        if not args.dry_run:
            raise ValueError("missing TYPE: lantern quantize IN.gguf OUT.gguf TYPE")
        output, qtype = None, args.output  # --dry-run IN TYPE
    ftype = get_ftype(qtype)  # an unknown TYPE fails before the model is read

    from .quantize_model import format_plan, open_model, plan_model, quantize_model

    if args.dry_run:
        with open_model(args.input) as g:
            print(format_plan(plan_model(g, ftype, allow_requantize=args.allow_requantize)))
        return 0
    summary = quantize_model(args.input, output, ftype, allow_requantize=args.allow_requantize,
                             progress=not args.quiet)
    if not args.quiet:
        n = max(summary.n_elements, 1)
        print(f"wrote {output}: {ftype.name}, {summary.src_nbytes / _MIB:.2f} MiB -> "
              f"{summary.dst_nbytes / _MIB:.2f} MiB ({summary.dst_nbytes * 8 / n:.2f} bits per weight)")
    return 0
