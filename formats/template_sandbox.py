"""A Jinja2 sandbox for templates written by strangers: no way into Python, and bounded work.

The stock sandbox stops attribute escapes (`''.__class__...`), not resource bombs: a template
`{{ 'A' * 4000000000 }}` asks for 4 GB at once, and nested `range(99999)` loops run for hours.
Here every render runs under a `RenderLimits` budget, and past a limit it stops with
`TemplateLimitError`, one line saying which limit. What is bounded, and where:

- the size of what a template makes (`max_chars`, characters of a string or items of a list):
  `*` on a string or list is checked before it runs (length x count); size arguments are checked
  before the call that they would blow up (widths and counts of `center`, `indent`, `ljust`,
  `zfill`, `batch`, `tojson(indent=)` ..., the growth of `replace`, `join`, `expandtabs`,
  `translate`, format widths in `%`, `str.format` and `|format`); results of `+`, `~`, filters
  and calls are checked after (their inputs were already bounded, so they overshoot by a small
  factor at most); block buffers (macros, `{% set %}` blocks, filter blocks) as they grow; and
  the output as it streams;
- integers: `*` and `**` may not make one of more than MAX_INT_BITS bits;
- work (`max_iterations`): every loop item and every element of a `range()` counts (a range
  counts when it is made, so a range inside a loop is paid for on each pass);
- time (`max_seconds`): a deadline checked at every loop item, call, operator and write.

Attribute access to internals (`__class__`, `__globals__`, ...) raises SecurityError at once
instead of the stock sandbox's silent Undefined.
"""
from __future__ import annotations

import contextvars
import functools
import inspect
import re
import string
import time
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from typing import Any, Callable

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError, TemplateRuntimeError
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment

# The largest integer `*` and `**` may make: templates count and index, they do no bignum maths.
MAX_INT_BITS = 4096


class TemplateLimitError(TemplateRuntimeError):
    """Rendering went past one of its RenderLimits."""


@dataclass(frozen=True)
class RenderLimits:
    max_chars: int = 1 << 20          # the output, and any one string or list made on the way
    max_iterations: int = 1_000_000   # loop items plus range() elements, over the whole render
    max_seconds: float = 5.0          # real templates render in milliseconds
    max_chars_reason: str = ""        # where max_chars comes from, for messages


class _Budget:
    """What one render has used of its limits."""

    def __init__(self, limits: RenderLimits):
        self.limits = limits
        self.deadline = time.monotonic() + limits.max_seconds
        self.iterations = 0

    def tick(self, iterations: int = 0) -> None:
        self.iterations += iterations
        if self.iterations > self.limits.max_iterations:
            raise TemplateLimitError(f"more than {self.limits.max_iterations} loop iterations "
                                     f"and range() elements")
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"rendering took longer than {self.limits.max_seconds:g} s")

    def size(self, n: int, what: str) -> None:
        limits = self.limits
        if n > limits.max_chars:
            reason = f" ({limits.max_chars_reason})" if limits.max_chars_reason else ""
            raise TemplateLimitError(f"{what} would be {n} characters or items long, over the "
                                     f"limit of {limits.max_chars}{reason}")


_BUDGET: contextvars.ContextVar[_Budget] = contextvars.ContextVar("template_render_budget")


def _budget() -> _Budget:
    try:
        return _BUDGET.get()
    except LookupError:
        # Outside render_limited: Jinja's optimizer folding a constant filter call at compile
        # time. Raising makes it leave the call for render time, where it is checked.
        raise RuntimeError("limited templates render through render_limited()") from None


def render_limited(template: jinja2.Template, context: dict[str, Any], limits: RenderLimits) -> str:
    """`template` rendered with `context` under `limits` (TemplateLimitError past one)."""
    budget = _Budget(limits)
    token = _BUDGET.set(budget)
    try:
        parts, length = [], 0
        for part in template.generate(**context):
            length += len(part)
            budget.size(length, "the output")
            budget.tick()
            parts.append(part)
        return "".join(parts)
    finally:
        _BUDGET.reset(token)


# ---- sizes ----------------------------------------------------------------------------------

def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)) else 0


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) else default


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _listed(arguments: dict, name: str) -> list | Any:
    """The argument `name`, an iterator turned into a list (in place) so that it can be measured."""
    value = arguments.get(name)
    if isinstance(value, Iterator):
        value = arguments[name] = list(value)
    return value


def _replaced(s: Any, old: Any, new: Any, count: Any) -> int:
    s, old, new = _str(s), _str(old), _str(new)
    hits = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * max(0, len(new) - len(old))


def _joined(separator: Any, items: Any) -> int:
    if not isinstance(items, Sized):
        return 0
    return _size(separator) * max(0, len(items) - 1) + sum(map(_size, items))


# a printf-style conversion: its width and precision, where `*` takes them from the arguments
_PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d+)?(?:\.(\*|\d+))?")
_BRACE_FORMAT = string.Formatter()


def _int_arguments(args) -> list[int]:
    return [a for a in args if isinstance(a, int)]


def _percent_width(fmt: Any, args: Any) -> int:
    """The widest field a printf-style format (`%`, |format) could pad to: its largest written
    width or precision, or an integer argument where a `*` takes one from them."""
    if not isinstance(fmt, str):
        return 0
    fields = [n for match in _PERCENT_FIELD.finditer(fmt) for n in match.groups() if n]
    widths = [int(n) for n in fields if n != "*"]
    if "*" in fields:
        widths += _int_arguments(args)
    return max(widths, default=0)


def _brace_width(fmt: str, args: Any) -> int:
    """The same for str.format: numbers in the format specs, arguments where a spec nests a field."""
    try:
        specs = [spec for _, _, spec, _ in _BRACE_FORMAT.parse(fmt) if spec]
    except ValueError:
        return 0  # a malformed format string: str.format will say so
    widths = [int(n) for spec in specs for n in re.findall(r"\d+", spec)]
    if any("{" in spec for spec in specs):
        widths += _int_arguments(args)
    return max(widths, default=0)


def _positional(value: Any) -> tuple:
    if isinstance(value, tuple):
        return value
    return tuple(value.values()) if isinstance(value, dict) else (value,)


# str method -> size of its result, from the string and the call's bound arguments
_STR_METHOD_RESULT: dict[str, Callable[[str, dict], int]] = {
    "center": lambda s, a: _int(a["width"]),
    "ljust": lambda s, a: _int(a["width"]),
    "rjust": lambda s, a: _int(a["width"]),
    "zfill": lambda s, a: _int(a["width"]),
    "expandtabs": lambda s, a: len(s) + s.count("\t") * _int(a.get("tabsize"), 8),
    "replace": lambda s, a: _replaced(s, a["old"], a["new"], a.get("count")),
    "join": lambda s, a: _joined(s, _listed(a, "iterable")),
    "translate": lambda s, a: len(s) * max([1, *map(_size, a["table"].values())])
    if isinstance(a["table"], dict) else len(s),
}
# their signatures, taken from str itself: a subclass's (Markup's) wrappers show only *args
_STR_SIGNATURES = {name: inspect.signature(getattr(str, name)) for name in _STR_METHOD_RESULT}

# filter (or global function) -> size of its result, from its bound arguments, defaults applied
_RESULT_SIZE: dict[str, Callable[[dict], int]] = {
    "center": lambda a: _int(a["width"]),
    "indent": lambda a: _size(a["s"]) + (_str(a["s"]).count("\n") + 1)
    * (_size(a["width"]) if isinstance(a["width"], str) else _int(a["width"])),
    "wordwrap": lambda a: _size(a["s"]) * max(1, _size(a["wrapstring"])),
    "batch": lambda a: _int(a["linecount"]),
    "slice": lambda a: _int(a["slices"]),
    "replace": lambda a: _replaced(a["s"], a["old"], a["new"], a["count"]),
    "join": lambda a: _joined(a["d"], _listed(a, "value")),
    "format": lambda a: _percent_width(a["value"], (*a["args"], *a["kwargs"].values())),
    "tojson": lambda a: _int(a["indent"]),
    "lipsum": lambda a: _int(a["n"]) * _int(a["max"]) * 16,  # global: paragraphs x words x chars
}


def _bound(signature: inspect.Signature, args: tuple, kwargs: dict) -> inspect.BoundArguments | None:
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return None  # the call itself will fail with the clearer message
    bound.apply_defaults()
    return bound


def _hidden_leading_arguments(function: Callable) -> int:
    """1 where Jinja passes an argument the signature does not show: its async_variant filters
    (slice, sum, list, ...) show the plain function's signature but take an eval context first."""
    shown = inspect.unwrap(function)
    return int(shown is not function and hasattr(function, "jinja_pass_arg")
               and not hasattr(shown, "jinja_pass_arg"))


def _limited_filter(name: str, function: Callable, label: str = "") -> Callable:
    result_size = _RESULT_SIZE.get(name)
    signature = inspect.signature(function) if result_size else None
    hidden = _hidden_leading_arguments(function)
    label = label or f"the {name} filter's result"

    @functools.wraps(function)  # keeps jinja's pass_context / pass_eval_context marks
    def limited(*args, **kwargs):
        budget = _budget()
        budget.tick()
        if result_size is not None and (bound := _bound(signature, args[hidden:], kwargs)) is not None:
            budget.size(result_size(bound.arguments), label)
            args, kwargs = (*args[:hidden], *bound.args), bound.kwargs
        result = function(*args, **kwargs)
        budget.size(_size(result), label)
        return result

    return limited


def _limited_range(*args: int) -> range:
    budget = _budget()
    numbers = range(*args)
    try:
        length = len(numbers)
    except OverflowError:  # more than sys.maxsize elements
        length = budget.limits.max_iterations + 1
    budget.tick(length)
    return numbers


# ---- binary operators -----------------------------------------------------------------------

def _check_int_bits(bits: int, operator: str) -> None:
    if bits > MAX_INT_BITS:
        raise TemplateLimitError(f"'{operator}' would make an integer of about {bits} bits, "
                                 f"over the limit of {MAX_INT_BITS}")


def _check_multiply(budget: _Budget, left: Any, right: Any) -> None:
    if isinstance(left, int) and isinstance(right, int):
        _check_int_bits(left.bit_length() + right.bit_length(), "*")
    for sequence, count in ((left, right), (right, left)):
        if isinstance(count, int) and _size(sequence):
            budget.size(_size(sequence) * count, "a '*' result")


def _check_power(budget: _Budget, base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        _check_int_bits(exponent * base.bit_length(), "**")


def _check_modulo(budget: _Budget, left: Any, right: Any) -> None:
    if isinstance(left, str):
        budget.size(_percent_width(left, _positional(right)), "a '%' format field's width")


_BINOP_CHECKS: dict[str, Callable[[_Budget, Any, Any], None]] = {
    "*": _check_multiply, "**": _check_power, "%": _check_modulo,
    "+": lambda budget, left, right: None,  # the result is checked: at most twice the limit
}


# ---- the environment ------------------------------------------------------------------------

class _BoundedBuffer(list):
    """The output of a block (macro body, {% set %} block, filter block) as it is written."""

    def __init__(self, budget: _Budget):
        super().__init__()
        self.budget, self.length = budget, 0

    def append(self, part) -> None:
        self._count(_size(part))
        super().append(part)

    def extend(self, parts) -> None:
        parts = tuple(parts)
        self._count(sum(map(_size, parts)))
        super().extend(parts)

    def _count(self, n: int) -> None:
        self.length += n
        self.budget.size(self.length, "a block's output")
        self.budget.tick()


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator with the hooks the limits need: loops iterate through
    `bounded_iter`, `~` results pass `checked_size`, block buffers are _BoundedBuffers."""

    def visit_For(self, node, frame):
        bounded = nodes.Call(nodes.EnvironmentAttribute("bounded_iter"), [node.iter], [],
                             None, None, lineno=node.iter.lineno)
        node.iter = bounded.set_environment(self.environment)
        super().visit_For(node, frame)

    def visit_Concat(self, node, frame):
        self.write("environment.checked_size(")
        super().visit_Concat(node, frame)
        self.write(")")

    def buffer(self, frame):
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.output_buffer()")


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """An immutable sandbox whose templates must render through `render_limited`."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset(_BINOP_CHECKS)

    def __init__(self, **options):
        super().__init__(**options)
        self.globals["range"] = _limited_range
        self.globals["lipsum"] = _limited_filter("lipsum", self.globals["lipsum"], "lipsum()'s result")
        self.filters = {name: _limited_filter(name, f) for name, f in self.filters.items()}

    def add_filter(self, name: str, function: Callable) -> None:
        self.filters[name] = _limited_filter(name, function)

    def unsafe_undefined(self, obj, attribute):
        # The stock sandbox returns an Undefined that only fails when used further, so
        # `{{ x.__class__ }}` would print nothing; a hostile template should fail loudly.
        raise SecurityError(f"access to attribute {attribute!r} of "
                            f"{type(obj).__name__!r} object is unsafe")

    # hooks the generated code calls
    def bounded_iter(self, iterable):
        budget = _budget()
        for item in iterable:
            budget.tick(1)
            yield item

    def checked_size(self, value):
        _budget().size(_size(value), "a '~' result")
        return value

    def output_buffer(self) -> _BoundedBuffer:
        return _BoundedBuffer(_budget())

    # the sandbox's interception points
    def call_binop(self, context, operator, left, right):
        budget = _budget()
        budget.tick()
        _BINOP_CHECKS[operator](budget, left, right)
        result = super().call_binop(context, operator, left, right)
        budget.size(_size(result), f"a '{operator}' result")
        return result

    def call(self, context, obj, /, *args, **kwargs):
        budget = _budget()
        budget.tick()
        if isinstance(obj, LoopContext) and args:  # a recursive loop's next level
            args = (self.bounded_iter(args[0]), *args[1:])
        owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
        if isinstance(owner, str) and name in _STR_METHOD_RESULT \
                and (bound := _bound(_STR_SIGNATURES[name], (owner, *args), kwargs)) is not None:
            budget.size(_STR_METHOD_RESULT[name](owner, bound.arguments), f"the result of str.{name}()")
            args, kwargs = bound.args[1:], bound.kwargs
        result = super().call(context, obj, *args, **kwargs)
        budget.size(_size(result), "a call's result")
        return result

    def wrap_str_format(self, value):
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        fmt = value.__self__

        @functools.wraps(wrapper)
        def limited(*args, **kwargs):
            fields = (*args, *kwargs.values(), *(v for a in args if isinstance(a, dict) for v in a.values()))
            _budget().size(_brace_width(fmt, fields), f"a str.{value.__name__}() field's width")
            return wrapper(*args, **kwargs)

        return limited
