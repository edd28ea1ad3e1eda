"""Recent responses kept in memory, for ``previous_response_id`` and ``GET /v1/responses/{id}``.

Bounded twice: by count and by an estimate of the bytes its conversations hold (text and image
bytes; chained turns share their messages, so the estimate errs high). The oldest go first. A
response is visible only to the key that created it (compared as SHA-256 digests, in constant
time). In-memory and per process: with several processes or instances, a client that chains
turns must come back to the same one, or send the whole conversation (``store: false``, as
Codex does).
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson

from dragoman.core.types import ImagePart, Message, ReasoningPart, TextPart, ToolCallPart, ToolResultPart


@dataclass(slots=True)
class StoredResponse:
    owner: bytes
    body: dict[str, Any]  # the response object, as answered
    history: list[Message]  # the conversation through this answer, without ``instructions``
    size: int
    input_items: list[dict[str, Any]] = field(default_factory=list)  # this request's input, with ids


def owner_of(api_key: str | None) -> bytes:
    return hashlib.sha256((api_key or "").encode()).digest()


def conversation_size(messages: list[Message]) -> int:
    size = 0
    for message in messages:
        for part in message.parts:
            if isinstance(part, TextPart):
                size += len(part.text)
            elif isinstance(part, ImagePart):
                size += len(part.data or b"") + len(part.url or "")
            elif isinstance(part, ToolCallPart):
                size += len(part.arguments) + len(part.name)
            elif isinstance(part, ReasoningPart):
                size += len(part.text) + len(part.signature or "") + len(part.redacted or "")
            elif isinstance(part, ToolResultPart):
                size += sum(len(p.text) if isinstance(p, TextPart) else len(p.data or b"") for p in part.content)
            size += 64  # the part's own overhead
    return size


class ResponseStore:
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self._bytes = 0

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, response_id: str, api_key: str | None, body: dict[str, Any], history: list[Message],
            input_items: list[dict[str, Any]] | None = None) -> bool:
        """Keep a response; False when it is too big to keep (or the store is off)."""
        items = input_items or []
        size = conversation_size(history) + 1024 + (len(orjson.dumps(items)) if items else 0)
        if not self.enabled or size > self.max_bytes:
            return False
        self._entries[response_id] = StoredResponse(owner_of(api_key), body, history, size, items)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= dropped.size
        return True

    def get(self, response_id: str, api_key: str | None) -> StoredResponse | None:
        entry = self._entries.get(response_id)
        if entry is None or not hmac.compare_digest(entry.owner, owner_of(api_key)):
            return None
        return entry

    def delete(self, response_id: str, api_key: str | None) -> bool:
        if self.get(response_id, api_key) is None:
            return False
        entry = self._entries.pop(response_id)
        self._bytes -= entry.size
        return True
