"""A conversation with a Model: the message history, kept within the context window.

Each turn renders the whole history through the chat template; the Model's KV cache already
holds the previous turns (same prefix), so only the new user message is evaluated. When the
history outgrows the context, the oldest turns are dropped while the system prompt stays;
the cache then keeps the system prompt's tokens and re-evaluates the rest once.
"""
from __future__ import annotations

from typing import Any, Iterator

from ..formats.chat_template import ChatTemplateLimitError
from .generate import GenerationChunk, GenerationStats
from .model import DEFAULT_MAX_TOKENS, Model


class ChatSession:
    """Messages [{"role", "content"}] with an optional leading system prompt.

    default_options are generation/sampling keywords used on every turn (a turn's own
    keywords override them).
    """

    def __init__(self, model: Model, system_prompt: str | None = None, **default_options: Any):
        self.model = model
        self.options = default_options
        self.messages: list[dict[str, str]] = []
        # The latest turn's counters and why it ended (None while it runs or if cut short),
        # for front ends that report speed and context use.
        self.last_stats: GenerationStats | None = None
        self.last_finish_reason: str | None = None
        if system_prompt:
            self.messages.append({"role": "system", "content": system_prompt})

    @property
    def has_system_prompt(self) -> bool:
        return bool(self.messages) and self.messages[0]["role"] == "system"

    def send(self, content: str, **options: Any) -> str:
        """Add a user message, return the assistant's reply (also added to the history)."""
        return "".join(self.stream(content, **options))

    def stream(self, content: str, **options: Any) -> Iterator[str]:
        """Like `send`, piece by piece. The reply enters the history when the stream ends or
        is closed (a reply cut short is kept as far as it got)."""
        if not isinstance(content, str):
            raise ValueError(f"a chat message must be a str, got {type(content).__name__}")
        options = {**self.options, **options}
        self.messages.append({"role": "user", "content": content})
        try:
            self.fit_context(reserve=options.get("max_tokens", DEFAULT_MAX_TOKENS) or 0)
            chunks = self.model.stream_generate(self.model.chat_prompt_ids(self.messages), **options)
        except BaseException:
            self.messages.pop()
            raise
        self.last_stats, self.last_finish_reason = None, None
        return self._recorded(chunks)

    def _recorded(self, chunks: Iterator[GenerationChunk]) -> Iterator[str]:
        reply = []
        try:
            for chunk in chunks:
                self.last_stats, self.last_finish_reason = chunk.stats, chunk.finish_reason
                if chunk.text:
                    reply.append(chunk.text)
                    yield chunk.text
        finally:
            self.messages.append({"role": "assistant", "content": "".join(reply)})

    def drop_oldest_turn(self) -> bool:
        """Remove the oldest user message and the replies that followed it, keeping the system
        prompt and the latest user message. False when there is nothing left to drop."""
        first = 1 if self.has_system_prompt else 0
        next_user = next((i for i in range(first + 1, len(self.messages))
                          if self.messages[i]["role"] == "user"), None)
        if next_user is None:
            return False
        del self.messages[first:next_user]
        return True

    def prompt_tokens(self) -> int:
        """Tokens the current history takes once rendered (with the generation prompt)."""
        return len(self.model.chat_prompt_ids(self.messages))

    def fit_context(self, reserve: int) -> int:
        """Drop oldest turns until the history plus `reserve` tokens fits the context.
        Returns how many turns were dropped."""
        dropped = 0
        while not self._fits(reserve) and self.drop_oldest_turn():
            dropped += 1
        return dropped

    def _fits(self, reserve: int) -> bool:
        try:
            return self.prompt_tokens() + reserve <= self.model.n_ctx
        except ChatTemplateLimitError:
            # the rendering outgrew what the context can hold (Model.render_chat's limits)
            return False

    def clear(self) -> None:
        """Forget every turn, keeping the system prompt."""
        del self.messages[1 if self.has_system_prompt else 0:]
