"""Rendering a tree from ``gotemplate.py`` with Go's semantics: truth, ``and``/``or`` returning an
argument, variables scoped to their block (``=`` sets where ``:=`` declared), ``range`` and ``with``
moving the dot."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dragoman.gateway.gotemplate import (
    Assign,
    Expr,
    Field,
    If,
    Literal,
    Node,
    Print,
    TemplateError,
    Text,
    With,
)


def _truth(value: Any) -> bool:
    """Go's truth: false, 0, nil and empty strings, lists and maps are false."""
    return bool(value)


def _eq(first: Any, *others: Any) -> bool:
    return any(first == other for other in others)


def _slice(value: Sequence[Any], *bounds: int) -> Sequence[Any]:
    if len(bounds) > 2:
        raise TemplateError("slice takes at most two indexes")
    start = bounds[0] if bounds else 0
    end = bounds[1] if len(bounds) > 1 else len(value)
    return value[start:end]


FUNCTIONS: dict[str, Callable[..., Any]] = {  # FUNCTION_NAMES but ``and`` and ``or``
    "eq": _eq, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b, "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b, "not": lambda a: not _truth(a), "len": len,
    "index": lambda value, *keys: _index(value, keys), "slice": _slice,
    "json": lambda value: json.dumps(value, separators=(",", ":")),  # Ollama's own addition
}


def _index(value: Any, keys: tuple[Any, ...]) -> Any:
    for key in keys:
        value = value[key]
    return value


def render(tree: list[Node], data: Mapping[str, Any]) -> str:
    out: list[str] = []
    _run(tree, data, Scope({"$": data}), out)
    return "".join(out)


class Scope:
    """Variables of one block, over those of the blocks around it (Go's scoping)."""

    __slots__ = ("names", "parent")

    def __init__(self, names: dict[str, Any], parent: Scope | None = None) -> None:
        self.names, self.parent = names, parent

    def get(self, name: str) -> Any:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.names:
                return scope.names[name]
            scope = scope.parent
        raise TemplateError(f"undefined variable {name}")

    def assign(self, name: str, value: Any) -> None:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.names:
                scope.names[name] = value
                return
            scope = scope.parent
        raise TemplateError(f"undefined variable {name}")


def _run(nodes: list[Node], dot: Any, outer: Scope, out: list[str]) -> None:
    scope = Scope({}, outer)  # a block's variables end with it
    for node in nodes:
        if isinstance(node, Text):
            out.append(node.text)
        elif isinstance(node, Print):
            out.append(_text(_eval(node.expr, dot, scope)))
        elif isinstance(node, Assign):
            value = _eval(node.expr, dot, scope)
            if node.declare:
                scope.names[node.name] = value
            else:
                scope.assign(node.name, value)
        elif isinstance(node, If):
            for condition, body in node.branches:
                if _truth(_eval(condition, dot, scope)):
                    _run(body, dot, scope, out)
                    break
            else:
                _run(node.otherwise, dot, scope, out)
        elif isinstance(node, With):
            value = _eval(node.expr, dot, scope)
            _run(node.body if _truth(value) else node.otherwise, value if _truth(value) else dot, scope, out)
        else:
            items = _eval(node.expr, dot, scope)
            if not isinstance(items, (list, tuple)):
                raise TemplateError("range needs a list")
            if not items:
                _run(node.otherwise, dot, scope, out)
            for index, item in enumerate(items):
                names: dict[str, Any] = {}
                if node.key is not None:
                    names[node.key] = index
                if node.value is not None:
                    names[node.value] = item
                _run(node.body, item, Scope(names, scope), out)


def _eval(expr: Expr, dot: Any, variables: Scope) -> Any:
    if isinstance(expr, Literal):
        return expr.value
    if isinstance(expr, Field):
        value = dot if expr.base is None else variables.get(expr.base)
        for name in expr.path:
            if not isinstance(value, Mapping) or name not in value:
                raise TemplateError(f"can't evaluate field {name}")
            value = value[name]
        return value
    if expr.name == "and":  # Go's and/or: the first falsy (truthy) argument, else the last
        value = None
        for arg in expr.args:
            value = _eval(arg, dot, variables)
            if not _truth(value):
                return value
        return value
    if expr.name == "or":
        value = None
        for arg in expr.args:
            value = _eval(arg, dot, variables)
            if _truth(value):
                return value
        return value
    args = [_eval(arg, dot, variables) for arg in expr.args]
    try:
        return FUNCTIONS[expr.name](*args)
    except (TypeError, IndexError, KeyError) as exc:
        raise TemplateError(f"{expr.name}: {exc}") from exc


def _text(value: Any) -> str:
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
