"""Pure pieces of the Anthropic dialect and backend: tool-input JSON, the event encoder, the ping
keep-alive, the upstream stream decoder and the request body builder."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from dragoman.backends.anthropic import AnthropicSettings, StreamDecoder, build_body
from dragoman.core.accumulate import Accumulator
from dragoman.core.events import Event, MessageEnd, MessageStart, PartDelta, PartEnd, PartStart, StreamError
from dragoman.core.jsonprefix import ObjectPrefix, object_text, to_object
from dragoman.core.types import (
    ChatRequest,
    FinishReason,
    ImagePart,
    Message,
    Reasoning,
    ReasoningPart,
    ResponseFormat,
    Role,
    Sampling,
    TextPart,
    Tool,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    Usage,
)
from dragoman.dialects.anthropic.convert import error_body, error_status, render_message
from dragoman.dialects.anthropic.stream import EventEncoder
from dragoman.errors import ErrorKind, GatewayError
from dragoman.serving.keepalive import keepalive
from tests.fakes.anthropic_upstream import SIGNATURE, THINKING, _events

# ------------------------------------------------------------------------------ jsonprefix


@pytest.mark.parametrize(("text", "expected"), [
    ("", "{}"),
    ('{"a": 1}', '{"a": 1}'),
    ('{"a": 1, "b": tr', '{"a": 1, "b": null}'),
    ('{"path": "x.py", "content": "de', '{"path": "x.py", "content": "de"}'),
    ('{"a": 1,', '{"a": 1}'),
    ('{"ke', '{"ke":null}'),
    ('{"key":', '{"key":null}'),
    ('{"a":"x\\u12', '{"a":"x"}'),
    ('{"a": [1, {"b": [true', '{"a": [1, {"b": [true]}]}'),
    ("[1, 2]", "{}"),
    ("hello", "{}"),
    ('{"a": 1} trailing', '{"a": 1} '),
    ('{"a": "\n"}', '{"a": ""}'),  # a raw newline cannot be in a JSON string
])
def test_object_text(text: str, expected: str) -> None:
    closed = object_text(text)
    assert closed == expected
    assert isinstance(json.loads(closed), dict)
    assert to_object(text) == json.loads(closed)


def _feed_in_pieces(text: str, rng: random.Random) -> str:
    scanner = ObjectPrefix()
    out, i = "", 0
    while i < len(text):
        step = rng.randint(1, 6)
        out += scanner.feed(text[i:i + step])
        i += step
    return out + scanner.close()


def test_valid_objects_pass_through_unchanged_in_any_pieces() -> None:
    rng = random.Random(7)
    value = {"a": [1, -2.5e3, True, None, {"x": 'he"llo\\ \n é 😀'}], "b": "", "c": {}, "d": 0}
    for _ in range(300):
        text = json.dumps(value, indent=rng.choice([None, 1]), ensure_ascii=rng.choice([True, False]))
        assert _feed_in_pieces(text, rng) == text


def test_damaged_objects_close_the_same_streamed_or_whole() -> None:
    rng = random.Random(11)
    base = json.dumps({"a": [1, 22.5, "x\\y", {"q": False}], "bb": "str\u1234"})
    for _ in range(600):
        k = rng.randint(0, len(base))
        text = base[:k] + rng.choice(["", "x", "}", ",", "]", '"', " "]) + base[k + rng.randint(0, 3):]
        streamed = _feed_in_pieces(text, rng)
        assert streamed == object_text(text)
        assert isinstance(json.loads(streamed), dict)


# ------------------------------------------------------------------------------- encoder


def _frames(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in data.decode().split("\n\n"):
        if frame:
            name, payload = frame.split("\n")
            out.append((name.removeprefix("event: "), json.loads(payload.removeprefix("data: "))))
    return out


def _encode(events: list[Event]) -> list[tuple[str, dict[str, Any]]]:
    encoder = EventEncoder("claude-x")
    return _frames(b"".join(encoder.encode(e) for e in events))


def test_bad_tool_json_streams_to_the_same_input_as_the_whole_answer() -> None:
    events: list[Event] = [MessageStart("chatcmpl-1", "m", 0, prompt_tokens=4),
                           PartStart(0, "tool_call", tool_call_id="call_1", tool_name="write"),
                           PartDelta(0, '{"path": "a.py", "content": "print(1)'), PartDelta(0, "\x01 oops"),
                           PartEnd(0), MessageEnd(FinishReason.TOOL_CALLS, Usage(4, 9))]
    frames = _encode(events)
    streamed = "".join(d["delta"]["partial_json"] for n, d in frames if n == "content_block_delta")
    accumulator = Accumulator()
    for event in events:
        accumulator.add(event)
    whole = render_message(accumulator.result(), "claude-x")
    assert json.loads(streamed) == whole["content"][0]["input"] == {"path": "a.py", "content": "print(1)"}
    assert whole["id"] == "msg_1" and whole["stop_reason"] == "tool_use"
    assert frames[-2][1]["usage"] == {"input_tokens": 4, "output_tokens": 9, "cache_creation_input_tokens": 0,
                                      "cache_read_input_tokens": 0}


def test_encoder_blocks_and_error_frame() -> None:
    frames = _encode([MessageStart("msg_abc", "m", 0), PartStart(0, "reasoning", redacted="opaque=="), PartEnd(0),
                      PartStart(1, "reasoning"), PartDelta(1, "hm"), PartEnd(1, signature="sig"),
                      StreamError(GatewayError(ErrorKind.OVERLOADED, "busy"))])
    names = [n for n, _ in frames]
    assert names == ["message_start", "ping", "content_block_start", "content_block_stop", "content_block_start",
                     "content_block_delta", "content_block_delta", "content_block_stop", "error"]
    assert frames[2][1]["content_block"] == {"type": "redacted_thinking", "data": "opaque=="}
    assert frames[6][1]["delta"] == {"type": "signature_delta", "signature": "sig"}
    assert frames[-1][1] == {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}


def test_encoder_starts_a_message_when_the_backend_did_not() -> None:
    frames = _encode([PartStart(0, "text"), PartDelta(0, "x"), PartEnd(0)])
    assert frames[0][0] == "message_start" and frames[0][1]["message"]["id"].startswith("msg_")


@pytest.mark.parametrize(("error", "status", "kind"), [
    (GatewayError(ErrorKind.OVERLOADED, "x", upstream_status=529), 529, "overloaded_error"),
    (GatewayError(ErrorKind.OVERLOADED, "x"), 503, "overloaded_error"),
    (GatewayError(ErrorKind.UPSTREAM_UNAVAILABLE, "x"), 503, "overloaded_error"),
    (GatewayError(ErrorKind.UPSTREAM_ERROR, "x"), 502, "api_error"),
    (GatewayError(ErrorKind.INTERNAL, "x"), 500, "api_error"),
    (GatewayError(ErrorKind.TIMEOUT, "x"), 504, "timeout_error"),
    (GatewayError(ErrorKind.NOT_FOUND, "x", code="model_not_found"), 404, "not_found_error"),
    (GatewayError(ErrorKind.PAYLOAD_TOO_LARGE, "x"), 413, "request_too_large"),
    (GatewayError(ErrorKind.RATE_LIMITED, "x", status=402, code="billing_error"), 402, "billing_error"),
    (GatewayError(ErrorKind.CONTEXT_TOO_LONG, "x"), 400, "invalid_request_error"),
])
def test_error_types_by_kind_and_status(error: GatewayError, status: int, kind: str) -> None:
    assert error_status(error) == status
    assert error_body(error)["error"]["type"] == kind


# ----------------------------------------------------------------------------- keepalive


async def test_keepalive_pings_while_waiting_and_loses_nothing() -> None:
    async def slow() -> AsyncIterator[Event]:
        for i in range(3):
            await asyncio.sleep(0.12)
            yield PartDelta(0, str(i))

    seen = [e async for e in keepalive(slow(), 0.05)]
    texts = [e.text for e in seen if isinstance(e, PartDelta)]
    assert texts == ["0", "1", "2"]
    assert seen.count(None) >= 3


async def test_keepalive_cancels_the_pending_event_when_closed() -> None:
    closed = asyncio.Event()

    async def stalled() -> AsyncIterator[Event]:
        try:
            yield PartDelta(0, "first")
            await asyncio.sleep(3600)
            yield PartDelta(0, "never")
        finally:
            closed.set()

    ticker = keepalive(stalled(), 0.02)
    assert isinstance(await anext(ticker), PartDelta)
    assert await anext(ticker) is None
    await ticker.aclose()
    assert closed.is_set()


# --------------------------------------------------------------------------- stream decoder


def _decode_all(raw: bytes, step: int) -> list[Event]:
    decoder = StreamDecoder("claude", "m")
    events: list[Event] = []
    for i in range(0, len(raw), step):
        for sse in decoder.sse.feed(raw[i:i + step]):
            events += decoder.decode(sse)
    for sse in decoder.sse.flush():
        events += decoder.decode(sse)
    return events + decoder.end_of_stream()



def _clock_free(events: list[Event]) -> list[Event]:
    """``events`` with the start's ``created`` zeroed: Anthropic streams carry no creation time, so
    the decoder stamps the second it saw ``message_start``, and two decodes can straddle a second."""
    return [replace(e, created=0) if isinstance(e, MessageStart) else e for e in events]


def test_decoder_on_a_real_sequence_split_anywhere() -> None:
    raw = b"".join(_events({"model": "claude-think", "messages": [{"role": "user", "content": "x"}]}))
    whole = _decode_all(raw, len(raw))
    for step in (1, 3, 7, 64):
        assert _clock_free(_decode_all(raw.replace(b"\n", b"\r\n"), step)) == _clock_free(whole)
    assert isinstance(whole[0], MessageStart) and abs(whole[0].created - time.time()) < 60
    accumulator = Accumulator()
    for event in whole:
        accumulator.add(event)
    response = accumulator.result()
    assert response.parts[0] == ReasoningPart(text=THINKING, signature=SIGNATURE)
    assert isinstance(response.parts[1], ToolCallPart)
    assert json.loads(response.parts[1].arguments) == {"city": "Paris", "unit": "celsius"}
    assert response.finish_reason is FinishReason.TOOL_CALLS
    assert (response.usage.prompt_tokens, response.usage.completion_tokens, response.usage.cached_tokens) == (30, 15, 5)


def test_decoder_maps_mid_stream_errors_by_type() -> None:
    raw = b"".join(_events({"model": "claude-midstream-error", "messages": []}))
    with pytest.raises(GatewayError) as caught:
        _decode_all(raw, 10)
    assert caught.value.kind is ErrorKind.OVERLOADED and caught.value.code == "overloaded_error"
    assert caught.value.upstream_status == 529


def test_decoder_refuses_a_stream_cut_before_the_end() -> None:
    raw = b"".join(_events({"model": "claude-truncated", "messages": []}))
    with pytest.raises(GatewayError, match="closed the stream"):
        _decode_all(raw, 10)


def test_decoder_refuses_a_stream_without_message_stop() -> None:
    """A stop reason in ``message_delta`` is not the end: only ``message_stop`` is."""
    raw = b"".join(_events({"model": "claude-nostop", "messages": []}))
    with pytest.raises(GatewayError) as caught:
        _decode_all(raw, 10)
    assert caught.value.kind is ErrorKind.UPSTREAM_ERROR
    assert caught.value.message == "upstream 'claude' closed the stream before the message ended (no message_stop)"


# ----------------------------------------------------------------------------- body builder


def test_body_merges_turns_and_orders_tool_results_first() -> None:
    request = ChatRequest(model="c", messages=[
        Message(Role.SYSTEM, [TextPart("one")]), Message(Role.SYSTEM, [TextPart("two")]),
        Message(Role.USER, [TextPart("hi"), ImagePart(data=b"\x89PNG\r\n\x1a\nxx")]),
        Message(Role.USER, [ImagePart(url="https://x/y.png")]),
        Message(Role.ASSISTANT, [ReasoningPart(text="unsigned"), TextPart(""), ReasoningPart(redacted="R"),
                                 ToolCallPart("t1", "f", '{"a":1}')]),
        Message(Role.TOOL, [ToolResultPart("t1", [TextPart("boom")], is_error=True)]),
        Message(Role.USER, [TextPart("and?")]),
    ], tools=[Tool("f", None, None)], tool_choice=ToolChoice(mode="none"),
        response_format=ResponseFormat(type="json_schema", schema={"type": "object"}),
        sampling=Sampling(top_k=3))
    body = build_body(request, "claude-x", AnthropicSettings())
    assert body["system"] == [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    assert [t["role"] for t in body["messages"]] == ["user", "assistant", "user"]
    first = body["messages"][0]["content"]
    assert first[1]["source"]["media_type"] == "image/png" and first[2]["source"] == {"type": "url",
                                                                                       "url": "https://x/y.png"}
    assert body["messages"][1]["content"] == [{"type": "redacted_thinking", "data": "R"},
                                              {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "t1", "content": "boom", "is_error": True},
        {"type": "text", "text": "and?"}]
    assert body["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]
    assert body["tool_choice"] == {"type": "none"}
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": {"type": "object"}}}
    assert body["top_k"] == 3 and body["max_tokens"] == 4096


def test_body_thinking_budget_rules() -> None:
    def body_for(reasoning: Reasoning, max_tokens: int | None = None) -> dict[str, Any]:
        request = ChatRequest(model="c", messages=[Message(Role.USER, [TextPart("q")])], reasoning=reasoning,
                              sampling=Sampling(max_tokens=max_tokens, temperature=1.0, top_p=0.99))
        return build_body(request, "c", AnthropicSettings(default_max_tokens=2000))

    body = body_for(Reasoning(enabled=True, budget_tokens=100))
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024} and body["max_tokens"] == 2000
    assert (body["temperature"], body["top_p"]) == (1.0, 0.99)  # the values thinking allows stay
    body = body_for(Reasoning(enabled=True, effort="medium"), max_tokens=500)
    assert body["thinking"]["budget_tokens"] == 8192 and body["max_tokens"] == 8692
    assert body_for(Reasoning(enabled=False))["thinking"] == {"type": "disabled"}
    assert "thinking" not in body_for(Reasoning())
