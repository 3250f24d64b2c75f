"""Hostile chat templates: every resource bomb stops with a one-line ChatTemplateLimitError,
early and in bounded memory (the limits of formats/template_sandbox.py), while real templates
render as before (tests/test_chat_template.py)."""
import pytest

from lanternlm.formats.chat_template import (ChatTemplateError, ChatTemplateLimitError,
                                             render_chat)
from lanternlm.formats.template_sandbox import MAX_INT_BITS, RenderLimits
from memory_guard import bounded_memory

MESSAGES = [{"role": "user", "content": "hi"}]
LIMITS = RenderLimits()
# Each bomb would allocate gigabytes (or run for hours) without the limits; a few copies of
# the largest value a template may make (max_chars) are all it may cost.
MEMORY_BOUND = 256 << 20


def render_bomb(template: str, limits: RenderLimits = LIMITS) -> str:
    with bounded_memory(MEMORY_BOUND), pytest.raises(ChatTemplateLimitError) as caught:
        render_chat(template, MESSAGES, render_limits=limits)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("chat template")
    return message


def test_the_reported_string_multiplication_fails_before_allocating():
    message = render_bomb("{{ 'A' * 4000000000 }}")
    assert "'*'" in message and "4000000000" in message and str(LIMITS.max_chars) in message


def test_the_reported_nested_range_loop_stops_at_the_iteration_limit():
    # 99999 x 99999 iterations printing a number each: the output limit stops it
    assert "the output" in render_bomb(
        "{% for i in range(99999) %}{% for j in range(99999) %}{{ j }}{% endfor %}{% endfor %}")
    # the same loops printing nothing: the iteration limit stops them
    assert f"more than {LIMITS.max_iterations} loop iterations" in render_bomb(
        "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}")


@pytest.mark.parametrize("template, what", [
    ("{{ 4000000000 * 'A' }}", "'*'"),
    ("{{ ([1] * 4000000000) | length }}", "'*'"),
    ("{{ range(10 ** 20) | length }}", "range() elements"),
    # loops over something other than range count too
    ("{% set s = 'a' * 2000 %}{% for c in s %}{% for d in s %}{% endfor %}{% endfor %}",
     "loop iterations"),
    # doubling a string 64 times
    ("{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
     "{% endfor %}", "'~'"),
    ("{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
     "{% endfor %}", "'+'"),
    # output gathered in a block before it is printed
    ("{% macro m() %}{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}{% endmacro %}"
     "{% set x = m() %}", "a block's output"),
    ("{% set x %}{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}{% endset %}",
     "a block's output"),
    # arguments that size a result
    ("{{ 'a' | center(10000000000) }}", "center filter"),
    ("{{ 'a'.center(10000000000) }}", "str.center()"),
    ("{{ 'a'.zfill(10000000000) }}", "str.zfill()"),
    ("{{ ('\t' * 100000).expandtabs(100000) }}", "str.expandtabs()"),
    ("{{ ('a\n' * 100000) | indent(100000) }}", "indent filter"),
    ("{{ ('a' * 100000) | replace('a', 'a' * 100000) }}", "replace filter"),
    ("{{ ('a' * 100000).replace('a', 'a' * 100000) }}", "str.replace()"),
    ("{{ ('a' * 100000).join('b' * 100000) }}", "str.join()"),
    ("{{ ('b' * 10000) | map('upper') | join('a' * 10000) }}", "join filter"),
    ("{{ ('a' * 100000).translate({97: 'b' * 100000}) }}", "str.translate()"),
    ("{{ ('a ' * 100000) | wordwrap(1, wrapstring='x' * 100000) }}", "wordwrap filter"),
    ("{{ [1] | batch(1000000000, 0) | list | length }}", "batch filter"),
    ("{{ [1] | slice(1000000000) | list | length }}", "slice filter"),
    ("{{ messages | tojson(indent=1000000000) }}", "tojson filter"),
    ("{{ lipsum(1000000000) }}", "lipsum()"),
    # format widths, written or taken from the arguments
    ("{{ '%1000000000d' % 1 }}", "'%' format field"),
    ("{{ '%*d' % (1000000000, 1) }}", "'%' format field"),
    ("{{ '%1000000000d' | format(1) }}", "format filter"),
    ("{{ '{:>1000000000}'.format(1) }}", "str.format() field"),
    ("{{ '{:>{}}'.format(1, 1000000000) }}", "str.format() field"),
    # integers
    ("{{ 10 ** 1000000000 }}", "'**' would make an integer"),
    ("{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}"
     "{% endfor %}", "'*' would make an integer"),
])
def test_resource_bombs_stop_with_a_one_line_error(template, what):
    assert what in render_bomb(template)


def test_the_limits_are_the_callers():
    # 10 x 10 characters fit in 100 but not in 99; 10 loop passes + 10 range elements fit in 20
    template = "{% for i in range(10) %}{{ 'x' * 10 }}{% endfor %}"
    assert render_chat(template, MESSAGES, render_limits=RenderLimits(max_chars=100)) == "x" * 100
    assert "the output" in render_bomb(template, RenderLimits(max_chars=99))
    assert render_chat(template, MESSAGES, render_limits=RenderLimits(max_iterations=20)) == "x" * 100
    assert "more than 19 loop" in render_bomb(template, RenderLimits(max_iterations=19))
    # a deadline already passed stops the render at its first step
    assert "longer than 0 s" in render_bomb(template, RenderLimits(max_seconds=0))


def test_what_fits_renders_unchanged():
    template = ("{{ 'ab' * 3 }}|{{ [0] * 2 }}|{{ 2 ** 10 }}|{{ 'x' | center(5) }}|{{ '%3d' % 7 }}|"
                "{{ '{:>4}'.format(1) }}|{{ 'a-b'.replace('-', '+') }}|{{ ', '.join(['p', 'q']) }}|"
                "{{ [1, 2, 3] | batch(2) | list }}|{{ 'a' ~ 'b' }}")
    assert render_chat(template, MESSAGES) == ("ababab|[0, 0]|1024|  x  |  7|   1|a+b|p, q|"
                                               "[[1, 2], [3]]|ab")
    # loops keep their semantics through the counting iterator: loop.length / last / revindex /
    # previtem, recursive loops, loop filters and else branches
    loops = ("{% for i in [1, 2, 3] %}{{ loop.length }}{{ loop.last }}{{ loop.revindex }}"
             "{{ loop.previtem }}|{% endfor %}"
             "{% for x in items recursive %}{{ x.n }}{% if x.c %}({{ loop(x.c) }}){% endif %}{% endfor %}"
             "{% for i in range(5) if i is odd %}{{ i }}{% endfor %}{% for i in [] %}{% else %}empty{% endfor %}")
    items = [{"n": 1, "c": [{"n": 2, "c": []}]}, {"n": 3}]
    assert render_chat(loops, MESSAGES, items=items) == "3False3|3False21|3True12|1(2)313empty"
    assert MAX_INT_BITS >= 64  # templates still do ordinary integer arithmetic
    assert render_chat("{{ 2 ** 63 * 3 }}", MESSAGES) == str(2 ** 63 * 3)


def test_runaway_recursion_is_a_one_line_error():
    with pytest.raises(ChatTemplateError, match="RecursionError"):
        render_chat("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", MESSAGES)


def test_a_huge_template_is_refused_before_compiling():
    with pytest.raises(ChatTemplateLimitError, match="characters long"):
        render_chat("x" * (2 << 20), MESSAGES)


# ---- a Model sizes the output limit from its context -------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from lanternlm.runtime.model import Model
    from tiny_llama_gguf import tiny_vocab, write_tiny_model

    path = write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf", "narrow")
    model = Model.load(path, n_ctx=16, threads=1)
    # no token of the vocabulary stands for more characters than its longest text ("<0x00>": 6)
    longest = max(len(t) for t in tiny_vocab()[0])
    assert longest == 6
    return model, 16 * longest


def test_a_model_stops_rendering_past_what_its_context_can_hold(tiny_model):
    model, limit = tiny_model
    template_chars = len(model.render_chat([{"role": "user", "content": ""}]))
    fits = [{"role": "user", "content": "a" * (limit - template_chars)}]
    assert len(model.render_chat(fits)) == limit
    too_long = [{"role": "user", "content": "a" * (limit - template_chars + 1)}]
    with pytest.raises(ChatTemplateLimitError) as caught:
        model.render_chat(too_long)
    assert str(caught.value) == (f"chat template stopped: the output would be {limit + 1} characters or "
                                 f"items long, over the limit of {limit} (more than a context of 16 "
                                 f"tokens can hold)")


def test_a_chat_drops_old_turns_the_template_cannot_render_within_the_context(tiny_model):
    from lanternlm.runtime.chat_session import ChatSession

    model, limit = tiny_model
    session = ChatSession(model)
    turn = "b" * (limit // 3)
    session.messages += [{"role": "user", "content": turn}, {"role": "assistant", "content": turn},
                         {"role": "user", "content": "latest"}]
    with pytest.raises(ChatTemplateLimitError):
        model.render_chat(session.messages)
    assert session.fit_context(reserve=0) == 1
    assert session.messages == [{"role": "user", "content": "latest"}]


def test_markup_strings_are_measured_like_str():
    # |safe makes a Markup, whose methods wrap str's under another signature
    assert "str.center()" in render_bomb("{{ ('a' | safe).center(10000000000) }}")
    assert render_chat("{{ ('a' | safe).center(3) }}", MESSAGES) == " a "


def test_a_templates_own_error_message_stays_on_one_line():
    with pytest.raises(ChatTemplateError) as caught:
        render_chat("{{ raise_exception('first line\\n\\x1b[2Jsecond line') }}", MESSAGES)
    assert str(caught.value) == "chat template error: first line [2Jsecond line"
