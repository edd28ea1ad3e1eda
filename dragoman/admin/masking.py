"""Masking backend secrets for the browser, and restoring them when a masked value comes back.

A setting is secret when its name ends in ``key``, ``secret``, ``token``, ``password`` or
``authorization`` (``api_key``, ``x-api-key`` header, ``access_token``; not ``max_tokens``). The
browser only ever sees ``sk-...abcd`` or ``••••`` (or the config file's ``${VAR}`` reference); saving
that same text keeps the stored secret.
"""

from __future__ import annotations

import re
from typing import Any

from dragoman.config import has_env_reference

MASK = "••••"
_SECRET_NAME = re.compile(r"(^|[_-])(api_?key|key|secret|token|password|passwd|authorization|auth)$", re.I)
_NOT_SECRET_VALUES = frozenset({"", "forward"})  # api_key: forward passes the client's key on


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def mask_value(value: str) -> str:
    """``sk-...abcd`` for long secrets (enough to tell two apart), ``••••`` for short ones.
    A ``${VAR}`` reference from the config file is shown as written: it says where the secret is."""
    if value in _NOT_SECRET_VALUES or has_env_reference(value):
        return value
    if len(value) >= 16:
        return f"{value[:3]}...{value[-4:]}"
    return MASK


def mask(settings: Any, *, secret: bool = False) -> Any:
    """A copy of ``settings`` with every secret string masked (recursively)."""
    if isinstance(settings, dict):
        return {k: mask(v, secret=secret or is_secret_name(str(k))) for k, v in settings.items()}
    if isinstance(settings, list):
        return [mask(v, secret=secret) for v in settings]
    if secret and isinstance(settings, str):
        return mask_value(settings)
    return settings


def unmask(new: Any, old: Any, *, secret: bool = False) -> Any:
    """``new`` with every masked secret that matches the old value's mask replaced by the old value.

    A secret field left as it was shown (``sk-...abcd`` or ``••••``) keeps its old value; anything
    else is taken as a new secret.
    """
    if isinstance(new, dict):
        old_map = old if isinstance(old, dict) else {}
        return {k: unmask(v, old_map.get(k), secret=secret or is_secret_name(str(k))) for k, v in new.items()}
    if isinstance(new, list):
        old_list = old if isinstance(old, list) else []
        return [unmask(v, old_list[i] if i < len(old_list) else None, secret=secret) for i, v in enumerate(new)]
    if secret and isinstance(new, str) and isinstance(old, str) and new in (mask_value(old), MASK):
        return old
    return new


def contains_mask(settings: Any) -> bool:
    """True when a masked placeholder is still in ``settings`` (it had no stored value to restore)."""
    if isinstance(settings, dict):
        return any(contains_mask(v) for v in settings.values())
    if isinstance(settings, list):
        return any(contains_mask(v) for v in settings)
    return isinstance(settings, str) and settings == MASK
