"""Identifiers in each dialect's house style."""

from __future__ import annotations

import secrets
import string
import time

_ALPHABET = string.ascii_letters + string.digits


def random_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def completion_id() -> str:
    return random_id("chatcmpl-")


def tool_call_id() -> str:
    return random_id("call_")


def now() -> int:
    return int(time.time())
