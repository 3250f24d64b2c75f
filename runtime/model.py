"""The library facade: one loaded model, its tokenizer, chat template and KV cache.

    from lanternlm import Model
    m = Model.load("smollm2-135m-instruct", n_ctx=2048, threads=2)
    m.generate("The capital of France is", max_tokens=8, temperature=0)
    m.chat([{"role": "user", "content": "Hi!"}])

Every text-producing method is a thin view of `stream_generate` (runtime/generate.py) over
the model's one `KVContext`, so consecutive calls whose prompts share a prefix (the turns of
a chat) only evaluate what is new. Sampling keywords are those of `make_sampler`
(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, presence_penalty,
frequency_penalty, logit_bias, seed); generation keywords are max_tokens (None: until the
context is full) and stop (a string or a list of strings, cut from the output).

A Model is not thread-safe: it owns one KV cache, so use one Model per thread.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..formats.catalog import resolve
from ..formats.chat_template import (CHATML_TEMPLATE, chat_template_for, prompt_render_limits,
                                     render_chat)
from ..formats.tokenizer import load_tokenizer
from .backends import get_backend
from .engine import Engine
from .generate import GenerationChunk, GenerationStats, KVContext, stream_generate
from .sampling import make_sampler

DEFAULT_MAX_TOKENS = 128

def _check_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    checked = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) \
                or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] must be a dict with string 'role' and 'content', got {m!r}")
        checked.append(dict(m))
    return checked


class Model:
    """A loaded model: tokenize, logits, generate, stream, chat, create_chat_completion."""

    def __init__(self, engine, tokenizer, n_ctx: int, name: str = "model",
                 chat_template: str | None = None):
        self.engine = engine
        self.tokenizer = tokenizer
        self.name = name
        self.chat_template = chat_template or CHATML_TEMPLATE
        self.context = KVContext(engine, n_ctx)

    @classmethod
    def load(cls, model: str | os.PathLike, n_ctx: int = 2048, threads: int | None = None,
             n_batch: int = 512, backend: str = "cpu", chat_template: str | None = None,
             device: str | None = None, weights: str | None = None) -> "Model":
        """Load a GGUF file (a path, or a catalog name pulled on first use).

        backend names an engine backend (runtime.backends.BACKENDS, "cpu" by default);
        with backend="torch", device is "auto" (default), "cuda", "cuda:N", "mps" or "cpu",
        and weights "dequantized" (default) or "quantized" (kept in their blocks on the device).
        chat_template overrides the template stored in the file (a Jinja2 string); without
        either, the architecture's built-in template or ChatML is used.
        """
        get_backend(backend, device=device, weights=weights)  # bad options fail before any download
        if not isinstance(n_ctx, (int, np.integer)) or n_ctx <= 0:
            raise ValueError(f"n_ctx must be a positive integer, got {n_ctx!r}")
        engine = Engine.load(resolve(model), n_ctx=n_ctx, threads=threads, n_batch=n_batch,
                             backend=backend, device=device, weights=weights)
        kv = engine.gguf.kv
        return cls(engine, load_tokenizer(kv), n_ctx, name=str(model),
                   chat_template=chat_template or chat_template_for(kv))

    # ------------------------------------------------------------------ basics

    @property
    def n_ctx(self) -> int:
        return self.context.n_ctx

    @property
    def n_vocab(self) -> int:
        return self.context.n_vocab

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"tokenize expects a str, got {type(text).__name__}")
        return list(self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special))

    def detokenize(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special=skip_special)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """(len(ids), n_vocab) float32 logits at every position, from a fresh context."""
        ids = self.context.check_prompt(ids)
        out = np.array(self.engine.logits(ids), dtype=np.float32, copy=True)
        self.context.invalidate()       # the engine's cache no longer holds what we tracked
        return out.reshape(len(ids), self.n_vocab)

    def reset(self) -> None:
        """Empty the KV cache (the next prompt is evaluated from scratch)."""
        self.context.invalidate()

    # ------------------------------------------------------------------ text generation

    def prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        """A prompt as token ids: text is tokenized (special tokens parsed), ids pass through."""
        if isinstance(prompt, str):
            return self.tokenize(prompt)
        return [int(t) for t in prompt]

    def stream_generate(self, prompt: str | Sequence[int], max_tokens: int | None = DEFAULT_MAX_TOKENS,
                        stop: str | Iterable[str] | None = (), **sampling) -> Iterator[GenerationChunk]:
        """The full-detail stream (text, token, finish_reason, stats per chunk) the others build on."""
        sampler = make_sampler(**sampling)
        return stream_generate(self.context, self.tokenizer, self.prompt_ids(prompt), sampler,
                               max_tokens=max_tokens, stop=stop or ())

    def stream(self, prompt: str | Sequence[int], max_tokens: int | None = DEFAULT_MAX_TOKENS,
               stop: str | Iterable[str] | None = (), **sampling) -> Iterator[str]:
        """Yield the continuation of `prompt` piece by piece (non-empty strings)."""
        return _texts(self.stream_generate(prompt, max_tokens, stop, **sampling))

    def generate(self, prompt: str | Sequence[int], max_tokens: int | None = DEFAULT_MAX_TOKENS,
                 stop: str | Iterable[str] | None = (), **sampling) -> str:
        """The continuation of `prompt` (the prompt itself is not repeated)."""
        return "".join(self.stream(prompt, max_tokens, stop, **sampling))

    # ------------------------------------------------------------------ chat

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text the chat template makes of `messages`; rendering stops with
        ChatTemplateLimitError once the text is longer than the context could hold."""
        return render_chat(self.chat_template, _check_messages(messages),
                           add_generation_prompt=add_generation_prompt,
                           bos_token=self._special_text(self.tokenizer.bos_id),
                           eos_token=self._special_text(self.tokenizer.eos_id),
                           render_limits=prompt_render_limits(self.n_ctx, self.tokenizer.longest_token_chars))

    def chat_prompt_ids(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        ids = self.tokenize(self.render_chat(messages))
        bos = self.tokenizer.bos_id
        # Templates that write {{ bos_token }} themselves would get a second one from encode.
        if bos is not None and len(ids) >= 2 and ids[0] == ids[1] == bos:
            del ids[0]
        return ids

    def stream_chat(self, messages: Sequence[Mapping[str, Any]],
                    max_tokens: int | None = DEFAULT_MAX_TOKENS,
                    stop: str | Iterable[str] | None = (), **sampling) -> Iterator[str]:
        """Yield the assistant's reply to `messages` piece by piece."""
        return self.stream(self.chat_prompt_ids(messages), max_tokens, stop, **sampling)

    def chat(self, messages: Sequence[Mapping[str, Any]], max_tokens: int | None = DEFAULT_MAX_TOKENS,
             stop: str | Iterable[str] | None = (), **sampling) -> str:
        """The assistant's reply to `messages` ([{"role": "user", "content": "..."}, ...])."""
        return "".join(self.stream_chat(messages, max_tokens, stop, **sampling))

    def create_chat_completion(self, messages: Sequence[Mapping[str, Any]], stream: bool = False,
                               max_tokens: int | None = DEFAULT_MAX_TOKENS,
                               stop: str | Iterable[str] | None = (), **sampling):
        """An OpenAI-shaped chat completion dict, or with stream=True an iterator of chunk dicts
        (first a role delta, then content deltas, then an empty delta with the finish_reason)."""
        chunks = self.stream_generate(self.chat_prompt_ids(messages), max_tokens, stop, **sampling)
        header = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.name}
        if stream:
            return _completion_chunks(header, chunks)
        text, finish_reason, stats = _collect(chunks)
        return {
            **header,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish_reason}],
            "usage": _usage(stats),
        }

    def _special_text(self, token: int | None) -> str:
        if token is None or token < 0:
            return ""
        return self.tokenizer.token_to_piece(token).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"Model({self.name!r}, n_ctx={self.n_ctx}, n_vocab={self.n_vocab})"


def _texts(chunks: Iterator[GenerationChunk]) -> Iterator[str]:
    for chunk in chunks:
        if chunk.text:
            yield chunk.text


def _collect(chunks: Iterator[GenerationChunk]) -> tuple[str, str, GenerationStats]:
    parts = []
    for chunk in chunks:
        parts.append(chunk.text)
    return "".join(parts), chunk.finish_reason, chunk.stats


def _usage(stats: GenerationStats) -> dict[str, int]:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
            "total_tokens": stats.prompt_tokens + stats.completion_tokens}


def _completion_chunks(header: dict, chunks: Iterator[GenerationChunk]) -> Iterator[dict]:
    def chunk_dict(delta: dict, finish_reason: str | None) -> dict:
        return {**header, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish_reason}]}

    yield chunk_dict({"role": "assistant"}, None)
    for chunk in chunks:
        if chunk.text:
            yield chunk_dict({"content": chunk.text}, None)
        if chunk.finish_reason is not None:
            yield chunk_dict({}, chunk.finish_reason)
