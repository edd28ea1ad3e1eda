"""Durations as Ollama and the config write them: seconds, or Go-style strings such as ``"5m"``."""

from __future__ import annotations

import re
from typing import Any

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a Go-style string (``"5m"``, ``"1h30m"``, ``"90s"``).
    A negative value means "forever" and is returned as ``inf``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '5m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            sign = -1.0 if text.startswith("-") else 1.0
            body = text.lstrip("+-")
            matches = list(_DURATION.finditer(body))
            if not body or "".join(m.group(0) for m in matches).replace(" ", "") != body.replace(" ", ""):
                raise ValueError(f"invalid duration {value!r}: use seconds or e.g. '30s', '5m', '1h'") from None
            seconds = sign * sum(float(m.group(1)) * _UNITS[m.group(2)] for m in matches)
    else:
        raise ValueError("a duration is a number of seconds or a string like '5m'")
    if seconds != seconds:  # NaN
        raise ValueError(f"invalid duration {value!r}")
    return float("inf") if seconds < 0 else seconds
