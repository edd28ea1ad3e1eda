"""What the Responses dialect needs of a response store, and the conversation as JSON for it.

The store itself is the gateway's database (:mod:`dragoman.gateway.response_store`): the dialect
sees only this interface, so it never imports the gateway. A response is saved with its owner (the
SHA-256 of the key that created it), the response object, its request's input items (with ids)
and the conversation through it (:func:`history_json`), which ``previous_response_id`` continues.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Protocol

from dragoman.core.types import (
    ChatResponse,
    ImagePart,
    Message,
    Part,
    ReasoningPart,
    Role,
    TextPart,
    ToolCallPart,
    ToolResultPart,
)


class StoredRow(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def background(self) -> bool: ...
    @property
    def body(self) -> dict[str, Any]: ...
    @property
    def input_items(self) -> list[dict[str, Any]]: ...
    @property
    def history(self) -> list[Any]: ...


class ResponseStore(Protocol):
    """Saves never raise (a failure is logged, False); reads raise a ``GatewayError`` (503) when the
    store cannot answer, and give None for a response another key created or that expired."""

    async def save(self, response_id: str, owner: str, *, status: str, background: bool, body: dict[str, Any],
                   input_items: list[dict[str, Any]], history: list[Any]) -> bool: ...

    async def finish(self, response_id: str, *, status: str, body: dict[str, Any],
                     history: list[Any] | None = None) -> bool: ...

    async def get(self, response_id: str, owner: str) -> StoredRow | None: ...

    async def delete(self, response_id: str, owner: str) -> bool: ...


def owner_of(api_key: str | None) -> str:
    return hashlib.sha256((api_key or "").encode()).hexdigest()


# ------------------------------------------------------------------------- the conversation


def _part_json(part: Part) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ImagePart):
        return {"type": "image", "data": base64.b64encode(part.data).decode() if part.data is not None else None,
                "url": part.url, "media_type": part.media_type, "detail": part.detail}
    if isinstance(part, ToolCallPart):
        return {"type": "tool_call", "id": part.id, "name": part.name, "arguments": part.arguments}
    if isinstance(part, ToolResultPart):
        return {"type": "tool_result", "tool_call_id": part.tool_call_id, "name": part.name,
                "is_error": part.is_error, "content": [_part_json(p) for p in part.content]}
    return {"type": "reasoning", "text": part.text, "signature": part.signature, "redacted": part.redacted}


def _part(raw: dict[str, Any]) -> Part:
    kind = raw["type"]
    if kind == "text":
        return TextPart(raw["text"])
    if kind == "image":
        data = raw.get("data")
        return ImagePart(data=base64.b64decode(data) if data is not None else None, url=raw.get("url"),
                         media_type=raw.get("media_type"), detail=raw.get("detail"))
    if kind == "tool_call":
        return ToolCallPart(id=raw["id"], name=raw["name"], arguments=raw["arguments"])
    if kind == "tool_result":
        content = [p for p in map(_part, raw["content"]) if isinstance(p, (TextPart, ImagePart))]
        return ToolResultPart(tool_call_id=raw["tool_call_id"], content=content, name=raw.get("name"),
                              is_error=bool(raw.get("is_error")))
    return ReasoningPart(text=raw.get("text") or "", signature=raw.get("signature"), redacted=raw.get("redacted"))


def answered_history(history: list[Message], response: ChatResponse) -> list[dict[str, Any]]:
    """The conversation through ``response`` (``history`` plus the answer), as JSON to store."""
    return history_json([*history, Message(Role.ASSISTANT, list(response.parts))])


def history_json(messages: list[Message]) -> list[dict[str, Any]]:
    """The conversation as JSON (images as base64; signatures and arguments byte-exact)."""
    out = []
    for message in messages:
        entry: dict[str, Any] = {"role": message.role.value, "parts": [_part_json(p) for p in message.parts]}
        if message.name is not None:
            entry["name"] = message.name
        out.append(entry)
    return out


def history_of(raw: list[Any]) -> list[Message]:
    """:func:`history_json`'s conversation back."""
    return [Message(Role(entry["role"]), [_part(p) for p in entry["parts"]], name=entry.get("name"))
            for entry in raw]
