"""Saved log-probabilities of a base model, and the KL divergence of another model to them.

`lantern perplexity BASE TEXT --save-logits FILE` stores what the base model predicted at
every scored position; `lantern perplexity QUANT --kl-divergence FILE` evaluates the same
tokens with another model (typically a quantization of the same weights) and compares the
two distributions position by position, as llama-perplexity's --kl-divergence does.

File format (one .npy file, readable with `np.load(FILE, mmap_mode="r")`): a structured array
of shape (n_chunks,), one record per chunk of `ctx` tokens, with the fields

    tokens    int32   (ctx,)             the token ids evaluated (BOS already substituted)
    logprobs  float16 (ctx - 1, n_vocab) natural-log softmax of the logits at positions
                                         0 .. ctx-2, i.e. the distribution of tokens 1 .. ctx-1

so ctx and n_vocab are read from the dtype. float16 keeps ~3 significant digits of each
log-probability: enough for KL divergences down to ~1e-5, at half the size of float32.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LOGITS_FIELDS = ("tokens", "logprobs")
NPY_MAGIC = b"\x93NUMPY"


def logits_file_dtype(ctx: int, n_vocab: int) -> np.dtype:
    return np.dtype([("tokens", "<i4", (ctx,)), ("logprobs", "<f2", (ctx - 1, n_vocab))])


class LogprobWriter:
    """Writes a logits file chunk by chunk through a memory map; the file appears under its
    name only once `close()` has run (written to FILE.partial, then renamed)."""

    def __init__(self, path: str | os.PathLike, n_chunks: int, ctx: int, n_vocab: int):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.array = np.lib.format.open_memmap(self.partial, mode="w+",
                                               dtype=logits_file_dtype(ctx, n_vocab), shape=(n_chunks,))

    def set_tokens(self, chunk: int, tokens: np.ndarray) -> None:
        self.array[chunk]["tokens"] = tokens

    def add(self, chunk: int, row: int, logprobs: np.ndarray) -> None:
        """logprobs: (rows, n_vocab) float64 for positions row .. row+rows-1 of `chunk`."""
        self.array[chunk]["logprobs"][row:row + logprobs.shape[0]] = logprobs

    def close(self) -> None:
        self.array.flush()
        del self.array
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        del self.array
        self.partial.unlink(missing_ok=True)


def open_logits_file(path: str | os.PathLike) -> np.ndarray:
    """The records of a logits file (memory-mapped), or ValueError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"logits file not found: {path}")
    with open(path, "rb") as f:
        if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise ValueError(f"{path} is not a .npy file (a logits file written by --save-logits)")
    try:
        records = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path}: unreadable .npy logits file ({exc})") from None
    names = records.dtype.names or ()
    if records.ndim != 1 or tuple(names) != LOGITS_FIELDS or records.shape[0] == 0 \
            or records.dtype["logprobs"].shape[0] + 1 != records.dtype["tokens"].shape[0]:
        raise ValueError(f"{path} is not a logits file written by --save-logits "
                         f"(expected records with fields {LOGITS_FIELDS}, got dtype {records.dtype})")
    return records


def logits_file_shape(records: np.ndarray) -> tuple[int, int, int]:
    """(n_chunks, ctx, n_vocab) of an opened logits file."""
    ctx = records.dtype["tokens"].shape[0]
    return records.shape[0], ctx, records.dtype["logprobs"].shape[1]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(rows, n_vocab) logits of any float dtype -> float64 log-probabilities, computed stably
    (max subtracted before the exponential)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_rows(base_logprobs: np.ndarray, logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-position KL(base || model) and whether both put the same token on top.

    base_logprobs, logprobs: (rows, n_vocab) float64 normalized log-probabilities.
    Returns kl (rows,) float64 (>= 0) and same_top (rows,) bool.
    """
    kl = np.sum(np.exp(base_logprobs) * (base_logprobs - logprobs), axis=-1)
    same_top = np.argmax(base_logprobs, axis=-1) == np.argmax(logprobs, axis=-1)
    return np.maximum(kl, 0.0), same_top


@dataclass
class KLAccumulator:
    """Collects the comparison with a base model's logits file, chunk rows at a time."""

    records: np.ndarray
    kl: list = field(default_factory=list)
    same_top: list = field(default_factory=list)
    base_nll: list = field(default_factory=list)

    def add(self, chunk: int, row: int, logprobs: np.ndarray) -> None:
        rec = self.records[chunk]
        # Renormalized, so that rounding to float16 does not show up as a divergence.
        base_lp = log_softmax(rec["logprobs"][row:row + logprobs.shape[0]])
        kl, same = kl_rows(base_lp, logprobs)
        targets = rec["tokens"][row + 1:row + 1 + logprobs.shape[0]]
        self.kl.append(kl)
        self.same_top.append(same)
        self.base_nll.append(-base_lp[np.arange(targets.shape[0]), targets])

    def summary(self, ppl: float) -> dict:
        kl = np.concatenate(self.kl)
        base_ppl = float(np.exp(np.mean(np.concatenate(self.base_nll))))
        return {
            "kl_mean": float(kl.mean()),
            "kl_stderr": float(kl.std(ddof=1) / np.sqrt(kl.size)) if kl.size > 1 else 0.0,
            "kl_median": float(np.median(kl)),
            "kl_max": float(kl.max()),
            "same_top_percent": float(100.0 * np.concatenate(self.same_top).mean()),
            "ppl_base": base_ppl,
            "ppl_ratio": ppl / base_ppl,
        }


__all__ = ["LogprobWriter", "open_logits_file", "logits_file_shape", "logits_file_dtype",
           "log_softmax", "kl_rows", "KLAccumulator"]
