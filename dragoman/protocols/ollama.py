"""Ollama's wire tables, shared by the Ollama dialect and the Ollama backend."""

from __future__ import annotations

from typing import Any

import msgspec

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


# ------------------------------------------------------------------------------ upstream answers
# One NDJSON line of ``/api/chat`` or ``/api/generate``, decoded straight into typed structs
# (fields dragoman does not read are skipped). Ollama sends each tool call whole, its
# ``arguments`` an object (a string from some servers).


class FunctionCall(msgspec.Struct):
    name: str | None = None
    arguments: Any = None


class ToolCall(msgspec.Struct):
    id: str | None = None
    function: FunctionCall | None = None


class Message(msgspec.Struct):
    content: str | None = None
    thinking: str | None = None
    tool_calls: list[ToolCall] | None = None


class Line(msgspec.Struct):
    """A chat line carries ``message``; a generate line ``response`` and ``thinking``."""

    model: str | None = None
    created_at: str | None = None
    message: Message | None = None
    response: str | None = None
    thinking: str | None = None
    done: bool | None = None
    done_reason: str | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    error: Any = None


LINE = msgspec.json.Decoder(Line)
