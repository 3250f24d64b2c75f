"""Chat templates: the Jinja2 program in `tokenizer.chat_template` turned into a prompt string.

Rendering matches what Hugging Face transformers' `apply_chat_template` does with the same
template: a sandboxed, immutable Jinja2 environment with trim_blocks and lstrip_blocks, the
loop-control extension, the helpers templates call (`raise_exception`, `strftime_now`) and a
`tojson` filter that is plain `json.dumps` (Jinja's own escapes HTML characters and knows no
ensure_ascii). Templates come from model files, i.e. from strangers: the sandbox
(template_sandbox.py) refuses attribute access to internals (`__class__`, `__globals__`, ...),
raising ChatTemplateSecurityError at once instead of rendering an empty string, and bounds what
a render may cost (output size, loop work, time, the size of what `*`, filters and calls make):
past a limit, ChatTemplateLimitError says which.
"""
from __future__ import annotations

import functools
import json
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError

from .metadata import read
from .template_sandbox import LimitedSandbox, RenderLimits, TemplateLimitError, render_limited

# Real chat templates are a few KiB; a huge one is a hostile file, and compiling it costs time.
MAX_TEMPLATE_CHARS = 1 << 20
# The longest token text counted on when sizing a prompt's limit (real vocabularies stay
# below: Qwen2.5's longest token has 128 characters, SmolLM2's 81, Gemma 3's 31).
MAX_TOKEN_CHARS = 256


class ChatTemplateError(ValueError):
    """The template does not compile, fails while rendering, or rejects the conversation."""


class ChatTemplateSecurityError(ChatTemplateError):
    """The template tried to reach Python internals the sandbox forbids."""


class ChatTemplateLimitError(ChatTemplateError):
    """Rendering went past a RenderLimits limit (output size, loop work, time, value size)."""


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (transformers marks assistant text with it for
    training masks); here the block simply renders its body."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message):
    # the template's own words become a one-line error: no line breaks or terminal control
    # characters from a stranger's file
    printable = "".join(c if c.isprintable() else " " for c in str(message))
    raise TemplateError(" ".join(printable.split()))


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@functools.cache
def _environment() -> LimitedSandbox:
    env = LimitedSandbox(trim_blocks=True, lstrip_blocks=True,
                         extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.add_filter("tojson", _tojson)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    try:
        return _environment().from_string(template)
    except TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template syntax error at line {e.lineno}: {e.message}") from e


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "",
                render_limits: RenderLimits = RenderLimits(), **extra) -> str:
    """The prompt `template` makes of `messages` ([{"role": ..., "content": ...}, ...]).

    `extra` reaches the template as further variables (tools=..., documents=..., any custom
    flag); tools and documents default to None as in transformers, so `{% if tools is not
    none %}` behaves the same. `render_limits` bounds the output's length (max_chars), the
    loop work and the time (see template_sandbox.RenderLimits). Raises ChatTemplateError (a
    ValueError) naming the problem; ChatTemplateLimitError past a limit.
    """
    if not isinstance(template, str) or not template:
        raise ChatTemplateError("chat template must be a non-empty string")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise ChatTemplateLimitError(f"chat template is {len(template)} characters long, over the "
                                     f"limit of {MAX_TEMPLATE_CHARS}")
    compiled = _compile(template)
    context = {"tools": None, "documents": None, **extra, "messages": messages,
               "add_generation_prompt": add_generation_prompt,
               "bos_token": bos_token, "eos_token": eos_token}
    try:
        return render_limited(compiled, context, render_limits)
    except TemplateLimitError as e:
        raise ChatTemplateLimitError(f"chat template stopped: {e}") from None
    except SecurityError as e:
        raise ChatTemplateSecurityError(f"chat template blocked by the sandbox: {e}") from e
    except TemplateError as e:
        raise ChatTemplateError(f"chat template error: {e.message or e}") from e
    except (TypeError, ValueError, LookupError, AttributeError, ArithmeticError, RecursionError,
            MemoryError) as e:
        raise ChatTemplateError(f"chat template failed while rendering: "
                                f"{type(e).__name__}: {e}") from e


def prompt_render_limits(n_ctx: int, longest_token_chars: int) -> RenderLimits:
    """Render limits for a prompt that must fit in `n_ctx` tokens: no token stands for more
    characters than its text has, so a rendered prompt longer than n_ctx x the longest token
    text can never fit, and rendering may stop there."""
    return RenderLimits(max_chars=n_ctx * min(max(longest_token_chars, 1), MAX_TOKEN_CHARS),
                        max_chars_reason=f"more than a context of {n_ctx} tokens can hold")


# Used where a GGUF file carries no template. ChatML is llama.cpp's fallback; Gemma models are
# trained on their own turn format, so the Gemma architectures get that one instead.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Gemma turn format: <start_of_turn>user|model ... <end_of_turn>; no system role, so a system
# message opens the first user turn followed by a blank line; turns must alternate.
GEMMA_TEMPLATE = r"""{{- bos_token -}}
{%- if messages and messages[0]['role'] == 'system' -%}
  {%- set preamble = messages[0]['content'] + '\n\n' -%}
  {%- set turns = messages[1:] -%}
{%- else -%}
  {%- set preamble = '' -%}
  {%- set turns = messages -%}
{%- endif -%}
{%- for message in turns -%}
  {%- set expected = 'user' if loop.index0 % 2 == 0 else 'assistant' -%}
  {%- if message['role'] != expected -%}
    {{- raise_exception('Gemma turns must alternate user/assistant starting with user; turn '
                        ~ loop.index ~ ' is ' ~ message['role']) -}}
  {%- endif -%}
  {{- '<start_of_turn>' ~ ('model' if message['role'] == 'assistant' else 'user') ~ '\n' -}}
  {{- preamble if loop.first else '' -}}
  {%- if message['content'] is string -%}
    {{- message['content'] | trim -}}
  {%- else -%}
    {%- for part in message['content'] -%}
      {{- '<start_of_image>' if part['type'] == 'image' else part['text'] | trim -}}
    {%- endfor -%}
  {%- endif -%}
  {{- '<end_of_turn>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<start_of_turn>model\n' -}}
{%- endif -%}
"""

# general.architecture -> built-in template for files without tokenizer.chat_template
BUILTIN_TEMPLATES = {"gemma": GEMMA_TEMPLATE, "gemma2": GEMMA_TEMPLATE, "gemma3": GEMMA_TEMPLATE}


def chat_template_for(kv: dict) -> str:
    """The file's own template, else the built-in one for its architecture, else ChatML."""
    own = read(kv, "tokenizer.chat_template", None)
    if own:
        return own
    return BUILTIN_TEMPLATES.get(read(kv, "general.architecture", None), CHATML_TEMPLATE)
