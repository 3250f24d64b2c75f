"""`lantern perplexity MODEL TEXTFILE`: how well a model predicts a text.

The text is tokenized as plain text (special-token texts are not parsed; BOS only if the
model adds one), cut into chunks of `ctx` tokens, and each chunk is evaluated from an empty
KV cache, its first token replaced by BOS when the model uses one. Every token after the
first of a chunk is scored:

    perplexity = exp(mean over scored tokens of -log p(token | the chunk's tokens before it))

With --save-logits FILE the per-position log-probabilities are also written (format in
runtime/kl_divergence.py); with --kl-divergence FILE the model is evaluated on the tokens of
that file and compared with the base model that wrote it (mean KL divergence, how often
both pick the same top token, perplexity ratio).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from .cli_common import add_runtime_args, load_model
from .kl_divergence import (KLAccumulator, LogprobWriter, log_softmax, logits_file_shape,
                            open_logits_file)

DEFAULT_PPL_CTX = 512
ROWS_PER_BLOCK = 64     # log-softmax this many positions at a time: bounds float64 memory

# (chunk index, first position of the block, (rows, n_vocab) float64 log-probabilities)
RowConsumer = Callable[[int, int, np.ndarray], None]


def text_tokens(model, text: str) -> list[int]:
    """The text as the model reads it for perplexity: no special-token parsing, BOS per model."""
    return model.tokenize(text, add_special=True, parse_special=False)


def make_chunks(ids: Sequence[int], ctx: int, max_chunks: int | None, bos_id: int | None) -> np.ndarray:
    """(n_chunks, ctx) int64 consecutive chunks of `ids` (a partial last chunk is dropped),
    each starting with `bos_id` in place of its first token when bos_id is not None."""
    if ctx < 2:
        raise ValueError(f"--ctx must be at least 2 tokens, got {ctx}")
    n = len(ids) // ctx
    if n == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one chunk of {ctx} (lower --ctx)")
    if max_chunks is not None:
        if max_chunks < 1:
            raise ValueError(f"--chunks must be >= 1, got {max_chunks}")
        n = min(n, max_chunks)
    chunks = np.asarray(ids[:n * ctx], dtype=np.int64).reshape(n, ctx).copy()
    if bos_id is not None:
        chunks[:, 0] = bos_id
    return chunks


@dataclass
class PerplexityResult:
    nll: np.ndarray         # (n_chunks, ctx - 1) float64: -log p of tokens 1.. of each chunk
    seconds: float

    @property
    def tokens(self) -> int:
        return int(self.nll.size)

    @property
    def ppl(self) -> float:
        return float(np.exp(self.nll.mean()))


def score_chunks(model, chunks: np.ndarray, consumers: Sequence[RowConsumer] = (),
                 progress: bool = True) -> PerplexityResult:
    """Evaluate each chunk from an empty cache and score its tokens after the first.

    chunks: (n_chunks, ctx) int token ids. Each block of positions' log-probabilities
    (float64) is also handed to every consumer (saving logits, comparing with a base model).
    """
    n_chunks, ctx = chunks.shape
    nll = np.empty((n_chunks, ctx - 1), dtype=np.float64)
    start = time.perf_counter()
    with tqdm(total=n_chunks, desc="perplexity", unit="chunk", disable=not progress) as bar:
        for c in range(n_chunks):
            logits = model.logits(chunks[c])                       # (ctx, n_vocab) float32
            # Position i predicts token i+1: positions 0 .. ctx-2 are scored.
            for r0 in range(0, ctx - 1, ROWS_PER_BLOCK):
                r1 = min(r0 + ROWS_PER_BLOCK, ctx - 1)
                logprobs = log_softmax(logits[r0:r1])             # (r1-r0, n_vocab) float64
                nll[c, r0:r1] = -logprobs[np.arange(r1 - r0), chunks[c, r0 + 1:r1 + 1]]
                for consume in consumers:
                    consume(c, r0, logprobs)
            bar.set_postfix(ppl=f"{np.exp(nll[:c + 1].mean()):.4f}", refresh=False)
            bar.update(1)
    return PerplexityResult(nll, time.perf_counter() - start)


# ---------------------------------------------------------------- command line

def configure_parser(p) -> None:
    p.add_argument("model", help="GGUF path or catalog name")
    p.add_argument("textfile", nargs="?",
                   help="UTF-8 text to score (optional with --kl-divergence: the file holds the tokens)")
    p.add_argument("--chunks", type=int, default=None, metavar="N", help="score at most N chunks (default: all)")
    p.add_argument("--json", action="store_true", help="print the result as one line of JSON")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--save-logits", metavar="FILE",
                      help="also write the per-position log-probabilities to FILE (.npy, float16)")
    mode.add_argument("--kl-divergence", metavar="FILE",
                      help="compare with the base model's --save-logits FILE (KL divergence, top token, ppl ratio)")
    add_runtime_args(p, ctx=None, ctx_help=f"tokens per chunk (default {DEFAULT_PPL_CTX}, "
                                           f"or the --kl-divergence file's)")


def _read_text(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"text file not found: {p}")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _chunks_for_kl(model, args, records) -> np.ndarray:
    n_file, ctx, n_vocab = logits_file_shape(records)
    if args.ctx is not None and args.ctx != ctx:
        raise ValueError(f"--ctx {args.ctx} differs from the logits file's chunks of {ctx} tokens")
    if n_vocab != model.n_vocab:
        raise ValueError(f"the logits file has {n_vocab} vocabulary entries, the model {model.n_vocab}: "
                         f"not the same tokenizer")
    n = n_file if args.chunks is None else min(n_file, args.chunks)
    chunks = np.asarray(records["tokens"][:n], dtype=np.int64)
    if args.textfile is not None:
        mine = make_chunks(text_tokens(model, _read_text(args.textfile)), ctx, n, _bos(model))
        if mine.shape != chunks.shape or not np.array_equal(mine, chunks):
            raise ValueError(f"{args.textfile} does not tokenize to the tokens of the logits file "
                             f"(another text, or another tokenizer)")
    return chunks


def _bos(model) -> int | None:
    tok = model.tokenizer
    return tok.bos_id if tok.add_bos and tok.bos_id is not None else None


def main(args) -> int:
    if args.textfile is None and args.kl_divergence is None:
        raise ValueError("a TEXTFILE is needed (only --kl-divergence can do without: its file holds the tokens)")
    if args.ctx is not None and args.ctx < 2:
        raise ValueError(f"--ctx must be at least 2 tokens, got {args.ctx}")
    if args.chunks is not None and args.chunks < 1:
        raise ValueError(f"--chunks must be >= 1, got {args.chunks}")
    records = open_logits_file(args.kl_divergence) if args.kl_divergence else None
    text = _read_text(args.textfile) if records is None else None
    ctx = logits_file_shape(records)[1] if records is not None else (args.ctx or DEFAULT_PPL_CTX)
    model = load_model(args.model, ctx, args)

    consumers: list[RowConsumer] = []
    writer = kl = None
    if records is not None:
        chunks = _chunks_for_kl(model, args, records)
        kl = KLAccumulator(records)
        consumers.append(kl.add)
    else:
        chunks = make_chunks(text_tokens(model, text), ctx, args.chunks, _bos(model))
    if args.save_logits:
        writer = LogprobWriter(args.save_logits, chunks.shape[0], ctx, model.n_vocab)
        for c in range(chunks.shape[0]):
            writer.set_tokens(c, chunks[c])
        consumers.append(writer.add)

    try:
        result = score_chunks(model, chunks, consumers)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()

    report = {"ppl": result.ppl, "tokens": result.tokens, "seconds": round(result.seconds, 3),
              "chunks": int(chunks.shape[0]), "ctx": ctx}
    if kl is not None:
        report.update(kl.summary(result.ppl))
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report, saved=args.save_logits))
    return 0


def format_report(r: dict, saved: str | None = None) -> str:
    lines = [f"perplexity {r['ppl']:.4f} over {r['tokens']} tokens "
             f"({r['chunks']} chunk{'s' if r['chunks'] != 1 else ''} of {r['ctx']}, {r['seconds']:.1f} s)"]
    if "kl_mean" in r:
        lines += [f"KL divergence    {r['kl_mean']:.6f} ± {r['kl_stderr']:.6f} "
                  f"(median {r['kl_median']:.6f}, max {r['kl_max']:.6f})",
                  f"same top token   {r['same_top_percent']:.2f}%",
                  f"ppl / base ppl   {r['ppl']:.4f} / {r['ppl_base']:.4f} = {r['ppl_ratio']:.4f}"]
    if saved:
        lines.append(f"log-probabilities saved to {saved}")
    return "\n".join(lines)


__all__ = ["text_tokens", "make_chunks", "score_chunks", "PerplexityResult", "format_report"]
