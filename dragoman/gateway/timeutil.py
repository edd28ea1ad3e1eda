"""Small time helpers shared by keys, limits, usage and the CLI.

All stored times are UTC; budget periods (day, month) are UTC calendar periods, so every
instance of a team deployment agrees on when a budget resets, whatever its local time zone.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

PERIODS = ("day", "month")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_duration(text: str) -> timedelta:
    """``30s``, ``15m``, ``12h``, ``7d``, ``2w`` -> a timedelta; ``ValueError`` otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"invalid duration {text!r}: use a number and one of s, m, h, d, w (e.g. 7d)")
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def check_period(period: str) -> str:
    if period not in PERIODS:
        raise ValueError(f"invalid budget period {period!r}: use one of {', '.join(PERIODS)}")
    return period


def period_start(period: str, now: datetime) -> datetime:
    """The UTC start of the budget period that contains ``now``."""
    now = now.astimezone(UTC)
    if check_period(period) == "day":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def period_end(period: str, now: datetime) -> datetime:
    """The UTC instant the period that contains ``now`` ends (the next one starts)."""
    start = period_start(period, now)
    if period == "day":
        return start + timedelta(days=1)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def period_id(period: str, now: datetime) -> str:
    """A stable name for the period, used in counter keys: ``2025-06-14`` or ``2025-06``."""
    start = period_start(period, now)
    return start.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


def as_utc(value: datetime) -> datetime:
    """Treat naive datetimes as UTC (SQLite returns them naive) and convert aware ones to UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
