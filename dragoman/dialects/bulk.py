"""Answers whose encoding grows with the request (embedding vectors), built off the event loop.

One ``orjson.dumps`` of a few million floats holds the interpreter for most of a second, and
the event loop with it. A big answer is therefore encoded in a worker thread one item at a
time (the loop gets its turns between items); a small one is encoded in place, where a thread
hop would cost more than it saves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import orjson
from starlette.responses import Response

T = TypeVar("T")

OFF_LOOP_FROM = 65_536  # numbers in an answer from which it is encoded in a worker thread


async def built(size: int, build: Callable[[], T]) -> T:
    """``build()``, in a worker thread when ``size`` (the numbers it encodes) is large."""
    if size < OFF_LOOP_FROM:
        return build()
    return await asyncio.to_thread(build)


def object_with_list(before: dict[str, Any], key: str, items: Iterable[bytes], after: dict[str, Any]) -> bytes:
    """The JSON of ``{**before, key: [...items], **after}`` from items already encoded one by one."""
    out = bytearray(orjson.dumps(before)[:-1])
    if before:
        out += b","
    out += orjson.dumps(key) + b":[" + b",".join(items) + b"]"
    out += b"," + orjson.dumps(after)[1:] if after else b"}"
    return bytes(out)


def json_bytes_response(body: bytes) -> Response:
    return Response(body, media_type="application/json")
