"""The tools adapter protocol and :class:`ToolBox`, a registry of Python callables.

Two built-in tools come with a default ``ToolBox()``: ``calculator`` (``+ - * /`` and
parentheses on numbers, parsed without ``eval``) and ``clock`` (the current UTC time).
"""

from __future__ import annotations

import ast
import inspect
import json
import operator
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from engine.errors import AdapterError, TransientAdapterError
from engine.messages import ToolResult, ToolSpec

__all__ = ["ToolBox", "Tools", "calculate", "calculator", "clock"]

ToolFn = Callable[..., Any | Awaitable[Any]]


@runtime_checkable
class Tools(Protocol):
    """Tools a model may call.

    ``call`` raises :class:`~engine.errors.AdapterError` for an unknown tool, bad
    arguments or a tool that failed (``TransientAdapterError`` when retrying may help).
    """

    def specs(self) -> Sequence[ToolSpec]:
        """Every tool, as offered to the model."""
        ...

    async def call(self, name: str, arguments: Mapping[str, Any]) -> ToolResult:
        """Run tool ``name`` with ``arguments``."""
        ...


_JSON_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
}
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def _schema(fn: ToolFn) -> dict[str, Any]:
    """A JSON-schema of ``fn``'s keyword-callable parameters, from its annotations."""
    props: dict[str, Any] = {}
    required: list[str] = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            continue
        jtype = _JSON_TYPES.get(p.annotation)
        props[p.name] = {"type": jtype} if jtype else {}
        if p.default is p.empty:
            required.append(p.name)
    return {"type": "object", "properties": props, "required": required}


def _check_arguments(spec: ToolSpec, arguments: Mapping[str, Any]) -> None:
    """Raise AdapterError naming the first unknown, missing or mistyped argument."""
    props: Mapping[str, Any] = spec.parameters.get("properties", {})
    unknown = sorted(set(arguments) - set(props))
    if unknown:
        raise AdapterError("tools", f"tool {spec.name!r} got unknown argument {unknown[0]!r}")
    for name in spec.parameters.get("required", ()):
        if name not in arguments:
            raise AdapterError("tools", f"tool {spec.name!r} needs argument {name!r}")
    for name, value in arguments.items():
        want = _PY_TYPES.get(props[name].get("type", ""))
        if want and (not isinstance(value, want) or (bool not in want and value is True)):
            raise AdapterError(
                "tools",
                f"tool {spec.name!r} argument {name!r} must be "
                f"{props[name]['type']}, not {type(value).__name__}",
            )


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


class ToolBox:
    """Tools backed by Python callables (plain or ``async``), looked up by name.

    ::

        box = ToolBox()                  # calculator and clock
        @box.tool(description="Shout.")
        def shout(text: str) -> str:
            return text.upper()

    Arguments are checked against the callable's signature before it runs; results
    that are not strings are JSON-encoded.  ``builtins=False`` starts empty.
    """

    def __init__(self, *, builtins: bool = True) -> None:
        self._tools: dict[str, tuple[ToolSpec, ToolFn]] = {}
        if builtins:
            self.register(calculator, description="Arithmetic: + - * / and parentheses.")
            self.register(clock, description="The current UTC date and time (ISO 8601).")

    def register(
        self,
        fn: ToolFn,
        *,
        name: str | None = None,
        description: str | None = None,
        replace: bool = False,
    ) -> ToolSpec:
        """Add ``fn`` as a tool; its schema comes from its signature."""
        tool_name = name or fn.__name__
        if tool_name in self._tools and not replace:
            raise ValueError(f"tool {tool_name!r} is already registered (pass replace=True)")
        doc = (inspect.getdoc(fn) or "").strip().splitlines()
        spec = ToolSpec(tool_name, description or (doc[0] if doc else ""), _schema(fn))
        self._tools[tool_name] = (spec, fn)
        return spec

    def tool(
        self, name: str | None = None, *, description: str | None = None
    ) -> Callable[[ToolFn], ToolFn]:
        """Decorator form of :meth:`register`."""

        def deco(fn: ToolFn) -> ToolFn:
            self.register(fn, name=name, description=description)
            return fn

        return deco

    def specs(self) -> Sequence[ToolSpec]:
        """Every registered tool, in registration order."""
        return tuple(spec for spec, _ in self._tools.values())

    async def call(self, name: str, arguments: Mapping[str, Any]) -> ToolResult:
        """Check ``arguments`` and run tool ``name``; see :class:`Tools`."""
        entry = self._tools.get(name)
        if entry is None:
            known = ", ".join(self._tools) or "none"
            raise AdapterError("tools", f"unknown tool {name!r} (known: {known})")
        spec, fn = entry
        _check_arguments(spec, arguments)
        try:
            value = fn(**arguments)
            if inspect.isawaitable(value):
                value = await value
        except AdapterError:
            raise
        except (TimeoutError, ConnectionError) as exc:
            raise TransientAdapterError("tools", f"tool {name!r} failed: {exc}") from exc
        except Exception as exc:
            raise AdapterError("tools", f"tool {name!r} failed: {exc}") from exc
        return ToolResult(name=name, content=_as_text(value))


# --------------------------------------------------------------------------- built-ins

_MAX_EXPRESSION = 200
_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _evaluate(node: ast.AST) -> int | float:
    """Walk only numbers, + - * / and unary signs; anything else is refused."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        number: int | float = node.value  # type: ignore[assignment]  # narrowed by type()
        return number
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))  # type: ignore[no-any-return]
    raise ValueError("only numbers, + - * / and parentheses are allowed")


def calculate(expression: str) -> int | float:
    """The value of an arithmetic ``expression``; ``ValueError`` explains a bad one."""
    if len(expression) > _MAX_EXPRESSION:
        raise ValueError(f"expression longer than {_MAX_EXPRESSION} characters")
    if not expression.strip():
        raise ValueError("empty expression")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError) as exc:
        raise ValueError(f"cannot parse {expression!r}") from exc
    try:
        value = _evaluate(tree)
    except ZeroDivisionError as exc:
        raise ValueError("division by zero") from exc
    except RecursionError as exc:
        raise ValueError("expression nested too deeply") from exc
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def calculator(expression: str) -> str:
    """Arithmetic: + - * / and parentheses on numbers."""
    value = calculate(expression)
    return format(value, ".12g") if isinstance(value, float) else str(value)


def clock() -> str:
    """The current UTC date and time (ISO 8601)."""
    return datetime.now(UTC).isoformat(timespec="seconds")
