"""OpenAI-shaped results, as llama-cpp-python returns them, built from the generation stream.

`Model.create_completion` / `__call__`, `Model.create_chat_completion` and
`Model.create_embedding` return these dicts (or, streaming, iterators of chunk dicts):

    text_completion        {"id": "cmpl-...", "object": "text_completion", "created", "model",
                            "choices": [{"text", "index", "logprobs", "finish_reason"}], "usage"}
    chat.completion        ... "choices": [{"index", "message": {"role", "content"}, "logprobs",
                            "finish_reason"}], "usage"
    *.chunk (stream=True)  one per piece of text, then one with the finish_reason (chat: a role
                            delta first, content deltas, then an empty delta)
    list (embeddings)      {"object": "list", "data": [{"object": "embedding", "embedding",
                            "index"}], "model", "usage"}

Log-probabilities come from the model's raw logits at each step (before logit bias, penalties
and temperature, as llama-cpp-python reports them): `LogprobRecorder` wraps the sampler and
notes, for every token it picks, log_softmax(logits)[token] and the `n` most likely tokens. A
completion reports them in the legacy shape (tokens, text_offset, token_logprobs, top_logprobs
with the chosen token added, as OpenAI and llama-cpp-python do); a chat completion in the chat
shape ({"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}). Streaming, each
chunk carries the log-probabilities of the tokens whose text it brings.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from .generate import GenerationChunk, GenerationStats

# llama-cpp-python keywords lanternlm has no counterpart for, accepted at the value that leaves
# them off (code written for llama-cpp-python often passes them explicitly): name -> that value.
LLAMA_CPP_OFF_VALUES: dict[str, Any] = {
    "suffix": None, "echo": False, "typical_p": 1.0, "tfs_z": 1.0, "mirostat_mode": 0,
    "mirostat_tau": 5.0, "mirostat_eta": 0.1, "stopping_criteria": None, "logits_processor": None,
    "functions": None, "function_call": None, "tools": None, "tool_choice": None,
}


def without_off_options(caller: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` less the llama-cpp-python keywords left at their off value; such a keyword set
    to anything else is a ValueError naming it."""
    rest = {}
    for name, value in options.items():
        if name not in LLAMA_CPP_OFF_VALUES:
            rest[name] = value
            continue
        off = LLAMA_CPP_OFF_VALUES[name]
        if not ((not value) if off is None else value == off):
            raise ValueError(f"{caller}(): {name}={value!r} is not supported (a llama-cpp-python "
                             f"option lanternlm does not implement; leave it at {off!r})")
    return rest


# ---------------------------------------------------------------- log-probabilities

@dataclass(frozen=True)
class TokenLogprob:
    token: int                              # the token picked
    logprob: float                          # its log-probability under the raw logits
    top: tuple[tuple[int, float], ...]      # the n most likely (token, logprob), most likely first


def token_logprob(logits: np.ndarray, token: int, n_top: int) -> TokenLogprob:
    """`token`'s log-probability in log_softmax(logits) (f32 (n_vocab,)), computed in float64,
    and the `n_top` most likely tokens (ties: lower id first)."""
    x = np.asarray(logits, dtype=np.float64)
    top = float(x.max())
    logprobs = x - (top + np.log(np.exp(x - top).sum()))
    n_top = min(n_top, x.shape[0])
    head = np.argpartition(-logprobs, n_top - 1)[:n_top] if n_top else np.empty(0, np.intp)
    head = head[np.lexsort((head, -logprobs[head]))]
    return TokenLogprob(int(token), float(logprobs[token]),
                        tuple((int(i), float(logprobs[i])) for i in head))


def _host(logits) -> np.ndarray:
    """Logits as a numpy array (the torch backend hands out a tensor, maybe on a GPU)."""
    return logits if isinstance(logits, np.ndarray) else logits.detach().float().cpu().numpy()


class LogprobRecorder:
    """A sampler wrapper: samples with `sampler`, and keeps in `last` the log-probabilities of
    the token just picked (`n_top` alternatives). The logits are only read."""

    def __init__(self, sampler, n_top: int):
        if not isinstance(n_top, (int, np.integer)) or isinstance(n_top, bool) or n_top < 0:
            raise ValueError(f"the number of top log-probabilities must be an integer >= 0, got {n_top!r}")
        self.sampler = sampler
        self.n_top = int(n_top)
        self.last: TokenLogprob | None = None

    def __call__(self, logits, history) -> int:
        token = self.sampler(logits, history)
        self.last = token_logprob(_host(logits), token, self.n_top)
        return token


@dataclass(frozen=True)
class Piece:
    """A piece of generated text and the log-probabilities of the tokens it completes; the
    last piece has text "" and the finish_reason (and the log-probabilities of tokens whose
    text never came, such as a stop string's)."""

    text: str
    logprobs: list[TokenLogprob]
    finish_reason: str | None
    stats: GenerationStats


def pieces(chunks: Iterable[GenerationChunk], recorder: LogprobRecorder | None) -> Iterator[Piece]:
    pending: list[TokenLogprob] = []
    for chunk in chunks:
        if recorder is not None and chunk.token is not None:
            pending.append(recorder.last)      # the sampler's record of this very token
        if chunk.text:
            yield Piece(chunk.text, pending, None, chunk.stats)
            pending = []
        if chunk.finish_reason is not None:
            yield Piece("", pending, chunk.finish_reason, chunk.stats)


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


class CompletionLogprobs:
    """Formats TokenLogprobs in the completion shape. Text offsets count characters from
    `text_offset` (the prompt's length), across calls, so a stream's chunks continue them."""

    def __init__(self, tokenizer, text_offset: int):
        self.tokenizer = tokenizer
        self.text_offset = text_offset
        self.generated = b""

    def __call__(self, entries: list[TokenLogprob]) -> dict:
        out: dict[str, list] = {"tokens": [], "text_offset": [], "token_logprobs": [], "top_logprobs": []}
        for e in entries:
            piece = self.tokenizer.token_to_piece(e.token)
            out["text_offset"].append(self.text_offset + len(self.generated.decode("utf-8", errors="ignore")))
            self.generated += piece
            out["tokens"].append(_text(piece))
            out["token_logprobs"].append(e.logprob)
            top = {_text(self.tokenizer.token_to_piece(i)): lp for i, lp in e.top}
            top[_text(piece)] = e.logprob           # the chosen token is always listed
            out["top_logprobs"].append(top)
        return out


class ChatLogprobs:
    """Formats TokenLogprobs in the chat shape (each token with its UTF-8 bytes)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def _entry(self, token: int, logprob: float) -> dict:
        piece = self.tokenizer.token_to_piece(token)
        return {"token": _text(piece), "logprob": logprob, "bytes": list(piece)}

    def __call__(self, entries: list[TokenLogprob]) -> dict:
        return {"content": [{**self._entry(e.token, e.logprob),
                             "top_logprobs": [self._entry(i, lp) for i, lp in e.top]} for e in entries],
                "refusal": None}


# ---------------------------------------------------------------- responses

Formatter = Callable[[list[TokenLogprob]], dict]


def header(prefix: str, model: str) -> dict:
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}


def usage(stats: GenerationStats) -> dict[str, int]:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
            "total_tokens": stats.prompt_tokens + stats.completion_tokens}


def _collect(stream: Iterable[Piece]) -> tuple[str, list[TokenLogprob], Piece]:
    texts, entries = [], []
    for piece in stream:
        texts.append(piece.text)
        entries.extend(piece.logprobs)
    return "".join(texts), entries, piece


def _shaped(head: dict, obj: str, choice: dict) -> dict:
    return {"id": head["id"], "object": obj, "created": head["created"], "model": head["model"],
            "choices": [choice]}


def _logprobs(fmt: Formatter | None, entries: list[TokenLogprob], even_empty: bool = True):
    # a stream's chunk without tokens of its own reports null, as llama-cpp-python's do
    return fmt(entries) if fmt is not None and (entries or even_empty) else None


def completion(head: dict, stream: Iterable[Piece], fmt: Formatter | None) -> dict:
    text, entries, last = _collect(stream)
    return {**_shaped(head, "text_completion", {"text": text, "index": 0, "logprobs": _logprobs(fmt, entries),
                                                "finish_reason": last.finish_reason}),
            "usage": usage(last.stats)}


def completion_chunks(head: dict, stream: Iterable[Piece], fmt: Formatter | None) -> Iterator[dict]:
    for piece in stream:
        yield _shaped(head, "text_completion", {"text": piece.text, "index": 0,
                                                "logprobs": _logprobs(fmt, piece.logprobs, even_empty=False),
                                                "finish_reason": piece.finish_reason})


def chat_completion(head: dict, stream: Iterable[Piece], fmt: Formatter | None) -> dict:
    text, entries, last = _collect(stream)
    return {**_shaped(head, "chat.completion", {"index": 0, "message": {"role": "assistant", "content": text},
                                                "logprobs": _logprobs(fmt, entries),
                                                "finish_reason": last.finish_reason}),
            "usage": usage(last.stats)}


def chat_completion_chunks(head: dict, stream: Iterable[Piece], fmt: Formatter | None) -> Iterator[dict]:
    def chunk(delta: dict, logprobs, finish_reason: str | None) -> dict:
        return _shaped(head, "chat.completion.chunk", {"index": 0, "delta": delta, "logprobs": logprobs,
                                                       "finish_reason": finish_reason})

    yield chunk({"role": "assistant"}, None, None)
    for piece in stream:
        delta = {} if piece.finish_reason is not None else {"content": piece.text}
        yield chunk(delta, _logprobs(fmt, piece.logprobs, even_empty=False), piece.finish_reason)


def embedding_list(vectors: list, model: str, n_tokens: int) -> dict:
    return {"object": "list",
            "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)],
            "model": model, "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}
