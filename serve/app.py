"""The OpenAI-compatible HTTP face of the serving engine (runtime/serving_engine.py), on Starlette.

    app = create_app("smollm2-135m-instruct", parallel=8, kv_memory="256MB", api_key=None)
    uvicorn.run(app, host="127.0.0.1", port=8080)        # what `lantern serve` does

Routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (streaming as
server-sent events, or whole), POST /tokenize, POST /detokenize, GET /health, GET /metrics.
Handlers never call kernels: they validate the body (protocol.py), submit sequences to the
engine and read its events from an asyncio queue per choice, which the engine thread fills
through loop.call_soon_threadsafe. A client that disconnects has its sequences cancelled at
once. With an API key, every route but /health needs `Authorization: Bearer KEY`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..runtime import openai_shapes as shapes
from ..runtime.constraints import constrain
from ..runtime.generate import TextStream
from ..runtime.openai_shapes import TokenLogprob
from ..runtime.sampling import make_sampler
from ..runtime.serving_engine import (Choice, End, Failure, PromptError, QueueFullError, ServingEngine,
                                      Token)
from .metrics import ServerMetrics
from .protocol import APIError, GenerationRequest, chat_request, completion_request

# Sampling defaults when neither the request nor `lantern serve`'s flags set them (run's).
DEFAULT_SAMPLING = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05}

DEFAULT_CTX = 4096   # a sequence's context when none is given (at most the model's training context)

# How often a non-streaming handler checks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.2


class EngineFailure(Exception):
    """The engine failed a sequence (a kernel or sampler error)."""


@dataclass
class Piece:
    text: str
    logprobs: list[TokenLogprob]
    finish_reason: str | None


@dataclass(eq=False)
class ChoiceStream:
    """One choice of a request: the engine's events for its sequence, turned into text pieces."""

    index: int
    texts: TextStream
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    tokens: int = 0
    seq: Any = None

    def emit(self, event) -> None:        # on the engine thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def pieces(self, engine: ServingEngine) -> AsyncIterator[Piece]:
        """Text pieces (never empty but the last) with the log-probabilities of the tokens they
        complete; the last one carries the finish reason. A stop string cancels the sequence."""
        pending: list[TokenLogprob] = []
        while True:
            event = await self.queue.get()
            if isinstance(event, Token):
                self.tokens += 1
                if event.logprob is not None:
                    pending.append(event.logprob)
                text, stopped = self.texts.add(event.token)
                if stopped:
                    engine.cancel(self.seq)
                    yield Piece(text, pending, "stop")
                    return
                if text:
                    yield Piece(text, pending, None)
                    pending = []
            elif isinstance(event, End):
                text, stopped = self.texts.close()
                yield Piece(text, pending, "stop" if stopped else event.reason)
                return
            elif isinstance(event, Failure):
                raise EngineFailure(event.message)


class Server:
    """What the routes share: the engine, the model's tokenizer and chat prompt, the settings."""

    def __init__(self, engine: ServingEngine, name: str, chat_prompt, sampling: Mapping[str, Any],
                 api_key: str | None, metrics: ServerMetrics, max_tokens: int | None = None):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.chat_prompt = chat_prompt
        self.name = name
        self.sampling = {**DEFAULT_SAMPLING, **sampling}
        self.api_key = api_key
        self.metrics = metrics
        self.max_tokens = max_tokens        # for requests that set none (None: until the context is full)
        self.created = int(time.time())

    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or key.strip() != self.api_key:
            raise APIError(401, "a missing or wrong API key (send Authorization: Bearer KEY)",
                           code="invalid_api_key")

    # ---- generation ---------------------------------------------------------------------------
    def start(self, req: GenerationRequest) -> list[ChoiceStream]:
        """Submit every choice of every prompt; 400 / 503 before anything runs."""
        loop = asyncio.get_running_loop()
        streams: list[ChoiceStream] = []
        try:
            for p, prompt in enumerate(req.prompts):
                batch, choices = [], []
                for j in range(req.n):
                    sampling = dict(req.sampling)
                    if sampling.get("seed") is not None:
                        sampling["seed"] += j         # n choices with one seed must still differ
                    sampler = constrain(make_sampler(**sampling), req.grammar, self.tokenizer)
                    stream = ChoiceStream(p * req.n + j, TextStream(self.tokenizer, req.stop), loop)
                    batch.append(stream)
                    choices.append(Choice(sampler, stream.emit, req.n_top))
                seqs = self.engine.submit(prompt, choices, req.max_tokens or self.max_tokens)
                for stream, seq in zip(batch, seqs):
                    stream.seq = seq
                streams.extend(batch)
        except PromptError as exc:
            self.cancel(streams)
            raise APIError(400, str(exc), param="prompt" if req.prompt_texts is not None else "messages",
                           code="context_length_exceeded" if "context" in str(exc) else None) from None
        except QueueFullError as exc:
            self.cancel(streams)
            raise APIError(503, f"the server is busy: {exc}; retry later", code="queue_full") from None
        return streams

    def cancel(self, streams: list[ChoiceStream]) -> None:
        for stream in streams:
            if stream.seq is not None:
                self.engine.cancel(stream.seq)

    def usage(self, req: GenerationRequest, streams: list[ChoiceStream]) -> dict[str, int]:
        prompt = sum(len(p) for p in req.prompts)
        completion = sum(s.tokens for s in streams)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# ---- responses --------------------------------------------------------------------------------

def _logprob_formatter(server: Server, req: GenerationRequest, chat: bool, stream: ChoiceStream):
    if req.n_top is None:
        return None
    if chat:
        return shapes.ChatLogprobs(server.tokenizer)
    return shapes.CompletionLogprobs(server.tokenizer, len(req.prompt_texts[stream.index // req.n]))


async def _collect(server: Server, stream: ChoiceStream, fmt, chat: bool) -> dict:
    texts, entries, reason = [], [], None
    async for piece in stream.pieces(server.engine):
        texts.append(piece.text)
        entries.extend(piece.logprobs)
        reason = piece.finish_reason
    logprobs = fmt(entries) if fmt is not None else None
    text = "".join(texts)
    if chat:
        return {"index": stream.index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                "finish_reason": reason}
    return {"text": text, "index": stream.index, "logprobs": logprobs, "finish_reason": reason}


async def _whole(server: Server, request: Request, req: GenerationRequest, chat: bool) -> JSONResponse:
    streams = server.start(req)
    head = shapes.header("chatcmpl" if chat else "cmpl", server.name)
    gathered = asyncio.ensure_future(asyncio.gather(
        *(_collect(server, s, _logprob_formatter(server, req, chat, s), chat) for s in streams)))
    try:
        while not gathered.done():
            await asyncio.wait({gathered}, timeout=DISCONNECT_POLL_SECONDS)
            if not gathered.done() and await request.is_disconnected():
                gathered.cancel()
                server.cancel(streams)
                return JSONResponse({}, status_code=499)
        choices = gathered.result()
    except EngineFailure as exc:
        server.cancel(streams)
        raise APIError(500, str(exc)) from None
    finally:
        if not gathered.done():
            gathered.cancel()
            server.cancel(streams)
    body = {"id": head["id"], "object": "chat.completion" if chat else "text_completion",
            "created": head["created"], "model": head["model"], "choices": list(choices),
            "usage": server.usage(req, streams)}
    return JSONResponse(body)


async def _events(server: Server, req: GenerationRequest, streams: list[ChoiceStream], chat: bool):
    """The stream's server-sent events: chunks of every choice as they come, the usage chunk if
    asked, then [DONE]. Cancelled (the client went away): every sequence is cancelled."""
    head = shapes.header("chatcmpl" if chat else "cmpl", server.name)
    kind = "chat.completion.chunk" if chat else "text_completion"
    merged: asyncio.Queue = asyncio.Queue()

    def chunk(choice: dict) -> str:
        return json.dumps({"id": head["id"], "object": kind, "created": head["created"], "model": head["model"],
                           "choices": [choice]})

    async def pump(stream: ChoiceStream) -> None:
        fmt = _logprob_formatter(server, req, chat, stream)
        try:
            async for piece in stream.pieces(server.engine):
                await merged.put((stream, piece, fmt))
        except EngineFailure as exc:
            await merged.put((stream, exc, None))
        finally:
            await merged.put((stream, None, None))

    tasks = [asyncio.ensure_future(pump(s)) for s in streams]
    try:
        if chat:
            for s in streams:
                yield {"data": chunk({"index": s.index, "delta": {"role": "assistant", "content": ""},
                                      "logprobs": None, "finish_reason": None})}
        open_streams = len(streams)
        while open_streams:
            stream, piece, fmt = await merged.get()
            if piece is None:
                open_streams -= 1
                continue
            if isinstance(piece, EngineFailure):
                yield {"data": json.dumps(APIError(500, str(piece)).body())}
                return
            logprobs = fmt(piece.logprobs) if fmt is not None and piece.logprobs else None
            if chat:
                if piece.text:
                    yield {"data": chunk({"index": stream.index, "delta": {"content": piece.text},
                                          "logprobs": logprobs, "finish_reason": None})}
                    logprobs = None
                if piece.finish_reason is not None:
                    yield {"data": chunk({"index": stream.index, "delta": {}, "logprobs": logprobs,
                                          "finish_reason": piece.finish_reason})}
            else:
                yield {"data": chunk({"text": piece.text, "index": stream.index, "logprobs": logprobs,
                                      "finish_reason": piece.finish_reason})}
        if req.include_usage:
            yield {"data": json.dumps({"id": head["id"], "object": kind, "created": head["created"],
                                       "model": head["model"], "choices": [], "usage": server.usage(req, streams)})}
        yield {"data": "[DONE]"}
    finally:
        for task in tasks:
            task.cancel()
        server.cancel(streams)


async def _generate(server: Server, request: Request, req: GenerationRequest, chat: bool) -> Response:
    if not req.stream:
        return await _whole(server, request, req, chat)
    streams = server.start(req)       # 400 / 503 as a status, before the stream opens
    return EventSourceResponse(_events(server, req, streams, chat), sep="\n")


# ---- routes -----------------------------------------------------------------------------------

async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}") from None


def _route(server: Server, endpoint: str, handler, authorize: bool = True):
    async def handle(request: Request) -> Response:
        try:
            if authorize:
                server.authorize(request)
            response = await handler(request)
        except APIError as exc:
            response = JSONResponse(exc.body(), status_code=exc.status)
        except Exception as exc:   # a bug: OpenAI's error JSON all the same, and the server goes on
            logging.getLogger("lanternlm.serve").exception("request to %s failed", endpoint)
            response = JSONResponse(APIError(500, f"{type(exc).__name__}: {exc}").body(), status_code=500)
        server.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        return response
    return handle


def build_routes(server: Server) -> list[Route]:
    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{
            "id": server.name, "object": "model", "created": server.created, "owned_by": "lanternlm",
            "meta": {"n_ctx": server.engine.n_ctx, "n_vocab": server.engine.n_vocab}}]})

    async def completions(request: Request) -> Response:
        req = completion_request(await _json(request), server.tokenizer, server.name, server.sampling)
        return await _generate(server, request, req, chat=False)

    async def chat(request: Request) -> Response:
        req = chat_request(await _json(request), server.chat_prompt, server.name, server.sampling)
        return await _generate(server, request, req, chat=True)

    async def tokenize(request: Request) -> Response:
        body = await _json(request)
        content = body.get("content") if isinstance(body, Mapping) else None
        if not isinstance(content, str):
            raise APIError(400, "content must be a string", param="content")
        add_special = body.get("add_special", True)
        parse_special = body.get("parse_special", True)
        if not isinstance(add_special, bool) or not isinstance(parse_special, bool):
            raise APIError(400, "add_special and parse_special must be true or false")
        ids = server.tokenizer.encode(content, add_special=add_special, parse_special=parse_special)
        return JSONResponse({"tokens": [int(t) for t in ids]})

    async def detokenize(request: Request) -> Response:
        body = await _json(request)
        tokens = body.get("tokens") if isinstance(body, Mapping) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise APIError(400, "tokens must be a list of token ids", param="tokens")
        bad = [t for t in tokens if not 0 <= t < server.tokenizer.n_vocab]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary", param="tokens")
        return JSONResponse({"content": server.tokenizer.decode(tokens)})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        return Response(server.metrics.text(), media_type=server.metrics.content_type)

    table = [("/v1/models", "models", models, ["GET"]), ("/v1/completions", "completions", completions, ["POST"]),
             ("/v1/chat/completions", "chat", chat, ["POST"]), ("/tokenize", "tokenize", tokenize, ["POST"]),
             ("/detokenize", "detokenize", detokenize, ["POST"]), ("/metrics", "metrics", metrics, ["GET"])]
    routes = [Route(path, _route(server, name, fn), methods=methods) for path, name, fn, methods in table]
    routes.append(Route("/health", _route(server, "health", health, authorize=False), methods=["GET"]))
    return routes


def create_app(model: str | os.PathLike | ServingEngine, *, name: str | None = None, n_ctx: int | None = None,
               kv_memory: int | str = "256MB", parallel: int = 8, batch_tokens: int = 128, queue_size: int = 64,
               threads: int | None = None, api_key: str | None = None, chat_template: str | None = None,
               cache_type_k: str = "f16", cache_type_v: str = "f16", sampling: Mapping[str, Any] | None = None,
               max_tokens: int | None = None) -> Starlette:
    """The ASGI app serving `model` (a GGUF path or catalog name; or a ServingEngine not yet
    started). The engine's thread starts with the app and stops with its lifespan.

    n_ctx: most tokens one sequence holds (None: the model's training context, at most 4096);
    kv_memory: bytes (or '256MB') of the KV pool all sequences share; parallel: sequences
    generated at once; batch_tokens: tokens one step computes at most; queue_size: requests
    waiting before 503; sampling / max_tokens: defaults for what requests leave out
    (make_sampler keywords; None: until the context is full). The engine's thread starts here
    and compiles (or loads) its kernels before this returns."""
    from ..formats.catalog import resolve
    from ..formats.chat_template import chat_template_for
    from ..formats.gguf import read_gguf
    from ..runtime.chat_prompt import ChatPrompt
    from ..offload.budget import parse_size

    metrics = ServerMetrics()
    if isinstance(model, ServingEngine):
        engine = model
        engine.observer = metrics
        name = name or "lanternlm"
    else:
        gguf_file = read_gguf(resolve(model))
        memory = parse_size(kv_memory, "KV memory")
        if n_ctx is None:
            from ..runtime.config import ModelConfig
            n_ctx = min(DEFAULT_CTX, ModelConfig.from_kv(gguf_file.kv).n_ctx_train)
        engine = ServingEngine(gguf_file, n_ctx=n_ctx, kv_memory=memory, parallel=parallel,
                               token_budget=batch_tokens, queue_size=queue_size, threads=threads,
                               cache_type_k=cache_type_k, cache_type_v=cache_type_v, observer=metrics)
        name = name or os.path.basename(str(model)).removesuffix(".gguf")
    template = chat_template or chat_template_for(engine.gguf_kv)
    metrics.watch(engine)
    server = Server(engine, name, ChatPrompt(engine.tokenizer, template, engine.n_ctx), sampling or {}, api_key,
                    metrics, max_tokens)

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, engine.close)

    app = Starlette(routes=build_routes(server), lifespan=lifespan)
    app.state.server = server
    app.state.engine = engine
    engine.start()      # now, so that the kernels are ready and load errors surface here
    return app
