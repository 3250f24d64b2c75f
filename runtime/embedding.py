"""Text embeddings: pool a text's final hidden states into vectors, as llama.cpp does.

The engine gives every token's final hidden state (after the output norm: llama.cpp's
"embeddings", `Engine.embeddings`); a pooling turns those (n_tokens, n_embd) rows into what
`Model.embed` returns:

    mean  the average over the text's tokens (BOS included)  -> one vector
    cls   the first token's row                               -> one vector
    last  the last token's row                                -> one vector
    none  every token's row                                   -> one vector per token

Which pooling: the caller's, else the model's (`Model(pooling_type=...)`), else the file's
`<arch>.pooling_type`, else mean. llama.cpp itself falls back to "none" for a file without a
pooling type (a generative model), and its server then refuses OpenAI-style embeddings; mean is
what such a model's single-vector embedding is usually taken to be, so that is the fallback here.

Normalizing divides each vector by its Euclidean length (llama.cpp's `common_embd_normalize`
with its default mode 2, used by `llama-embedding` and by the server's OpenAI endpoint); a zero
vector stays zero.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

# pooling name -> (hidden states (n_tokens, n_embd) f32 -> pooled, f32 (n_embd,) or (n_tokens, n_embd))
POOLINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda hidden: hidden.mean(axis=0, dtype=np.float64).astype(np.float32),
    "cls": lambda hidden: hidden[0],
    "last": lambda hidden: hidden[-1],
    "none": lambda hidden: hidden,
}

# llama.cpp's enum llama_pooling_type (what `<arch>.pooling_type` and llama-cpp-python's
# `pooling_type=` hold). 4, "rank", scores a pair with a classifier head these models lack.
LLAMA_POOLING_TYPES: dict[int, str] = {0: "none", 1: "mean", 2: "cls", 3: "last"}
UNSPECIFIED = -1
DEFAULT_POOLING = "mean"


def pooling_name(pooling: str | int | None) -> str | None:
    """A pooling given as a name or as llama.cpp's enum value -> its name; None (or -1,
    llama.cpp's "unspecified") -> None. ValueError for anything else."""
    if pooling is None:
        return None
    if isinstance(pooling, str):
        if pooling in POOLINGS:
            return pooling
    elif isinstance(pooling, (int, np.integer)) and not isinstance(pooling, bool):
        if pooling == UNSPECIFIED:
            return None
        if int(pooling) in LLAMA_POOLING_TYPES:
            return LLAMA_POOLING_TYPES[int(pooling)]
    raise ValueError(f"pooling must be one of {', '.join(POOLINGS)} (or llama.cpp's pooling type "
                     f"0..3), got {pooling!r}")


def choose_pooling(*preferences: str | int | None) -> str:
    """The first specified pooling among `preferences` (caller's, model's, file's), else mean."""
    for pooling in preferences:
        name = pooling_name(pooling)
        if name is not None:
            return name
    return DEFAULT_POOLING


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Each vector along the last axis divided by its Euclidean length, in float64 as llama.cpp
    sums; zero vectors stay zero. x: f32 (n,) or (rows, n); returns f32 of the same shape."""
    x64 = np.asarray(x, dtype=np.float64)
    norm = np.sqrt((x64 * x64).sum(axis=-1, keepdims=True))
    scale = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
    return (x64 * scale).astype(np.float32)


def pool(hidden: np.ndarray, pooling: str, normalize: bool) -> np.ndarray:
    """The embedding of one text from its hidden states (n_tokens, n_embd) f32."""
    pooled = POOLINGS[pooling](hidden)
    return l2_normalize(pooled) if normalize else pooled
