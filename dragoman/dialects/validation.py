"""A request body checked against a dialect's wire model: the model, or one precise 400.

The 400 names the client's own field path (``messages[0].content[1].text``), never pydantic's
internal labels: a union's member (``str``, ``list[str]``, ``ImageURL``) or a tagged union's tag
sit in pydantic's error locations between the real fields, and are dropped by walking the body
the client sent. Of a union's alternatives, the error from the member that matched the input's
type goes deepest, so the deepest error is the one reported; the messages of the alternatives at
that same path are joined ("Input should be a valid string or a valid list").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from dragoman.errors import ErrorKind, GatewayError

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

M = TypeVar("M", bound=BaseModel)
Path = tuple[str | int, ...]

_SHOULD_BE = "Input should be "


def validated(model: type[M], body: Any) -> M:
    if not isinstance(body, dict):
        raise GatewayError(ErrorKind.INVALID_REQUEST, "request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc, body) from exc


def validation_error(exc: ValidationError, body: Any) -> GatewayError:
    """One 400 for the most specific failure in ``body``, naming the client's field path."""
    located = [(client_path(body, error["loc"], missing=error["type"] == "missing"), error)
               for error in exc.errors()]
    path = max((p for p, _ in located), key=len)  # the first of the deepest
    message = _joined([error for p, error in located if p == path])
    paths = {p for p, _ in located}
    # Other failures: paths that are not the chosen one's ancestors (its union's other members)
    # nor an ancestor of another failure (that failure's union's other members).
    others = [p for p in paths if p != path and not any(q != p and q[:len(p)] == p for q in paths)]
    location = render(path)
    text = f"{location}: {message}" if location else message
    if others:
        text += f" (and {len(others)} more error{'s' if len(others) > 1 else ''})"
    return GatewayError(ErrorKind.INVALID_REQUEST, text, param=location or None)


def client_path(body: Any, loc: Sequence[str | int], *, missing: bool = False) -> Path:
    """The parts of pydantic's ``loc`` that are keys and indexes of ``body``; the last part of a
    ``missing`` error is the absent field's name."""
    path: list[str | int] = []
    current = body
    for position, part in enumerate(loc):
        if _holds(current, part):
            current = current[part]
        elif not (missing and position == len(loc) - 1):
            continue  # a union member's label or a tag: not in the client's body
        path.append(part)
    return tuple(path)


def _holds(value: Any, part: str | int) -> bool:
    if isinstance(part, int):
        return isinstance(value, list) and 0 <= part < len(value)
    return isinstance(value, dict) and part in value


def render(path: Path) -> str:
    """``("messages", 0, "content")`` -> ``messages[0].content``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def _joined(errors: list[ErrorDetails]) -> str:
    """The messages of the failures at one path (a union's members), each said once."""
    messages = list(dict.fromkeys("field required" if e["type"] == "missing" else e["msg"] for e in errors))
    text = messages[0]
    for message in messages[1:]:
        if text.startswith(_SHOULD_BE) and message.startswith(_SHOULD_BE):
            message = message.removeprefix(_SHOULD_BE)
        text += f" or {message}"
    return text
