"""Identifiers in each dialect's house style."""

from __future__ import annotations

import base64
import random
import time


def random_id(prefix: str, length: int = 24) -> str:
    """``prefix`` + ``length`` random letters and digits.

    Identifiers, not secrets (keys come from ``secrets``): the stdlib generator, reseeded in
    forked children, is an order of magnitude cheaper than ``os.urandom`` here, per request.
    """
    size = length * 3 // 4 + 3
    raw = base64.b64encode(random.getrandbits(size * 8).to_bytes(size, "little"), altchars=b"xy").decode("ascii")
    return prefix + raw[:length]


def completion_id() -> str:
    return random_id("chatcmpl-")


def tool_call_id() -> str:
    return random_id("call_")


def now() -> int:
    return int(time.time())
