"""The id of one HTTP request: the client's own ``x-request-id`` when it is a safe one, else a new one.

A client's id ends up in a response header, a log line, a trace attribute and a 64-character
database column, so only short ids of plain characters are honoured; anything else (too long,
spaces, quotes, control characters) is replaced by a generated id rather than echoed.
"""

from __future__ import annotations

import re

from dragoman.core.ids import random_id

HEADER = b"x-request-id"
# ASGI scope keys: the request's id (set by the app's request log before any handler runs) and
# the ``CallContext`` a dialect built for it (read back by the request log when the request ends).
SCOPE_REQUEST_ID = "dragoman.request_id"
SCOPE_CONTEXT = "dragoman.context"
MAX_LENGTH = 64
_SAFE = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,%d}" % MAX_LENGTH)


def new_request_id() -> str:
    return random_id("req_", 20)


def request_id(raw_headers: list[tuple[bytes, bytes]]) -> str:
    """The client's ``x-request-id`` if it is at most 64 safe characters, otherwise a new id."""
    for name, value in raw_headers:
        if name == HEADER:
            if _SAFE.fullmatch(value):
                return value.decode("ascii")
            break
    return new_request_id()
