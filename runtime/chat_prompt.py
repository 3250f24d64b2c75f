"""Chat messages to prompt ids: the model's chat template rendered, then tokenized.

    prompt = ChatPrompt(tokenizer, template, n_ctx)
    prompt.render(messages)   # the text the template makes of [{"role", "content"}, ...]
    prompt.ids(messages)      # its token ids, with one BOS

Shared by Model (chat, create_chat_completion) and the server (/v1/chat/completions).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..formats.chat_template import prompt_render_limits, render_chat


def message_text(content: Any, where: str) -> str:
    """A message's content as text: a string, or OpenAI content parts [{"type": "text", "text":
    ...}, ...] joined by newlines (as llama.cpp's server does for templates that take text)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, Sequence) or isinstance(content, (bytes, bytearray)):
        raise ValueError(f"{where} must be a dict with a string 'role' and a 'content' that is a string "
                         f"or a list of text parts, got content {content!r}")
    texts = []
    for j, part in enumerate(content):
        if not (isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            raise ValueError(f"{where} content part {j}: only {{'type': 'text', 'text': str}} parts "
                             f"are supported, got {kind!r}")
        texts.append(part["text"])
    return "\n".join(texts)


def check_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    checked = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise ValueError(f"messages[{i}] must be a dict with string 'role' and 'content', got {m!r}")
        checked.append({**m, "content": message_text(m.get("content"), f"messages[{i}]")})
    return checked


class ChatPrompt:
    def __init__(self, tokenizer, template: str, n_ctx: int):
        self.tokenizer = tokenizer
        self.template = template
        self.n_ctx = n_ctx

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text the chat template makes of `messages` (a message's content is a string,
        or OpenAI text parts, joined by newlines); rendering stops with ChatTemplateLimitError
        once the text is longer than the context could hold."""
        return render_chat(self.template, check_messages(messages),
                           add_generation_prompt=add_generation_prompt,
                           bos_token=self._special_text(self.tokenizer.bos_id),
                           eos_token=self._special_text(self.tokenizer.eos_id),
                           render_limits=prompt_render_limits(self.n_ctx, self.tokenizer.longest_token_chars))

    def ids(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        ids = list(self.tokenizer.encode(self.render(messages), add_special=True, parse_special=True))
        bos = self.tokenizer.bos_id
        # Templates that write {{ bos_token }} themselves would get a second one from encode.
        if bos is not None and len(ids) >= 2 and ids[0] == ids[1] == bos:
            del ids[0]
        return ids

    def _special_text(self, token: int | None) -> str:
        if token is None or token < 0:
            return ""
        return self.tokenizer.token_to_piece(token).decode("utf-8", errors="replace")
