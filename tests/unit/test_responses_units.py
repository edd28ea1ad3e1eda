"""Units of the Responses API dialect and backend: the response store's bounds and owners, and the
upstream stream decoder on a recorded event sequence cut at every byte."""

from __future__ import annotations

import orjson
import pytest

from dragoman.backends.openai_responses import StreamDecoder, build_body
from dragoman.core.accumulate import Accumulator
from dragoman.core.events import Event
from dragoman.core.sse import SSEDecoder
from dragoman.core.types import ChatRequest, FinishReason, Message, ReasoningPart, Role, TextPart, ToolCallPart
from dragoman.dialects.responses.convert import parse_create
from dragoman.dialects.responses.store import ResponseStore
from dragoman.errors import GatewayError


def history(text: str) -> list[Message]:
    return [Message(Role.USER, [TextPart(text)])]


def test_store_keeps_the_newest_within_count_and_bytes() -> None:
    store = ResponseStore(max_entries=2, max_bytes=1 << 20)
    for n in range(3):
        assert store.put(f"resp_{n}", "key", {"id": f"resp_{n}"}, history("x"))
    assert len(store) == 2 and store.get("resp_0", "key") is None and store.get("resp_2", "key") is not None
    small = ResponseStore(max_entries=100, max_bytes=5000)
    assert not small.put("huge", "key", {}, history("x" * 10_000))  # bigger than the whole store
    for n in range(10):
        small.put(f"r{n}", "key", {}, history("y" * 1000))
    assert len(small) < 10 and small.get("r9", "key") is not None


def test_store_shows_a_response_only_to_its_key() -> None:
    store = ResponseStore(max_entries=10, max_bytes=1 << 20)
    store.put("resp_a", "alice", {"id": "resp_a"}, history("x"))
    assert store.get("resp_a", "bob") is None and store.get("resp_a", None) is None
    assert not store.delete("resp_a", "bob")
    assert store.delete("resp_a", "alice") and store.get("resp_a", "alice") is None


def test_an_off_store_keeps_nothing() -> None:
    store = ResponseStore(max_entries=0, max_bytes=1 << 20)
    assert not store.enabled and not store.put("r", None, {}, history("x"))


def _sse(kind: str, **data: object) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


RECORDED = b"".join([
    _sse("response.created", response={"id": "resp_1", "model": "m", "created_at": 5}),
    _sse("response.output_item.added", output_index=0, item={"type": "reasoning", "id": "rs_1", "summary": []}),
    _sse("response.reasoning_summary_text.delta", item_id="rs_1", delta="Hmm."),
    _sse("response.output_item.done", output_index=0, item={"type": "reasoning", "id": "rs_1",
                                                            "encrypted_content": "sig"}),
    _sse("response.output_item.added", output_index=1, item={"type": "message", "id": "msg_1"}),
    _sse("response.output_text.delta", item_id="msg_1", delta="Hé "),
    _sse("response.output_text.delta", item_id="msg_1", delta="there"),
    _sse("response.output_item.done", output_index=1, item={"type": "message", "id": "msg_1"}),
    _sse("response.output_item.added", output_index=2, item={"type": "function_call", "id": "fc_1",
                                                             "call_id": "call_1", "name": "f", "namespace": "ns"}),
    _sse("response.function_call_arguments.delta", item_id="fc_1", delta='{"a":'),
    _sse("response.function_call_arguments.delta", item_id="fc_1", delta="1}"),
    _sse("response.output_item.done", output_index=2, item={"type": "function_call", "id": "fc_1"}),
    _sse("response.completed", response={"id": "resp_1", "status": "completed", "usage": {
        "input_tokens": 3, "output_tokens": 4, "input_tokens_details": {"cached_tokens": 1},
        "output_tokens_details": {"reasoning_tokens": 2}}}),
])


@pytest.mark.parametrize("size", [1, 7, 64, len(RECORDED)])
def test_decoder_rebuilds_parts_however_the_bytes_arrive(size: int) -> None:
    frames, decoder, acc = SSEDecoder(), StreamDecoder("up", "m"), Accumulator()
    events: list[Event] = []
    for i in range(0, len(RECORDED), size):
        for frame in frames.feed(RECORDED[i:i + size]):
            events += decoder.decode(frame)
    events += decoder.end()
    for event in events:
        acc.add(event)
    response = acc.result()
    reasoning, text, call = response.parts
    assert reasoning == ReasoningPart(text="Hmm.", signature="sig")
    assert text == TextPart("Hé there")
    assert call == ToolCallPart(id="call_1", name="ns__f", arguments='{"a":1}')
    assert response.finish_reason is FinishReason.TOOL_CALLS
    assert (response.usage.prompt_tokens, response.usage.completion_tokens, response.usage.cached_tokens,
            response.usage.reasoning_tokens) == (3, 4, 1, 2)


def test_decoder_refuses_a_stream_without_its_end() -> None:
    decoder = StreamDecoder("up", "m")
    for frame in SSEDecoder().feed(RECORDED.rsplit(b"event: response.completed", 1)[0]):
        decoder.decode(frame)
    with pytest.raises(GatewayError, match=r"no response\.completed"):
        decoder.end()


def test_body_for_the_upstream_keeps_custom_and_namespace_tools() -> None:
    req = parse_create({"model": "m", "input": [
        {"role": "user", "content": "go"},
        {"type": "custom_tool_call", "call_id": "c1", "name": "sql", "input": "SELECT 1"},
        {"type": "custom_tool_call_output", "call_id": "c1", "output": "1"},
        {"type": "function_call", "call_id": "c2", "name": "find", "namespace": "crm", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c2", "output": "none"}],
        "tools": [{"type": "custom", "name": "sql"},
                  {"type": "namespace", "name": "crm", "tools": [{"type": "function", "name": "find"}]}]})
    body = build_body(req.chat, "m")
    assert body["tools"] == [{"type": "custom", "name": "sql"},
                             {"type": "namespace", "name": "crm", "tools": [{"type": "function", "name": "find"}]}]
    assert body["input"][1:] == [
        {"type": "custom_tool_call", "call_id": "c1", "name": "sql", "input": "SELECT 1"},
        {"type": "custom_tool_call_output", "call_id": "c1", "output": "1"},
        {"type": "function_call", "call_id": "c2", "name": "find", "arguments": "{}", "namespace": "crm"},
        {"type": "function_call_output", "call_id": "c2", "output": "none"}]
    plain = build_body(ChatRequest(model="m", messages=history("x")), "m")
    assert "tools" not in plain and plain["store"] is False
