"""Canonical answers -> Responses output items, the response object, usage and errors.

The stream encoder and the whole answer build their items with the same functions here, so a
streamed and an unstreamed answer to one request have the same shape.
"""

from __future__ import annotations

import time
from typing import Any

from dragoman.core.ids import random_id
from dragoman.core.types import FinishReason, Usage
from dragoman.dialects.responses.convert import ResponsesRequest, custom_input
from dragoman.errors import ErrorKind, GatewayError
from dragoman.protocols import openai as openai_protocol

# A failed response's ``error.code``: the spec's codes, and those Codex acts on.
FAILED_CODES: dict[ErrorKind, str] = {
    ErrorKind.CONTEXT_TOO_LONG: "context_length_exceeded",
    ErrorKind.RATE_LIMITED: "rate_limit_exceeded",
    ErrorKind.INVALID_REQUEST: "invalid_prompt",
}


def error_body(error: GatewayError) -> dict[str, Any]:
    return openai_protocol.error_body(error, not_found_code="not_found")


def failed_error(error: GatewayError) -> dict[str, Any]:
    return {"code": FAILED_CODES.get(error.kind, "server_error"), "message": error.message}


def response_id() -> str:
    return random_id("resp_", 32)


def item_id(prefix: str) -> str:
    return random_id(prefix, 32)


# Input items' id prefixes, as the API names them.
INPUT_ID_PREFIXES = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_",
                     "custom_tool_call": "ctc_", "custom_tool_call_output": "ctco_", "reasoning": "rs_"}


def input_items(raw: Any) -> list[dict[str, Any]]:
    """A request's ``input`` as ``input_items`` lists it: every item typed and with an id, a
    message's string content as one text part."""
    listed = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    items = []
    for entry in listed:
        item = {"type": "message", "role": "user", "content": entry} if isinstance(entry, str) else dict(entry)
        kind = item.setdefault("type", "message")
        if kind == "message":
            if isinstance(item.get("content"), str):
                text_type = "output_text" if item.get("role") == "assistant" else "input_text"
                item["content"] = [{"type": text_type, "text": item["content"]}]
            item.setdefault("status", "completed")
        if not item.get("id"):
            item["id"] = item_id(INPUT_ID_PREFIXES.get(str(kind), "item_"))
        items.append(item)
    return items


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def status_of(finish: FinishReason) -> tuple[str, dict[str, Any] | None]:
    """The response's ``status`` and ``incomplete_details`` for how the answer ended."""
    if finish is FinishReason.LENGTH:
        return "incomplete", {"reason": "max_output_tokens"}
    if finish is FinishReason.CONTENT_FILTER:
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


# ---------------------------------------------------------------------------------------- items


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(id: str, text: str | None, status: str) -> dict[str, Any]:
    return {"type": "message", "id": id, "status": status, "role": "assistant",
            "content": [] if text is None else [output_text(text)]}


def reasoning_item(req: ResponsesRequest, id: str, text: str | None, status: str,
                   encrypted: str | None = None) -> dict[str, Any]:
    """Reasoning as a summary when the client asked for one, else as reasoning text (as the
    open-weight models' reasoning comes from OpenAI); ``encrypted_content`` on request."""
    item: dict[str, Any] = {"type": "reasoning", "id": id, "summary": [], "status": status}
    if text is not None:
        if req.summary:
            item["summary"] = [{"type": "summary_text", "text": text}] if text else []
        else:
            item["content"] = [{"type": "reasoning_text", "text": text}]
    if req.include_encrypted:
        item["encrypted_content"] = encrypted
    return item


def call_item(req: ResponsesRequest, id: str, call_id: str, canonical: str, arguments: str,
              status: str) -> dict[str, Any]:
    """A function call, or a custom tool call, named as the client declared the tool."""
    namespace, name = req.names.client_name(canonical)
    item: dict[str, Any]
    if req.names.is_custom(canonical):
        item = {"type": "custom_tool_call", "id": id, "call_id": call_id, "name": name,
                "input": custom_input(arguments) if arguments else "", "status": status}
    else:
        item = {"type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": arguments,
                "status": status}
    if namespace is not None:
        item["namespace"] = namespace
    return item


def call_prefix(req: ResponsesRequest, canonical: str) -> str:
    return "ctc_" if req.names.is_custom(canonical) else "fc_"


# ------------------------------------------------------------------------------ response object


def response_object(req: ResponsesRequest, id: str, created_at: int, *, status: str,
                    output: list[dict[str, Any]], usage: Usage | None = None,
                    error: dict[str, Any] | None = None,
                    incomplete: dict[str, Any] | None = None) -> dict[str, Any]:
    body = req.body
    reasoning = body.reasoning
    text_format = (body.text.format.model_dump(by_alias=True, exclude_none=True)
                   if body.text is not None and body.text.format is not None else {"type": "text"})
    text: dict[str, Any] = {"format": text_format}
    if body.text is not None and body.text.verbosity is not None:
        text["verbosity"] = body.text.verbosity
    return {
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "model": body.model,
        "output": output,
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": reasoning.effort if reasoning else None,
                      "summary": (reasoning.summary or reasoning.generate_summary) if reasoning else None},
        "store": req.store,
        "temperature": body.temperature if body.temperature is not None else 1.0,
        "text": text,
        "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
        "tools": req.client_tools,
        "top_p": body.top_p if body.top_p is not None else 1.0,
        "truncation": body.truncation or "disabled",
        "usage": usage_body(usage) if usage is not None else None,
        "user": body.user,
        "metadata": body.metadata or {},
        "background": False,
        "service_tier": "default",
        "safety_identifier": body.safety_identifier,
        "prompt_cache_key": body.prompt_cache_key,
        "max_tool_calls": body.max_tool_calls,
        "top_logprobs": body.top_logprobs,
    }
