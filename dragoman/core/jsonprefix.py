"""Tool-call arguments as a JSON object, streamed safely even when a model writes bad JSON.

Anthropic and Ollama carry tool input as a JSON *object*; OpenAI-style upstreams carry raw
text that "the model does not always generate valid JSON". :class:`ObjectPrefix` forwards
fragments as they arrive for as long as they extend a valid JSON-object prefix (byte-exact
for valid input), holds back only tokens that are not finished yet (a pending ``,``, a partial
number, literal or escape), stops at the first character that cannot continue a valid
object, and at the end returns the suffix that closes what was forwarded. The forwarded
text plus that suffix is always one valid JSON object, so a streamed answer and an
accumulated one (:func:`to_object`) agree exactly, for good and bad input alike:

* valid object text -> passed through unchanged (``""`` -> ``{}``);
* invalid text -> its longest valid prefix, closed: ``{"a": 1, "b": tr`` -> ``{"a": 1}``
  and ``{"path": "x.py", "content": "de`` -> ``{"path": "x.py", "content": "de"}``;
* text that is not an object at all (``[1]``, ``"x"``, ``hello``) -> ``{}``.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_START, _KEY_OR_CLOSE, _KEY, _COLON, _VALUE, _VALUE_OR_CLOSE, _AFTER_VALUE, _STRING, _DONE = range(9)
_NUM_SIGN, _NUM_ZERO, _NUM_INT, _NUM_DOT, _NUM_FRAC, _NUM_EXP, _NUM_EXP_SIGN, _NUM_EXP_DIGITS = range(8)
_NUM_TERMINAL = frozenset({_NUM_ZERO, _NUM_INT, _NUM_FRAC, _NUM_EXP_DIGITS})
_PLAIN = re.compile(r'[^"\\\x00-\x1f]+')
_WHITESPACE = " \t\n\r"
_SIMPLE_ESCAPES = '"\\/bfnrt'
_HEX = "0123456789abcdefABCDEF"
_LITERALS = {"t": "true", "f": "false", "n": "null"}


class ObjectPrefix:
    """Incremental: ``feed`` returns what may be forwarded now, ``close`` what completes it."""

    __slots__ = ("_commit_key", "_commit_state", "_escape", "_is_key", "_literal", "_number",
                 "_pending", "_stack", "_state", "broken")

    def __init__(self) -> None:
        self._state = _START
        self._stack: list[str] = []  # closing characters of the open containers
        self._pending = ""  # accepted but not yet forwardable (an unfinished token)
        self._is_key = False
        self._escape = 0  # 0: none; -1: after a backslash; n > 0: hex digits still due
        self._literal = ""  # the rest of a literal being read
        self._number = -1  # number sub-state while reading a number
        self._commit_state = _START
        self._commit_key = False
        self.broken = False

    def feed(self, text: str) -> str:
        if self.broken:
            return ""
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            state = self._state
            c = text[i]
            if state == _STRING:
                if self._escape:
                    if not self._escape_char(c, out):
                        return self._break(out)
                    i += 1
                    continue
                match = _PLAIN.match(text, i)
                if match is not None:
                    self._commit(match.group(), out)
                    i = match.end()
                    continue
                if c == '"':
                    self._state = _COLON if self._is_key else _AFTER_VALUE
                    self._commit(c, out)
                elif c == "\\":
                    self._pending += c
                    self._escape = -1
                else:  # a raw control character
                    return self._break(out)
                i += 1
                continue
            if self._literal:
                if c != self._literal[0]:
                    return self._break(out)
                self._pending += c
                self._literal = self._literal[1:]
                if not self._literal:
                    self._state = _AFTER_VALUE
                    self._commit("", out)
                i += 1
                continue
            if self._number >= 0:
                following = _number_step(self._number, c)
                if following >= 0:
                    self._number = following
                    self._pending += c
                    i += 1
                    continue
                if self._number not in _NUM_TERMINAL:
                    return self._break(out)
                self._number = -1
                self._state = _AFTER_VALUE
                self._commit("", out)
                continue  # the character that ended the number is read in the new state
            if c in _WHITESPACE:
                if self._pending:
                    self._pending += c
                else:
                    self._commit(c, out)
                i += 1
                continue
            if not self._structural(state, c, out):
                return self._break(out)
            i += 1
        return "".join(out)

    def close(self) -> str:
        """The suffix that makes everything forwarded one complete JSON object."""
        state = self._commit_state
        if state == _START:
            return "{}"
        suffix = ""
        if state == _STRING:
            suffix = '":null' if self._commit_key else '"'
        elif state == _COLON:
            suffix = ":null"
        elif state == _VALUE:
            suffix = "null"
        closing = self._stack if self._commit_state != _DONE else []
        return suffix + "".join(reversed(closing))

    # ------------------------------------------------------------------ helpers

    def _structural(self, state: int, c: str, out: list[str]) -> bool:
        if state == _START:
            if c != "{":
                return False
            return self._open("}", _KEY_OR_CLOSE, out)
        if state in (_KEY_OR_CLOSE, _KEY):
            if c == '"':
                self._state, self._is_key = _STRING, True
                self._commit(c, out)
                return True
            return state == _KEY_OR_CLOSE and c == "}" and self._close(c, out)
        if state == _COLON:
            if c != ":":
                return False
            self._state = _VALUE
            self._commit(c, out)
            return True
        if state in (_VALUE, _VALUE_OR_CLOSE):
            if c == '"':
                self._state, self._is_key = _STRING, False
                self._commit(c, out)
                return True
            if c == "{":
                return self._open("}", _KEY_OR_CLOSE, out)
            if c == "[":
                return self._open("]", _VALUE_OR_CLOSE, out)
            if c in _LITERALS:
                self._literal = _LITERALS[c][1:]
                self._pending += c
                return True
            start = _number_step(-1, c)
            if start >= 0:
                self._number = start
                self._pending += c
                return True
            return state == _VALUE_OR_CLOSE and c == "]" and self._close(c, out)
        if state == _AFTER_VALUE:
            if c == ",":
                self._state = _KEY if self._stack[-1] == "}" else _VALUE
                self._pending += c
                return True
            return c in "}]" and self._close(c, out)
        return False  # _DONE: only whitespace may follow the object

    def _open(self, closer: str, state: int, out: list[str]) -> bool:
        self._stack.append(closer)
        self._state = state
        self._commit("{" if closer == "}" else "[", out)
        return True

    def _close(self, c: str, out: list[str]) -> bool:
        if not self._stack or self._stack[-1] != c:
            return False
        self._stack.pop()
        self._state = _AFTER_VALUE if self._stack else _DONE
        self._commit(c, out)
        return True

    def _escape_char(self, c: str, out: list[str]) -> bool:
        if self._escape == -1:
            if c in _SIMPLE_ESCAPES:
                self._escape = 0
                self._commit(c, out)
                return True
            if c == "u":
                self._escape = 4
                self._pending += c
                return True
            return False
        if c not in _HEX:
            return False
        self._escape -= 1
        if self._escape:
            self._pending += c
        else:
            self._commit(c, out)
        return True

    def _commit(self, text: str, out: list[str]) -> None:
        out.append(self._pending + text)
        self._pending = ""
        self._commit_state = self._state
        self._commit_key = self._is_key

    def _break(self, out: list[str]) -> str:
        self.broken = True
        self._pending = ""
        return "".join(out)


def _number_step(state: int, c: str) -> int:
    """The number sub-state after ``c``, or -1 when ``c`` cannot continue the number."""
    digit = "0" <= c <= "9"
    if state == -1:
        return _NUM_SIGN if c == "-" else _NUM_ZERO if c == "0" else _NUM_INT if digit else -1
    if state == _NUM_SIGN:
        return _NUM_ZERO if c == "0" else _NUM_INT if digit else -1
    if state in (_NUM_ZERO, _NUM_INT):
        if c == ".":
            return _NUM_DOT
        if c in "eE":
            return _NUM_EXP
        return _NUM_INT if digit and state == _NUM_INT else -1
    if state in (_NUM_DOT, _NUM_FRAC):
        if digit:
            return _NUM_FRAC
        return _NUM_EXP if state == _NUM_FRAC and c in "eE" else -1
    if state == _NUM_EXP:
        return _NUM_EXP_SIGN if c in "+-" else _NUM_EXP_DIGITS if digit else -1
    return _NUM_EXP_DIGITS if digit else -1  # _NUM_EXP_SIGN, _NUM_EXP_DIGITS


def object_text(text: str) -> str:
    """``text`` if it is one JSON object, else its longest valid object prefix, closed."""
    scanner = ObjectPrefix()
    return scanner.feed(text) + scanner.close()


def to_object(text: str) -> dict[str, Any]:
    """Tool-call arguments as a dict, by the same rules a stream follows (see the module doc)."""
    try:
        value = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        return value
    try:
        value = orjson.loads(object_text(text))
    except orjson.JSONDecodeError:  # e.g. a lone surrogate escape orjson refuses
        return {}
    return value if isinstance(value, dict) else {}
