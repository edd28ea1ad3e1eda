"""Fitting a conversation into a model's context window by leaving out its oldest turns.

Clients such as Claude Code send their whole history every turn; a small local model's window
cannot hold it. With ``context: truncate_oldest`` (a per-model override) the oldest messages
that are not system messages go first, and the kept part always starts with a user turn, so no
answer or tool result is left without the turn it answers. The newest message always stays.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

import orjson

from dragoman.core.types import (
    ChatRequest,
    Message,
    Part,
    ReasoningPart,
    Role,
    TextPart,
    ToolCallPart,
    ToolResultPart,
)
from dragoman.errors import ErrorKind, GatewayError


def estimate_request_tokens(request: ChatRequest) -> int:
    """About four characters a token, tool definitions included (for backends with no tokenizer)."""
    chars = sum(_part_chars(part) for message in request.messages for part in message.parts)
    chars += sum(len(orjson.dumps([t.name, t.description, t.parameters])) for t in request.tools)
    return max(1, chars // 4)


def _part_chars(part: Part) -> int:
    if isinstance(part, TextPart | ReasoningPart):
        return len(part.text)
    if isinstance(part, ToolCallPart):
        return len(part.name) + len(part.arguments)
    if isinstance(part, ToolResultPart):
        return len(part.text)
    return 0


def answer_reserve(request: ChatRequest, window: int) -> int:
    """Tokens kept free for the answer: its ``max_tokens``, at most a quarter of the window."""
    quarter = max(1, window // 4)
    wanted = request.sampling.max_tokens
    return quarter if wanted is None else max(1, min(wanted, quarter))


def without_oldest(request: ChatRequest, drop: int) -> ChatRequest:
    """``request`` without its ``drop`` oldest non-system messages (and any answer or tool result
    at the new start that would have lost its user turn)."""
    if drop <= 0:
        return request
    kept: list[Message] = []
    total = _non_system(request)
    seen = 0
    starting = True
    for message in request.messages:
        if message.role is Role.SYSTEM:
            kept.append(message)
            continue
        seen += 1
        if seen <= drop:
            continue
        if starting and message.role is not Role.USER and seen < total:
            continue  # an answer or tool result whose user turn is gone
        starting = False
        kept.append(message)
    return replace(request, messages=kept)


def _non_system(request: ChatRequest) -> int:
    return sum(1 for m in request.messages if m.role is not Role.SYSTEM)


async def truncate_oldest(request: ChatRequest, count: Callable[[ChatRequest], Awaitable[int]],
                          window: int) -> tuple[ChatRequest, int]:
    """The request with as few oldest messages left out as makes its prompt fit ``window`` minus
    the answer's reserve, and how many messages were left out. ``count`` gives a request's prompt
    tokens; it is called O(log n) times (a binary search over how many to drop)."""
    limit = window - answer_reserve(request, window)
    if request.prompt is not None or await count(request) <= limit:
        return request, 0
    total = _non_system(request)
    low, high = 1, total - 1  # the newest message always stays
    if high < low or await count(without_oldest(request, high)) > limit:
        raise GatewayError(
            ErrorKind.CONTEXT_TOO_LONG,
            f"the system prompt, tools and newest message alone do not fit the model's context window of "
            f"{window} tokens (with {window - limit} kept for the answer), even with every older message left out",
            param="messages", code="context_length_exceeded")
    while low < high:
        middle = (low + high) // 2
        if await count(without_oldest(request, middle)) <= limit:
            high = middle
        else:
            low = middle + 1
    fitted = without_oldest(request, low)
    return fitted, len(request.messages) - len(fitted.messages)
