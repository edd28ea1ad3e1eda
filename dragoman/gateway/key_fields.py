"""Validation of the editable fields of an API key (shared by the service, admin UI and CLI)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from dragoman.errors import invalid_request
from dragoman.gateway.timeutil import PERIODS, as_utc

EDITABLE = ("name", "models", "expires_at", "rpm", "tpm", "max_parallel", "budget_tokens", "budget_cost",
            "budget_period", "enabled", "metadata")


def validate(values: Mapping[str, Any]) -> dict[str, Any]:
    """Check and normalise editable fields; raises ``GatewayError(INVALID_REQUEST)``."""
    unknown = set(values) - set(EDITABLE)
    if unknown:
        raise invalid_request(f"unknown key field(s): {', '.join(sorted(unknown))}", sorted(unknown)[0])
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name == "name":
            if not isinstance(value, str) or not value.strip() or len(value) > 200:
                raise invalid_request("name must be a non-empty string of at most 200 characters", name)
            out[name] = value.strip()
        elif name == "models":
            if isinstance(value, str):
                value = [value]
            models = list(value)
            if not models or not all(isinstance(m, str) and m for m in models):
                raise invalid_request("models must be a non-empty list of names or globs ('*' for all)", name)
            out[name] = models
        elif name in ("rpm", "tpm", "max_parallel", "budget_tokens"):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise invalid_request(f"{name} must be a positive integer or null", name)
            out[name] = value
        elif name == "budget_cost":
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if value is not None and (not numeric or value <= 0):
                raise invalid_request("budget_cost must be a positive number or null", name)
            out[name] = None if value is None else float(value)
        elif name == "budget_period":
            if value is not None and value not in PERIODS:
                raise invalid_request(f"budget_period must be one of {', '.join(PERIODS)} or null", name)
            out[name] = value
        elif name == "expires_at":
            if value is not None and not isinstance(value, datetime):
                raise invalid_request("expires_at must be a datetime or null", name)
            out[name] = None if value is None else as_utc(value)
        elif name == "enabled":
            out[name] = bool(value)
        elif name == "metadata":
            value = {} if value is None else value
            if not isinstance(value, dict):
                raise invalid_request("metadata must be a JSON object", name)
            try:
                orjson.dumps(value)
            except TypeError as exc:
                raise invalid_request(f"metadata must be JSON-serialisable: {exc}", name) from exc
            out[name] = value
    return out


def check_budget(row: Mapping[str, Any]) -> None:
    has_budget = row.get("budget_tokens") is not None or row.get("budget_cost") is not None
    if has_budget and row.get("budget_period") is None:
        raise invalid_request("a token or cost budget needs budget_period (day or month)", "budget_period")
