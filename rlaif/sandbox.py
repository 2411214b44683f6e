"""The jinja2 sandbox every template renders in: no code, and bounded memory and time.

jinja2's `ImmutableSandboxedEnvironment` already refuses unsafe attributes
(`__globals__`, `__class__`, ...) and methods that mutate lists or dicts, and
caps `range()`. On top of it, each rendering (one `budget()` block) gets:

* a size cap, `MAX_SIZE`, on every string, list or number an expression builds:
  `*`, `**`, `+`, `%`, `~`, filters (`join`, `replace`, `indent`, `center`,
  `wordwrap`, `format`, ...) and method calls (`str.center`, `str.join`, ...)
  are estimated *before* they run, and their results checked after;
* a loop budget, `MAX_ITERATIONS` items over all `for` loops, and a clock,
  `MAX_SECONDS`, checked at every loop step and guarded call;
* no `lipsum()` (it builds text of any size), no `include` or `import` (no loader).

Anything beyond the caps raises `SecurityError`, which `Template.render` turns
into a one-line error. The caps are far above what a prompt needs: a record's
texts may hold 2,000,000 characters (rlaif.limits.MAX_RECORD_CHARS).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

MAX_SIZE = 4_000_000  # characters of a string, items (deep) of a list
MAX_INT_BITS = 4096  # of a number (Python prints at most 4300 digits)
MAX_ITERATIONS = 100_000
MAX_SECONDS = 10.0
_HUGE_NUMBER = re.compile(r"\d{7,}")  # a width or precision of a million or more, in a format string
_NESTED_FIELD = re.compile(r"\{[^{}]*\{")  # "{:{}}": the width comes from an argument
_SIZED = frozenset({"center", "indent", "wordwrap", "batch", "slice", "truncate", "ljust", "rjust", "zfill",
                    "expandtabs"})  # filters and str methods whose numbers are sizes


@dataclass
class _Budget:
    iterations: int
    deadline: float


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("rlaif_template_budget", default=None)


@contextlib.contextmanager
def budget() -> Iterator[None]:
    """One rendering's loop budget and clock."""
    token = _BUDGET.set(_Budget(MAX_ITERATIONS, time.monotonic() + MAX_SECONDS))
    try:
        yield
    finally:
        _BUDGET.reset(token)


def _tick(steps: int = 1) -> None:
    state = _BUDGET.get()
    if state is None:
        return
    state.iterations -= steps
    if state.iterations < 0:
        raise SecurityError(f"the template loops more than {MAX_ITERATIONS:,} times")
    if time.monotonic() > state.deadline:
        raise SecurityError(f"the template ran for more than {MAX_SECONDS:.0f} s")


def measure(value: Any, limit: int = MAX_SIZE) -> int:
    """The size of a value: characters of text, bits of a number, items of containers (their contents too).

    Stops counting once past `limit`, so measuring is cheap whatever the value.
    """
    total, stack, seen = 0, [value], set()
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, bool) or item is None:
            total += 1
        elif isinstance(item, int):
            total += max(1, item.bit_length() // 8)
        elif isinstance(item, (list, tuple, set, frozenset, dict)):
            if id(item) in seen:
                continue
            seen.add(id(item))
            total += len(item)
            stack.extend(item.items() if isinstance(item, dict) else item)
        else:
            total += 1
    return total


def _refuse_if_big(size: int, what: str) -> None:
    if size > MAX_SIZE:
        raise SecurityError(f"{what} would be larger than {MAX_SIZE:,}")


def _check_sizes(name: str, args: Iterable[Any], what: str = "") -> None:
    """Counts and widths (`center(10**9)`, `indent(...)`) may not pass MAX_SIZE; other numbers are just values."""
    if name in _SIZED:
        for arg in args:
            if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_SIZE:
                raise SecurityError(f"{what or name + '()'} asks for a size of {arg}, more than {MAX_SIZE:,}")


def _check_format(fmt: Any, args: Iterable[Any]) -> None:
    """A %- or {}-format may not ask for a width of a million or more, written in it or passed as `*` / `{}`."""
    if not isinstance(fmt, str):
        return
    if _HUGE_NUMBER.search(fmt):
        raise SecurityError("a format with a width of a million or more")
    if "*" in fmt or _NESTED_FIELD.search(fmt):
        _check_sizes("center", args, "a format's width")


def _estimate(name: str, value: Any, args: tuple, kwargs: dict) -> int:
    """An upper bound of a filter's or str method's result, from its arguments, before it runs (0: no bound needed)."""
    text = value if isinstance(value, str) else ""
    values = (*args, *kwargs.values())
    numbers = [a for a in values if isinstance(a, int) and not isinstance(a, bool)]
    strings = [len(a) for a in values if isinstance(a, str)]
    if name == "join":
        items = args[0] if isinstance(value, str) and args else value
        sep = len(text) if isinstance(value, str) else max(strings + [0])
        return measure(items) + sep * (len(items) if hasattr(items, "__len__") else MAX_SIZE)
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        return len(text) + (text.count(args[0]) if args[0] else len(text) + 1) * len(args[1])
    if name in ("indent", "wordwrap"):
        return len(text) * (1 + max(strings + numbers + [0]))
    if name in ("center", "ljust", "rjust", "zfill"):
        return len(text) + max(numbers + [0])
    if name == "expandtabs":
        return len(text) + text.count("\t") * max(numbers + [8])
    return 0


def guarded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that refuses huge arguments or results (jinja's pass-context mark is kept by `wraps`)."""
    passes = getattr(func, "jinja_pass_arg", None) is not None  # then the first argument is a context

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _tick(0)
        plain = args[1:] if passes else args
        value, rest = (plain[0], tuple(plain[1:])) if plain else (None, ())
        _check_sizes(name, (*rest, *kwargs.values()))
        if name == "format":
            _check_format(value, (*rest, *kwargs.values()))
        _refuse_if_big(_estimate(name, value, rest, kwargs), f"the result of |{name}")
        result = func(*args, **kwargs)
        _refuse_if_big(measure(result), f"the result of |{name}")
        return result

    return wrapper


def counted(iterable: Any) -> Any:
    """A `for` loop's items, counted against the rendering's loop budget."""
    if hasattr(iterable, "__len__"):
        _tick(len(iterable))
        return iterable
    return _counting(iterable)


def _counting(iterable: Iterable[Any]) -> Iterator[Any]:
    for item in iterable:
        _tick()
        yield item


def concat(*parts: Any) -> str:
    """`a ~ b ~ c`, refused before joining when the result would be too long."""
    texts = [str(part) for part in parts]
    _refuse_if_big(sum(len(t) for t in texts), "the joined text (~)")
    return "".join(texts)


class _Rewriter(NodeTransformer):
    """Route every `for` loop through `counted` and every `~` through `concat` (compiled in, not a global)."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        node = self.generic_visit(node)
        node.iter = nodes.Call(nodes.ImportedName("rlaif.sandbox.counted"), [node.iter], [], None, None,
                               lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        node = self.generic_visit(node)
        return nodes.Call(nodes.ImportedName("rlaif.sandbox.concat"), list(node.nodes), [], None, None,
                          lineno=node.lineno)


class Sandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox with size caps, a loop budget and a clock (see the module doc)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.globals.pop("lipsum", None)
        self.filters = {name: guarded_filter(name, func) for name, func in self.filters.items()}

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        return _Rewriter().visit(super()._parse(source, name, filename))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick(0)
        if operator == "**" and isinstance(right, (int, float)) and not isinstance(right, bool):
            if abs(right) > 64 or (isinstance(left, int) and left.bit_length() * abs(right) > MAX_INT_BITS):
                raise SecurityError(f"the power ** {right} is too large for a template")
        elif operator == "*":
            _refuse_if_big(_product(left, right), "the repeated string, list or number")
        elif operator == "+":
            _refuse_if_big(measure(left) + measure(right), "the sum")
        elif operator == "%":
            _check_format(left, right if isinstance(right, tuple) else [right])
        result = super().call_binop(context, operator, left, right)
        _refuse_if_big(measure(result), f"the result of {operator}")
        if isinstance(result, int) and result.bit_length() > MAX_INT_BITS:
            raise SecurityError(f"the result of {operator} is a number of more than {MAX_INT_BITS} bits")
        return result

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _tick(0)
        name = getattr(__obj, "__name__", "")
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            _check_sizes(name, (*args, *kwargs.values()))
            _refuse_if_big(_estimate(name, owner, args, kwargs), f"the result of .{name}()")
        if hasattr(__obj, "rlaif_format"):
            _check_format(__obj.rlaif_format, (*args, *kwargs.values()))
        result = super().call(__context, __obj, *args, **kwargs)
        _refuse_if_big(measure(result), f"the result of {name or 'a call'}()")
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            wrapped.rlaif_format = value.__self__  # type: ignore[attr-defined]  # checked with its arguments
        return wrapped


def _product(left: Any, right: Any) -> int:
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
            return measure(seq) * max(times, 0)
    if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
        return MAX_SIZE + 1  # a number too large to print
    return 0
