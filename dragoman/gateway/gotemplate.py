"""The common subset of Go's text/template that Ollama's ``TEMPLATE``s use, to render a conversation.

Supported: text; ``{{ pipeline }}``; ``{{-`` / ``-}}`` trimming; ``{{/* comments */}}``; fields
(``.System``, ``$.Messages``, ``$m.Role``); variables (``$x := ...``, ``$x = ...``); ``if`` / ``else if``
/ ``else`` / ``end``; ``range`` over a list (``range .Messages``, ``range $i, $m := .Messages``, with
``else``); ``with``; parenthesised calls of ``eq``, ``ne``, ``lt``, ``le``, ``gt``, ``ge``, ``and``,
``or``, ``not``, ``len``, ``index``, ``slice`` and Ollama's ``json``; string, number and boolean literals. Anything else
(pipes ``|``, ``define`` / ``template`` / ``block``, other functions, unknown fields) is refused by
:func:`compile_template` with a message naming it, so a created model never silently ignores part
of its template. Rendering is in ``gotemplate_render.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# What Ollama gives a template, and the fields of its messages, tools and tool calls (tools and
# tool calls are always empty here: a templated request with them is refused, see ``recipes.py``).
FIELDS = frozenset({"System", "Prompt", "Response", "Messages", "Tools", "Think", "ThinkLevel", "IsThinkSet",
                    "Role", "Content", "Thinking", "ToolCalls", "ToolName", "ToolCallID", "Images",
                    "Function", "Name", "Arguments", "Description", "Parameters", "Type", "Properties", "Required"})


class TemplateError(ValueError):
    """A template outside the supported subset, or one that fails on the data it is given."""


# ------------------------------------------------------------------------------ expressions


@dataclass(slots=True)
class Field:
    base: str | None  # None: dot; "$": the root; "$name": a variable
    path: tuple[str, ...]


@dataclass(slots=True)
class Literal:
    value: Any


@dataclass(slots=True)
class Call:
    name: str
    args: list[Expr]


Expr = Field | Literal | Call


# The functions a template may call (``gotemplate_render.FUNCTIONS`` runs them; ``and`` and ``or``
# are evaluated lazily there).
FUNCTION_NAMES = frozenset({"eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "len", "index", "slice", "json"})


# ------------------------------------------------------------------------------------ nodes


@dataclass(slots=True)
class Text:
    text: str


@dataclass(slots=True)
class Print:
    expr: Expr


@dataclass(slots=True)
class Assign:
    name: str
    expr: Expr
    declare: bool = True  # ``:=`` declares in the current block; ``=`` sets where it was declared


@dataclass(slots=True)
class If:
    branches: list[tuple[Expr, list[Node]]]
    otherwise: list[Node] = field(default_factory=list)


@dataclass(slots=True)
class Range:
    key: str | None
    value: str | None
    expr: Expr
    body: list[Node]
    otherwise: list[Node] = field(default_factory=list)


@dataclass(slots=True)
class With:
    expr: Expr
    body: list[Node]
    otherwise: list[Node] = field(default_factory=list)


Node = Text | Print | Assign | If | Range | With

# ------------------------------------------------------------------------------------ lexing

TOKEN = re.compile(r"""\s*(?:
    (?P<string>"(?:[^"\\]|\\.)*") | (?P<raw>`[^`]*`) | (?P<number>-?\d+(?:\.\d+)?) |
    (?P<declare>:=) | (?P<punct>[(),|=]) |
    (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*) | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.) |
    (?P<ident>[A-Za-z_][A-Za-z0-9_]*) )""", re.VERBOSE)
STRING_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _actions(source: str) -> Iterator[tuple[str, str]]:
    """("text", ...) and ("action", ...) pieces, with ``{{-`` / ``-}}`` trimming applied."""
    pos, trim_next = 0, False
    while True:
        start = source.find("{{", pos)
        text = source[pos:] if start < 0 else source[pos:start]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if start < 0:
            if text:
                yield "text", text
            return
        inner_start = start + 2
        trim_left = source.startswith("- ", inner_start) or source.startswith("-\n", inner_start) \
            or source.startswith("-\t", inner_start) or source.startswith("-\r", inner_start)
        if trim_left:
            text = text.rstrip(" \t\r\n")
            inner_start += 1
        end = _action_end(source, inner_start)
        inner = source[inner_start:end]
        trim_next = len(inner) >= 2 and inner.endswith("-") and inner[-2] in " \t\r\n"
        if trim_next:
            inner = inner[:-1]
        if text:
            yield "text", text
        yield "action", inner.strip()
        pos = end + 2


def _action_end(source: str, pos: int) -> int:
    """Where the action from ``pos`` closes (``}}`` outside string literals)."""
    quote: str | None = None
    while pos < len(source):
        char = source[pos]
        if quote is not None:
            if char == "\\" and quote == '"':
                pos += 2
                continue
            if char == quote:
                quote = None
        elif char in "\"`":
            quote = char
        elif source.startswith("}}", pos):
            return pos
        pos += 1
    raise TemplateError("unclosed action: '{{' without '}}'")


def _tokens(action: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(action):
        if action[pos:].strip() == "":
            break
        match = TOKEN.match(action, pos)
        if match is None or match.end() == pos:
            raise TemplateError(f"unsupported syntax in '{{{{ {action} }}}}' at {action[pos:].strip()!r}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


# ----------------------------------------------------------------------------------- parsing


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], action: str) -> None:
        self.tokens, self.pos, self.action = tokens, 0, action

    def fail(self, what: str) -> TemplateError:
        return TemplateError(f"{what} in '{{{{ {self.action} }}}}'")

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise self.fail("unexpected end")
        self.pos += 1
        return token

    def done(self) -> None:
        token = self.peek()
        if token is not None:
            if token == ("punct", "|"):
                raise self.fail("pipes ('|') are not supported")
            raise self.fail(f"unexpected {token[1]!r}")

    def pipeline(self) -> Expr:
        """A command: an operand, or a function applied to operands."""
        kind, value = self.peek() or ("", "")
        if kind == "ident" and value not in ("true", "false", "nil"):
            self.take()
            if value not in FUNCTION_NAMES:
                raise self.fail(f"function {value!r} is not supported")
            args = []
            while (token := self.peek()) is not None and token not in (("punct", ")"), ("punct", "|")):
                args.append(self.operand())
            if not args:
                raise self.fail(f"{value} needs arguments")
            return Call(value, args)
        expr = self.operand()
        if (token := self.peek()) is not None and token not in (("punct", ")"), ("punct", "|")):
            raise self.fail(f"unexpected {token[1]!r} after an operand (call a function first)")
        return expr

    def operand(self) -> Expr:
        kind, value = self.take()
        if kind == "punct" and value == "(":
            expr = self.pipeline()
            if self.take() != ("punct", ")"):
                raise self.fail("missing ')'")
            return expr
        if kind == "string":
            return Literal(_unquote(value))
        if kind == "raw":
            return Literal(value[1:-1])
        if kind == "number":
            return Literal(float(value) if "." in value else int(value))
        if kind == "ident" and value in ("true", "false"):
            return Literal(value == "true")
        if kind == "field":
            return Field(None, _path(value, self))
        if kind == "var":
            base, _, rest = value.partition(".")
            return Field(base, _path("." + rest, self) if rest else ())
        raise self.fail(f"unexpected {value!r}")


def _path(text: str, parser: _Parser) -> tuple[str, ...]:
    names = tuple(n for n in text.split(".") if n)
    for name in names:
        if name not in FIELDS:
            raise parser.fail(f"field .{name} is not one Ollama templates are given "
                              f"(known: {', '.join(sorted(FIELDS))})")
    return names


def _unquote(literal: str) -> str:
    out, i, body = [], 0, literal[1:-1]
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            out.append(STRING_ESCAPES.get(body[i + 1], "\\" + body[i + 1]))
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


KEYWORDS = ("if", "else", "end", "range", "with", "define", "template", "block", "break", "continue")


def compile_template(source: str) -> list[Node]:
    """The template's tree; ``TemplateError`` naming the first construct outside the subset."""
    root: list[Node] = []
    stack: list[tuple[str, Any, list[Node]]] = []  # open blocks: (keyword, node, the body being filled)
    body = root
    for kind, piece in _actions(source):
        if kind == "text":
            body.append(Text(piece))
            continue
        if piece.startswith("/*"):
            if not piece.endswith("*/"):
                raise TemplateError(f"unclosed comment '{{{{{piece}}}}}'")
            continue
        word = piece.split(None, 1)[0] if piece else ""
        rest = piece[len(word):].strip()
        if word in ("define", "template", "block", "break", "continue"):
            raise TemplateError(f"'{{{{ {word} }}}}' is not supported")
        if word in ("if", "with"):
            expr = _expression(rest, piece)
            node: If | With | Range = If([(expr, [])]) if word == "if" else With(expr, [])
            body.append(node)
            body = node.branches[0][1] if isinstance(node, If) else node.body
            stack.append((word, node, body))
        elif word == "range":
            key, value, expr_text = _range_header(rest)
            node = Range(key, value, _expression(expr_text, piece), [])
            body.append(node)
            body = node.body
            stack.append((word, node, body))
        elif word == "else":
            if not stack:
                raise TemplateError("'{{ else }}' outside a block")
            open_word, open_node, _ = stack[-1]
            if rest.startswith("if ") and open_word == "if":
                body = []
                open_node.branches.append((_expression(rest[3:], piece), body))
            elif rest:
                raise TemplateError(f"'{{{{ {piece} }}}}' is not supported")
            else:
                body = open_node.otherwise
            stack[-1] = (open_word, open_node, body)
        elif word == "end":
            if not stack:
                raise TemplateError("'{{ end }}' without a block to end")
            stack.pop()
            body = stack[-1][2] if stack else root
        elif re.match(r"\$[A-Za-z0-9_]+\s*:?=", piece):
            name, op, expr_text = re.split(r"\s*(:?=)\s*", piece, maxsplit=1)
            body.append(Assign(name, _expression(expr_text, piece), declare=op == ":="))
        elif not piece:
            raise TemplateError("empty action '{{ }}'")
        else:
            body.append(Print(_expression(piece, piece)))
    if stack:
        raise TemplateError(f"'{{{{ {stack[-1][0]} }}}}' without '{{{{ end }}}}'")
    _check_variables(root, set())
    return root


def _check_variables(nodes: list[Node], declared: set[str]) -> None:
    """Every variable used is declared before, in its block or one around it (as Go checks)."""
    declared = set(declared) | {"$"}
    for node in nodes:
        if isinstance(node, Assign):
            _check_expr(node.expr, declared)
            if not node.declare and node.name not in declared:
                raise TemplateError(f"undefined variable {node.name}")
            declared.add(node.name)
        elif isinstance(node, Print):
            _check_expr(node.expr, declared)
        elif isinstance(node, If):
            for condition, body in node.branches:
                _check_expr(condition, declared)
                _check_variables(body, declared)
            _check_variables(node.otherwise, declared)
        elif isinstance(node, With):
            _check_expr(node.expr, declared)
            _check_variables(node.body, declared)
            _check_variables(node.otherwise, declared)
        elif isinstance(node, Range):
            _check_expr(node.expr, declared)
            _check_variables(node.body, declared | {n for n in (node.key, node.value) if n})
            _check_variables(node.otherwise, declared)


def _check_expr(expr: Expr, declared: set[str]) -> None:
    if isinstance(expr, Field) and expr.base is not None and expr.base not in declared:
        raise TemplateError(f"undefined variable {expr.base}")
    if isinstance(expr, Call):
        for arg in expr.args:
            _check_expr(arg, declared)


def _range_header(rest: str) -> tuple[str | None, str | None, str]:
    match = re.match(r"(\$[A-Za-z0-9_]*)\s*(?:,\s*(\$[A-Za-z0-9_]*)\s*)?:=\s*(.*)", rest, re.DOTALL)
    if match is None:
        return None, None, rest
    first, second, expr = match.groups()
    if second is None:
        return None, first, expr
    return first, second, expr


def _expression(text: str, action: str) -> Expr:
    if not text.strip():
        raise TemplateError(f"missing expression in '{{{{ {action} }}}}'")
    parser = _Parser(_tokens(text), action)
    expr = parser.pipeline()
    parser.done()
    return expr
