"""OpenAI request bodies in, validated generation requests out; OpenAI's error JSON.

`completion_request(body, ...)` and `chat_request(body, ...)` check every field the server
takes and turn the body into a `GenerationRequest` (prompt ids, sampler settings, stop
strings, limits). Anything wrong is an `APIError` naming the parameter, which the app sends as
OpenAI does:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": null}}

Sampling parameters the body leaves out take the server's defaults (`lantern serve`'s
sampling flags, as `lantern run`'s); OpenAI's names map onto the sampler's (sampling.py).
llama.cpp's server extensions top_k, min_p and repeat_penalty are taken too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..runtime.constraints import response_format_grammar

MAX_N = 16              # choices per request
MAX_TOP_LOGPROBS = 20   # as OpenAI


class APIError(Exception):
    """An error answered with OpenAI's error JSON."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind or {400: "invalid_request_error", 401: "invalid_request_error",
                             404: "invalid_request_error", 503: "server_error"}.get(status, "server_error")
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def bad(param: str, message: str) -> APIError:
    return APIError(400, message, param=param)


@dataclass
class GenerationRequest:
    prompts: list[list[int]]            # one or more prompts (completions may batch them)
    sampling: dict[str, Any]            # make_sampler keywords (seed: the first choice's)
    max_tokens: int | None
    n: int = 1
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    n_top: int | None = None            # log-probabilities with this many alternatives; None: none
    grammar: Any = None                 # a constraints.Grammar (chat response_format), or None
    prompt_texts: list[str] | None = None   # completions: each prompt's text (logprob text offsets)


# ---- field readers ----------------------------------------------------------------------------

def _number(body: Mapping, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(name, f"{name} must be a number, got {value!r}")
    if not low <= value <= high:
        raise bad(name, f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return float(value)


def _integer(body: Mapping, name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(name, f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        limit = f"at least {low}" if high is None else f"between {low} and {high}"
        raise bad(name, f"{name} must be {limit}, got {value}")
    return value


def _boolean(body: Mapping, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(name, f"{name} must be true or false, got {value!r}")
    return value


def _stop(body: Mapping) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("stop", f"stop must be a string or a list of strings, got {value!r}")
    return [s for s in stops if s]


def _logit_bias(body: Mapping, n_vocab: int) -> dict[int, float] | None:
    value = body.get("logit_bias")
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise bad("logit_bias", "logit_bias must be an object mapping token ids to biases")
    out = {}
    for key, bias in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise bad("logit_bias", f"logit_bias keys must be token ids, got {key!r}") from None
        if not 0 <= token < n_vocab:
            raise bad("logit_bias", f"logit_bias token {token} is outside the vocabulary [0, {n_vocab})")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise bad("logit_bias", f"logit_bias[{key}] must be a number between -100 and 100, got {bias!r}")
        out[token] = float(bias)
    return out


def _model(body: Mapping, model_name: str) -> None:
    name = body.get("model")
    if name is not None and name != model_name:
        raise APIError(400, f"the model {name!r} does not exist; this server serves {model_name!r}",
                       param="model", code="model_not_found")


def _common(body: Any, model_name: str, n_vocab: int, defaults: Mapping[str, Any]) -> dict:
    if not isinstance(body, Mapping):
        raise bad(None, "the request body must be a JSON object")
    _model(body, model_name)
    for name in ("echo", "suffix", "tools", "functions"):
        if body.get(name):
            raise bad(name, f"{name} is not supported by this server")
    if (body.get("best_of") or 1) != 1:
        raise bad("best_of", "best_of is not supported by this server (use n)")
    max_tokens = _integer(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1)
    sampling = dict(defaults)
    for openai_name, name, low, high in (("temperature", "temperature", 0.0, 2.0), ("top_p", "top_p", 0.0, 1.0),
                                         ("presence_penalty", "presence_penalty", -2.0, 2.0),
                                         ("frequency_penalty", "frequency_penalty", -2.0, 2.0),
                                         ("min_p", "min_p", 0.0, 1.0), ("repeat_penalty", "repeat_penalty", 0.0, 10.0)):
        value = _number(body, openai_name, low, high)
        if value is not None:
            sampling[name] = value
    if sampling.get("repeat_penalty", 1.0) <= 0:
        raise bad("repeat_penalty", "repeat_penalty must be > 0")
    top_k = _integer(body, "top_k", 0)
    if top_k is not None:
        sampling["top_k"] = top_k
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise bad("seed", f"seed must be an integer, got {seed!r}")
        sampling["seed"] = seed
    bias = _logit_bias(body, n_vocab)
    if bias:
        sampling["logit_bias"] = bias
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, Mapping):
        raise bad("stream_options", "stream_options must be an object")
    if options and not stream:
        raise bad("stream_options", "stream_options is only allowed with stream: true")
    include_usage = _boolean(options or {}, "include_usage")
    n = _integer(body, "n", 1, MAX_N) or 1
    return {"sampling": sampling, "max_tokens": max_tokens, "n": n, "stop": _stop(body), "stream": stream,
            "include_usage": include_usage}


# ---- the two endpoints ------------------------------------------------------------------------

def completion_request(body: Any, tokenizer, model_name: str, defaults: Mapping[str, Any]) -> GenerationRequest:
    common = _common(body, model_name, tokenizer.n_vocab, defaults)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        texts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        texts = list(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        texts = None
        prompts = [list(prompt)]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, list) and p for p in prompt):
        texts = None
        prompts = [list(p) for p in prompt]
    else:
        raise bad("prompt", "prompt must be a non-empty string, list of strings, list of token ids, or list of "
                            "lists of token ids")
    if texts is not None:
        prompts = [list(tokenizer.encode(t, add_special=True, parse_special=True)) for t in texts]
    else:
        texts = [tokenizer.decode(p) for p in prompts]
    n_top = _integer(body, "logprobs", 0, MAX_TOP_LOGPROBS)
    return GenerationRequest(prompts=prompts, n_top=n_top, prompt_texts=texts, **common)


def chat_request(body: Any, chat_prompt, model_name: str, defaults: Mapping[str, Any]) -> GenerationRequest:
    common = _common(body, model_name, chat_prompt.tokenizer.n_vocab, defaults)
    messages = body.get("messages")
    try:
        ids = chat_prompt.ids(messages)
    except ValueError as exc:
        raise bad("messages", str(exc)) from None
    n_top = None
    if _boolean(body, "logprobs"):
        n_top = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS) or 0
    elif body.get("top_logprobs") is not None:
        raise bad("top_logprobs", "top_logprobs needs logprobs: true")
    try:
        grammar = response_format_grammar(body.get("response_format"))
    except ValueError as exc:
        raise bad("response_format", str(exc)) from None
    return GenerationRequest(prompts=[ids], n_top=n_top, grammar=grammar, **common)
