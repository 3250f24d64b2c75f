"""Chat templates of the catalog models rendered as transformers' apply_chat_template renders
them (expected strings written out by hand from each model's turn format), the helpers HF
templates rely on, and the sandbox refusing hostile templates."""
import datetime

import pytest

from lanternlm.formats.chat_template import (CHATML_TEMPLATE, GEMMA_TEMPLATE, ChatTemplateError,
                                             ChatTemplateSecurityError, chat_template_for,
                                             render_chat)
from lanternlm.formats.gguf import read_gguf
from lanternlm.formats.tokenizer import load_tokenizer

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "2+2?"},
]
CHATML_EXPECTED = ("<|im_start|>system\nYou are terse.<|im_end|>\n"
                   "<|im_start|>user\nHi!<|im_end|>\n"
                   "<|im_start|>assistant\nHello.<|im_end|>\n"
                   "<|im_start|>user\n2+2?<|im_end|>\n"
                   "<|im_start|>assistant\n")
GEMMA_EXPECTED = ("<bos><start_of_turn>user\nYou are terse.\n\nHi!<end_of_turn>\n"
                  "<start_of_turn>model\nHello.<end_of_turn>\n"
                  "<start_of_turn>user\n2+2?<end_of_turn>\n"
                  "<start_of_turn>model\n")
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def metadata(path) -> dict:
    with read_gguf(path) as f:
        return {k: v for k, v in f.kv.items() if k.startswith(("tokenizer.", "general."))}


@pytest.fixture(scope="module")
def smollm2_kv(smollm2_path):
    return metadata(smollm2_path)


@pytest.fixture(scope="module")
def qwen2_kv(qwen2_path):
    return metadata(qwen2_path)


@pytest.fixture(scope="module")
def gemma3_kv(gemma3_path):
    return metadata(gemma3_path)


def test_smollm2_template(smollm2_kv):
    template = chat_template_for(smollm2_kv)
    assert template == smollm2_kv["tokenizer.chat_template"]
    assert render_chat(template, CONVERSATION) == CHATML_EXPECTED
    # without a system message the template supplies its own
    assert render_chat(template, CONVERSATION[1:2], add_generation_prompt=False) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
        "Hugging Face<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n")
    # the rendered prompt tokenizes into the chat control tokens
    tok = load_tokenizer(smollm2_kv)
    ids = tok.encode(render_chat(template, CONVERSATION))
    assert ids.count(tok.token_to_id["<|im_start|>"]) == 5
    assert ids.count(tok.token_to_id["<|im_end|>"]) == 4


def test_qwen2_template(qwen2_kv):
    template = chat_template_for(qwen2_kv)
    assert render_chat(template, CONVERSATION) == CHATML_EXPECTED
    assert render_chat(template, CONVERSATION[1:2]) == (
        f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n")


def test_qwen2_template_with_tools(qwen2_kv):
    tools = [{"type": "function", "function": {
        "name": "get_time", "description": "Current time",
        "parameters": {"type": "object", "properties": {}}}}]
    messages = [
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"function": {"name": "get_time", "arguments": {"tz": "UTC"}}}]},
        {"role": "tool", "content": "12:00"},
    ]
    expected = (
        f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": {"name": "get_time", "description": "Current time", '
        '"parameters": {"type": "object", "properties": {}}}}\n</tools>\n\n'
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nTime?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n12:00\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n")
    assert render_chat(chat_template_for(qwen2_kv), messages, tools=tools) == expected


def test_gemma3_template(gemma3_kv):
    # this GGUF carries no template; the Gemma turn format is the built-in for its architecture
    assert "tokenizer.chat_template" not in gemma3_kv
    template = chat_template_for(gemma3_kv)
    assert template == GEMMA_TEMPLATE
    assert render_chat(template, CONVERSATION, bos_token="<bos>") == GEMMA_EXPECTED
    assert render_chat(template, CONVERSATION[1:3], add_generation_prompt=False) == (
        "<start_of_turn>user\nHi!<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n")
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " Describe "}]}]
    assert render_chat(template, parts) == (
        "<start_of_turn>user\n<start_of_image>Describe<end_of_turn>\n<start_of_turn>model\n")
    with pytest.raises(ChatTemplateError, match="alternate"):
        render_chat(template, [CONVERSATION[2]])
    tok = load_tokenizer(gemma3_kv)
    ids = tok.encode(render_chat(template, CONVERSATION), add_special=True)
    assert ids[0] == tok.bos_id and ids[1] == tok.token_to_id["<start_of_turn>"]


def test_fallback_is_chatml():
    assert chat_template_for({"general.architecture": "llama"}) == CHATML_TEMPLATE
    assert render_chat(CHATML_TEMPLATE, CONVERSATION) == CHATML_EXPECTED


def test_helpers_as_transformers_defines_them():
    template = ("{{ data | tojson }}|{{ data | tojson(indent=2) }}|"
                "{{ 'é<&>' | tojson }}|{{ 'é' | tojson(ensure_ascii=True) }}|"
                "{{ strftime_now('%Y') }}|"
                "{% for i in range(9) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}|"
                "{% generation %}kept{% endgeneration %}|{{ tools is none }}|{{ custom }}")
    out = render_chat(template, [], data={"a": [1]}, custom="flag")
    year = str(datetime.datetime.now().year)
    assert out == ('{"a": [1]}|{\n  "a": [\n    1\n  ]\n}|"é<&>"|"\\u00e9"|' + year
                   + "|012|kept|True|flag")
    # trim_blocks / lstrip_blocks: block lines leave no blank lines or indentation behind
    assert render_chat("{% for m in messages %}\n    {% if m %}\n{{ m['role'] }}\n    {% endif %}\n"
                       "{% endfor %}", CONVERSATION[:2]) == "system\nuser\n"


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__ }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ raise_exception.__globals__ }}",
    "{{ messages.append({'role': 'x'}) }}",
    "{{ messages[0].update(role='x') }}",
])
def test_hostile_templates_are_refused(template):
    with pytest.raises(ChatTemplateSecurityError, match="unsafe"):
        render_chat(template, [dict(m) for m in CONVERSATION])


def test_hostile_template_does_not_execute(tmp_path):
    target = tmp_path / "pwned"
    template = "{{ lipsum.__globals__['os'].system('touch " + str(target) + "') }}"
    with pytest.raises(ChatTemplateSecurityError):
        render_chat(template, CONVERSATION)
    assert not target.exists()


def test_template_errors_are_clear():
    assert issubclass(ChatTemplateError, ValueError)
    with pytest.raises(ChatTemplateError, match="line 2"):
        render_chat("ok\n{% for %}", CONVERSATION)
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        render_chat("{{ raise_exception('roles must alternate') }}", CONVERSATION)
    with pytest.raises(ChatTemplateError, match="TypeError"):
        render_chat("{{ messages[0]['content'] + 1 }}", CONVERSATION)
    with pytest.raises(ChatTemplateError, match="non-empty string"):
        render_chat("", CONVERSATION)
