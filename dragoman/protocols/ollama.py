"""Ollama's wire tables, shared by the Ollama dialect and the Ollama backend."""

from __future__ import annotations

from dragoman.core.types import FinishReason

# Canonical reason -> ``done_reason`` (what the dialect writes); Ollama never says tool_calls.
DONE_REASONS: dict[FinishReason, str] = {
    FinishReason.STOP: "stop",
    FinishReason.STOP_SEQUENCE: "stop",
    FinishReason.TOOL_CALLS: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.CONTENT_FILTER: "stop",
    FinishReason.ERROR: "stop",
}

# ``done_reason`` -> canonical reason (what the backend reads); an unknown one is a stop.
UPSTREAM_DONE_REASONS: dict[str, FinishReason] = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}

# Canonical effort -> ``think`` level.
THINK_LEVELS: dict[str, str] = {"minimal": "low", "low": "low", "medium": "medium", "high": "high",
                                "xhigh": "max", "max": "max"}
