"""Identifiers in each dialect's house style."""

from __future__ import annotations

import base64
import os
import time


def random_id(prefix: str, length: int = 24) -> str:
    """``prefix`` + ``length`` random letters and digits (one urandom call: this is per request)."""
    raw = base64.b64encode(os.urandom(length + length // 2 + 3), altchars=b"xy").decode("ascii")
    return prefix + raw[:length]


def completion_id() -> str:
    return random_id("chatcmpl-")


def tool_call_id() -> str:
    return random_id("call_")


def now() -> int:
    return int(time.time())
