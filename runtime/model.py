"""The library facade: one loaded model, its tokenizer, chat template and KV cache.

    from lanternlm import Model
    m = Model.load("smollm2-135m-instruct", n_ctx=2048, threads=2)
    m.generate("The capital of France is", max_tokens=8, temperature=0)
    m.chat([{"role": "user", "content": "Hi!"}])
    m.embed("Hello")                   # a text's vector: mean of the final hidden states, unit length

llama-cpp-python's spellings work as well (the dicts are described in openai_shapes.py):

    m = Model(model_path="model.gguf", n_ctx=2048, n_threads=2, verbose=False)
    m("Q: Name a planet. A:", max_tokens=16, stop=["\n"], logprobs=3)     # a completion dict
    m.create_chat_completion(messages, stream=True, logprobs=True, top_logprobs=2)
    m.tokenize(b"Hello", add_bos=True, special=False)
    m.create_embedding(["first text", "second text"])

Every text-producing method is a thin view of `stream_generate` (runtime/generate.py) over
the model's one `KVContext`, so consecutive calls whose prompts share a prefix (the turns of
a chat) only evaluate what is new. Sampling keywords are those of `make_sampler`
(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, presence_penalty,
frequency_penalty, logit_bias, seed); generation keywords are max_tokens (None: until the
context is full) and stop (a string or a list of strings, cut from the output). Any other
keyword is a TypeError naming the method called.

A Model is not thread-safe: it owns one KV cache, so use one Model per thread.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import closing
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..formats.catalog import resolve
from ..formats.chat_template import chat_template_for
from . import openai_shapes as shapes
from .backends import get_backend
from .chat_prompt import ChatPrompt
from .embedding import choose_pooling, pool, pooling_name
from .constraints import Grammar, constrain, grammar_argument, response_format_grammar
from .engine import Engine
from .generate import GenerationChunk, KVContext, generation_summary, stream_generate
from .sampling import SamplerFn, sampler_for

DEFAULT_MAX_TOKENS = 128


class Model:
    """A loaded model: tokenize, logits, generate, stream, chat, embed, and llama-cpp-python's
    create_completion / __call__, create_chat_completion, create_embedding."""

    def __init__(self, model_path: str | os.PathLike, *, n_ctx: int = 2048, n_threads: int | None = None,
                 n_batch: int = 512, verbose: bool = False, backend: str = "cpu", device: str | None = None,
                 weights: str | None = None, chat_template: str | None = None,
                 pooling_type: str | int | None = None, embedding: bool = False,
                 ram_budget: int | str | None = None, offload_plan: str | os.PathLike | bool | None = None,
                 draft: bool | str | os.PathLike = True, context_shift: bool = False, n_keep: int = 0,
                 type_k: str | int | None = None, type_v: str | int | None = None):
        """Load a GGUF file (a path, or a catalog name pulled on first use), as
        `llama_cpp.Llama(model_path, n_ctx=..., n_threads=..., verbose=...)` does.

        n_threads: CPU threads (None: all cores, or one while other processes keep them busy).
        backend names an engine backend (runtime.backends.BACKENDS, "cpu" by default); with
        backend="torch", device is "auto" (default), "cuda", "cuda:N", "mps" or "cpu", and
        weights "dequantized" (default) or "quantized" (kept in their blocks on the device).
        chat_template overrides the template stored in the file (a Jinja2 string); without
        either, the architecture's built-in template or ChatML is used.
        verbose: a line on stderr after loading and after each generation (tokens, speed).
        pooling_type: embed()'s default pooling, a name (mean, cls, last, none) or llama.cpp's
        number for it, as llama-cpp-python takes; None: the file's, else mean.
        embedding: taken for llama-cpp-python code, which must ask for embeddings at load;
        here embed() always works, so it changes nothing.
        ram_budget keeps at most that many bytes of weights in RAM (an int, or '300MB', '1.5GB',
        '40%' of the file) and streams the rest from disk; None keeps the whole model mapped.
        offload_plan (with ram_budget): a `lantern offload` plan serving the FFN sparsely; None
        uses MODEL.offload.gguf beside the model if there is one, False streams densely.
        draft: speculative decoding, whose output is always plain decode's. True (default):
        under ram_budget, where the output head streams, draft tokens without it and verify
        several with one read of it (runtime/resident_draft.py); "ngram": prompt lookup, drafts
        from what followed the same tokens earlier (runtime/ngram_draft.py); a GGUF path or
        catalog name: a smaller draft model with the same vocabulary (runtime/model_draft.py);
        False: none.
        context_shift: when a generation fills the context, keep the prompt's first n_keep
        tokens (and its BOS) and drop half of the rest instead of stopping, as llama.cpp's
        --context-shift --keep N (runtime/context_shift.py).
        type_k, type_v: the KV cache's key and value types, "f16" (default), "f32", "q8_0" or
        "q4_0" (or their GGML type numbers, as llama-cpp-python takes them), as llama.cpp's
        --cache-type-k / --cache-type-v (runtime/kv_cache.py).
        """
        start = time.perf_counter()
        get_backend(backend, device=device, weights=weights)  # bad options fail before any download
        if not isinstance(n_ctx, (int, np.integer)) or isinstance(n_ctx, bool) or n_ctx <= 0:
            raise ValueError(f"n_ctx must be a positive integer, got {n_ctx!r}")
        if not isinstance(embedding, bool):
            raise ValueError(f"embedding must be True or False, got {embedding!r}")
        self.pooling = pooling_name(pooling_type)
        self.engine = Engine.load(resolve(model_path), n_ctx=n_ctx, threads=n_threads, n_batch=n_batch,
                                  backend=backend, device=device, weights=weights, ram_budget=ram_budget,
                                  offload_plan=offload_plan, draft=draft, cache_type_k=type_k,
                                  cache_type_v=type_v)
        kv = self.engine.gguf.kv
        self.tokenizer = self.engine.tokenizer
        self.name = str(model_path)
        self.chat_template = chat_template or chat_template_for(kv)
        self.chat_prompt = ChatPrompt(self.tokenizer, self.chat_template, n_ctx)
        self.context = KVContext(self.engine, n_ctx)
        if not isinstance(n_keep, (int, np.integer)) or isinstance(n_keep, bool) or not 0 <= n_keep < n_ctx:
            raise ValueError(f"n_keep must be an integer in 0..{n_ctx - 1}, got {n_keep!r}")
        self.context_shift, self.n_keep = bool(context_shift), int(n_keep)
        self.verbose = bool(verbose)
        if self.verbose:
            cfg = self.engine.cfg
            print(f"lanternlm: loaded {self.name} ({cfg.arch}, {cfg.n_layer} layers, {cfg.n_vocab} tokens) "
                  f"with n_ctx {n_ctx}, {self.engine.threads} threads, {backend} backend "
                  f"in {time.perf_counter() - start:.2f} s", file=sys.stderr)

    @classmethod
    def load(cls, model: str | os.PathLike, n_ctx: int = 2048, threads: int | None = None,
             n_batch: int = 512, backend: str = "cpu", chat_template: str | None = None,
             device: str | None = None, weights: str | None = None,
             ram_budget: int | str | None = None, offload_plan: str | os.PathLike | bool | None = None,
             draft: bool | str | os.PathLike = True, context_shift: bool = False, n_keep: int = 0,
             type_k: str | int | None = None, type_v: str | int | None = None) -> "Model":
        """`Model(model, n_ctx=..., n_threads=threads, ...)`: see the constructor."""
        return cls(model, n_ctx=n_ctx, n_threads=threads, n_batch=n_batch, backend=backend,
                   chat_template=chat_template, device=device, weights=weights, ram_budget=ram_budget,
                   offload_plan=offload_plan, draft=draft, context_shift=context_shift, n_keep=n_keep,
                   type_k=type_k, type_v=type_v)

    # ------------------------------------------------------------------ basics

    @property
    def n_ctx(self) -> int:
        return self.context.n_ctx

    @property
    def n_vocab(self) -> int:
        return self.context.n_vocab

    def tokenize(self, text: str | bytes, add_special: bool = True, parse_special: bool = True, *,
                 add_bos: bool | None = None, special: bool | None = None) -> list[int]:
        """Token ids of `text`, a str or UTF-8 bytes (llama-cpp-python's type). add_special adds
        the BOS (and EOS) the model asks for; parse_special reads special-token texts such as
        <|im_start|> as those tokens. llama-cpp-python's names for these two, add_bos and special,
        are taken too (the defaults stay this method's: True and True)."""
        if add_bos is not None:
            add_special = add_bos
        if special is not None:
            parse_special = special
        if isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"tokenize: the bytes are not valid UTF-8 ({exc})") from None
        if not isinstance(text, str):
            raise ValueError(f"tokenize expects a str or UTF-8 bytes, got {type(text).__name__}")
        return list(self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special))

    def detokenize(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special=skip_special)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """(len(ids), n_vocab) float32 logits at every position, from a fresh context."""
        ids = self.context.check_prompt(ids)
        try:
            return self.engine.logits(ids)
        finally:
            self.context.invalidate()   # the engine's cache no longer holds what we tracked

    def hidden_states(self, ids: Sequence[int]) -> np.ndarray:
        """(len(ids), n_embd) float32 final hidden states (after the output norm, what the LM
        head turns into logits) at every position, from a fresh context."""
        ids = self.context.check_prompt(ids)
        try:
            return self.engine.embeddings(ids)
        finally:
            self.context.invalidate()

    def reset(self) -> None:
        """Empty the KV cache (the next prompt is evaluated from scratch)."""
        self.context.invalidate()

    # ------------------------------------------------------------------ embeddings

    def embed(self, input: str | Sequence[str], normalize: bool = True, truncate: bool = True,
              return_count: bool = False, pooling: str | int | None = None):
        """The embedding of a text (a list of floats), or a list of them for a list of texts, as
        llama-cpp-python's embed returns; pooling "none" gives one vector per token instead.

        A text is tokenized as tokenize() does and its final hidden states pooled (see
        runtime/embedding.py): `pooling` (mean, cls, last, none; or llama.cpp's number), else
        the model's pooling_type, else the file's, else mean. normalize scales each vector to
        unit length (llama.cpp's default; llama-cpp-python's embed defaults to False). truncate
        keeps the first n_ctx tokens of a longer text (else it is a ValueError). return_count:
        also return the number of tokens embedded.
        """
        texts = [input] if isinstance(input, str) else input
        if not isinstance(texts, Sequence) or isinstance(texts, (bytes, bytearray)) or not texts \
                or not all(isinstance(t, str) for t in texts):
            raise ValueError("embed takes a text or a non-empty list of texts")
        how = choose_pooling(pooling, self.pooling, self.engine.cfg.pooling_type)
        vectors, n_tokens = [], 0
        for i, text in enumerate(texts):
            ids = self.tokenize(text)
            if not ids:
                raise ValueError(f"cannot embed an empty text (input {i} has no tokens)")
            if truncate:
                ids = ids[:self.n_ctx]
            vectors.append(pool(self.hidden_states(ids), how, normalize).tolist())
            n_tokens += len(ids)
        out = vectors[0] if isinstance(input, str) else vectors
        return (out, n_tokens) if return_count else out

    def create_embedding(self, input: str | Sequence[str], model: str | None = None,
                         pooling: str | int | None = None, normalize: bool = True) -> dict:
        """An OpenAI-shaped embedding list of `input` (a text or a list of texts); see embed."""
        vectors, n_tokens = self.embed([input] if isinstance(input, str) else input, normalize=normalize,
                                       return_count=True, pooling=pooling)
        return shapes.embedding_list(vectors, model or self.name, n_tokens)

    # ------------------------------------------------------------------ text generation

    def prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        """A prompt as token ids: text is tokenized (special tokens parsed), ids pass through."""
        if isinstance(prompt, str):
            return self.tokenize(prompt)
        return [int(t) for t in prompt]

    def _generate(self, prompt_ids: list[int], max_tokens: int | None, stop, sampler: SamplerFn,
                  grammar: Grammar | str | None = None) -> Iterator[GenerationChunk]:
        sampler = constrain(sampler, grammar_argument(grammar), self.tokenizer)
        keep = None
        if self.context_shift:
            bos = self.tokenizer.bos_id
            keep = min(self.n_keep + (1 if bos is not None and prompt_ids[:1] == [bos] else 0), len(prompt_ids))
        chunks = stream_generate(self.context, self.tokenizer, prompt_ids, sampler,
                                 max_tokens=max_tokens, stop=stop or (), context_shift=keep)
        return self._reported(chunks) if self.verbose else chunks

    def _reported(self, chunks: Iterator[GenerationChunk]) -> Iterator[GenerationChunk]:
        with closing(chunks):
            for chunk in chunks:
                yield chunk
                if chunk.finish_reason is not None:
                    print(f"lanternlm: {generation_summary(chunk.stats)}", file=sys.stderr)

    def stream_generate(self, prompt: str | Sequence[int], max_tokens: int | None = DEFAULT_MAX_TOKENS,
                        stop: str | Iterable[str] | None = (), grammar: Grammar | str | None = None,
                        **sampling) -> Iterator[GenerationChunk]:
        """The full-detail stream (text, token, finish_reason, stats per chunk) the others build on.
        grammar (here and in every generating method): a Grammar (runtime/constraints.py: JSON
        schema, JSON object, GBNF, regex, Lark) or a GBNF text the output must follow."""
        sampler = sampler_for("Model.stream_generate", sampling)
        return self._generate(self.prompt_ids(prompt), max_tokens, stop, sampler, grammar)

    def stream(self, prompt: str | Sequence[int], max_tokens: int | None = DEFAULT_MAX_TOKENS,
               stop: str | Iterable[str] | None = (), grammar: Grammar | str | None = None,
               **sampling) -> Iterator[str]:
        """Yield the continuation of `prompt` piece by piece (non-empty strings)."""
        sampler = sampler_for("Model.stream", sampling)
        return _texts(self._generate(self.prompt_ids(prompt), max_tokens, stop, sampler, grammar))

    def generate(self, prompt: str | Sequence[int], max_tokens: int | None = DEFAULT_MAX_TOKENS,
                 stop: str | Iterable[str] | None = (), grammar: Grammar | str | None = None,
                 **sampling) -> str:
        """The continuation of `prompt` (the prompt itself is not repeated)."""
        sampler = sampler_for("Model.generate", sampling)
        return "".join(_texts(self._generate(self.prompt_ids(prompt), max_tokens, stop, sampler, grammar)))

    def create_completion(self, prompt: str | Sequence[int], *, max_tokens: int | None = DEFAULT_MAX_TOKENS,
                          stop: str | Iterable[str] | None = (), stream: bool = False,
                          logprobs: int | None = None, model: str | None = None,
                          grammar: Grammar | str | None = None, **options):
        """llama-cpp-python's create_completion (also `model(prompt, ...)`): an OpenAI-shaped
        text_completion dict, or with stream=True an iterator of chunk dicts (one per piece of
        text, then one with the finish_reason). logprobs=N adds each generated token's
        log-probability and the N most likely tokens at its step; model names the model in the
        result (default: the path or name it was loaded from); grammar as generate(). Sampling
        keywords as generate(); llama-cpp-python's other keywords (echo, suffix, mirostat_mode,
        ...) only at the value that leaves them off."""
        sampler = sampler_for("Model.create_completion",
                              shapes.without_off_options("Model.create_completion", options))
        recorder = shapes.LogprobRecorder(sampler, logprobs) if logprobs is not None else None
        prompt_ids = self.prompt_ids(prompt)
        chunks = self._generate(prompt_ids, max_tokens, stop, recorder or sampler, grammar)
        fmt = None
        if recorder is not None:    # offsets count from the end of the prompt's text
            text = prompt if isinstance(prompt, str) else self.detokenize(prompt_ids)
            fmt = shapes.CompletionLogprobs(self.tokenizer, len(text))
        head = shapes.header("cmpl", model or self.name)
        build = shapes.completion_chunks if stream else shapes.completion
        return build(head, shapes.pieces(chunks, recorder), fmt)

    __call__ = create_completion

    # ------------------------------------------------------------------ chat

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text the chat template makes of `messages` (chat_prompt.ChatPrompt.render)."""
        return self.chat_prompt.render(messages, add_generation_prompt)

    def chat_prompt_ids(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        return self.chat_prompt.ids(messages)

    def stream_chat(self, messages: Sequence[Mapping[str, Any]],
                    max_tokens: int | None = DEFAULT_MAX_TOKENS,
                    stop: str | Iterable[str] | None = (), grammar: Grammar | str | None = None,
                    **sampling) -> Iterator[str]:
        """Yield the assistant's reply to `messages` piece by piece."""
        sampler = sampler_for("Model.stream_chat", sampling)
        return _texts(self._generate(self.chat_prompt_ids(messages), max_tokens, stop, sampler, grammar))

    def chat(self, messages: Sequence[Mapping[str, Any]], max_tokens: int | None = DEFAULT_MAX_TOKENS,
             stop: str | Iterable[str] | None = (), grammar: Grammar | str | None = None, **sampling) -> str:
        """The assistant's reply to `messages` ([{"role": "user", "content": "..."}, ...])."""
        sampler = sampler_for("Model.chat", sampling)
        return "".join(_texts(self._generate(self.chat_prompt_ids(messages), max_tokens, stop, sampler, grammar)))

    def create_chat_completion(self, messages: Sequence[Mapping[str, Any]], *, stream: bool = False,
                               max_tokens: int | None = DEFAULT_MAX_TOKENS,
                               stop: str | Iterable[str] | None = (), logprobs: bool = False,
                               top_logprobs: int | None = None, model: str | None = None,
                               response_format: Mapping[str, Any] | None = None,
                               grammar: Grammar | str | None = None, **options):
        """An OpenAI-shaped chat completion dict, or with stream=True an iterator of chunk dicts
        (first a role delta, then content deltas, then an empty delta with the finish_reason).
        logprobs=True adds each generated token's log-probability, with the top_logprobs most
        likely tokens at its step. response_format as OpenAI's: {"type": "json_object"} (with
        llama-cpp-python's optional "schema") or {"type": "json_schema", "json_schema":
        {"schema": {...}}} makes the reply JSON (valid against the schema). Other keywords as
        create_completion."""
        sampler = sampler_for("Model.create_chat_completion",
                              shapes.without_off_options("Model.create_chat_completion", options))
        if top_logprobs is not None and not logprobs:
            raise ValueError("top_logprobs needs logprobs=True")
        formatted = response_format_grammar(response_format)
        if formatted is not None and grammar is not None:
            raise ValueError("give response_format or grammar, not both")
        recorder = shapes.LogprobRecorder(sampler, top_logprobs or 0) if logprobs else None
        chunks = self._generate(self.chat_prompt_ids(messages), max_tokens, stop, recorder or sampler,
                                formatted or grammar)
        fmt = shapes.ChatLogprobs(self.tokenizer) if recorder else None
        head = shapes.header("chatcmpl", model or self.name)
        build = shapes.chat_completion_chunks if stream else shapes.chat_completion
        return build(head, shapes.pieces(chunks, recorder), fmt)

    def __repr__(self) -> str:
        return f"Model({self.name!r}, n_ctx={self.n_ctx}, n_vocab={self.n_vocab})"


def _texts(chunks: Iterator[GenerationChunk]) -> Iterator[str]:
    for chunk in chunks:
        if chunk.text:
            yield chunk.text
