"""Fitting a conversation into a window (``context: truncate_oldest``) and the default answer
length of local models: pure functions, checked on their own."""

from __future__ import annotations

import asyncio

import pytest

from dragoman.backends.llamacpp.gguf import GGUFInfo
from dragoman.backends.llamacpp.models import (
    BASE_MODEL_MAX_TOKENS,
    LlamaCppSettings,
    ModelConfig,
    default_answer_length,
)
from dragoman.core.fit import answer_reserve, truncate_oldest, without_oldest
from dragoman.core.types import ChatRequest, Message, Role, Sampling, TextPart, ToolCallPart, ToolResultPart
from dragoman.errors import ErrorKind, GatewayError


def text(role: Role, words: int, tag: str) -> Message:
    return Message(role, [TextPart(" ".join([tag] * words))])


def conversation() -> ChatRequest:
    return ChatRequest(model="m", messages=[
        text(Role.SYSTEM, 10, "sys"),
        text(Role.USER, 10, "u1"),
        Message(Role.ASSISTANT, [ToolCallPart("c1", "Read", "{}")]),
        Message(Role.TOOL, [ToolResultPart("c1", [TextPart("x " * 10)])]),
        text(Role.ASSISTANT, 10, "a1"),
        text(Role.USER, 10, "u2"),
        text(Role.ASSISTANT, 10, "a2"),
        text(Role.USER, 10, "u3"),
    ], sampling=Sampling(max_tokens=5))


async def words(request: ChatRequest) -> int:
    return sum(len(m.text.split()) + sum(len(p.text.split()) for p in m.parts if isinstance(p, ToolResultPart))
               for m in request.messages)


def test_dropping_the_oldest_never_leaves_an_orphaned_answer_or_tool_result() -> None:
    request = conversation()
    kept = without_oldest(request, 1)  # u1 goes: its tool call, result and answer go with it
    assert [m.role for m in kept.messages] == [Role.SYSTEM, Role.USER, Role.ASSISTANT, Role.USER]
    assert kept.messages[1].text.startswith("u2")
    assert without_oldest(request, 0) is request
    last = without_oldest(request, 6)
    assert [m.text.split()[0] for m in last.messages] == ["sys", "u3"]  # the system and the newest stay


def test_truncation_drops_as_few_turns_as_fit() -> None:
    request = conversation()
    full = asyncio.run(words(request))
    fitted, dropped = asyncio.run(truncate_oldest(request, words, window=full + 5))
    assert dropped == 0 and fitted is request
    fitted, dropped = asyncio.run(truncate_oldest(request, words, window=45))  # 40 for the prompt, 5 reserved
    assert asyncio.run(words(fitted)) <= 40 and dropped == len(request.messages) - len(fitted.messages)
    assert [m.text.split()[0] for m in fitted.messages if m.text] == ["sys", "u2", "a2", "u3"]


def test_what_cannot_fit_even_alone_is_a_context_error() -> None:
    with pytest.raises(GatewayError) as info:
        asyncio.run(truncate_oldest(conversation(), words, window=22))
    assert info.value.kind is ErrorKind.CONTEXT_TOO_LONG and "do not fit" in info.value.message


def test_the_answer_reserve_is_max_tokens_at_most_a_quarter() -> None:
    assert answer_reserve(ChatRequest("m", [], sampling=Sampling(max_tokens=100)), 1000) == 100
    assert answer_reserve(ChatRequest("m", [], sampling=Sampling(max_tokens=32000)), 1000) == 250
    assert answer_reserve(ChatRequest("m", []), 1000) == 250


def test_default_answer_length() -> None:
    base = GGUFInfo(version=3, metadata={"general.architecture": "gemma3"}, parameter_count=1)
    tuned = GGUFInfo(version=3, metadata={"general.architecture": "qwen2", "tokenizer.chat_template": "{{x}}"},
                     parameter_count=1)
    model = ModelConfig(name="m", path="m.gguf")
    settings = LlamaCppSettings()
    assert default_answer_length(model, settings, base) == BASE_MODEL_MAX_TOKENS == 512
    assert default_answer_length(model, settings, tuned) is None  # a chat model ends its own turn
    assert default_answer_length(model, LlamaCppSettings(default_max_tokens=64), tuned) == 64
    own = ModelConfig(name="m", path="m.gguf", default_max_tokens=7)
    assert default_answer_length(own, LlamaCppSettings(default_max_tokens=64), base) == 7
    templated = ModelConfig(name="m", path="m.gguf", chat_template="{{x}}")
    assert default_answer_length(templated, settings, base) is None
