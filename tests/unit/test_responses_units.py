"""Units of the Responses API dialect and backend: the stored conversation's JSON form and owners,
and the upstream stream decoder on a recorded event sequence cut at every byte."""

from __future__ import annotations

import orjson
import pytest

from dragoman.backends.openai_responses import StreamDecoder, build_body
from dragoman.core.accumulate import Accumulator
from dragoman.core.events import Event
from dragoman.core.sse import SSEDecoder
from dragoman.core.types import (
    ChatRequest,
    FinishReason,
    ImagePart,
    Message,
    ReasoningPart,
    Role,
    TextPart,
    ToolCallPart,
    ToolResultPart,
)
from dragoman.dialects.responses.convert import parse_create
from dragoman.dialects.responses.store import history_json, history_of, owner_of
from dragoman.errors import GatewayError


def test_a_conversation_survives_its_json_form_byte_exact() -> None:
    conversation = [
        Message(Role.SYSTEM, [TextPart("rules")]),
        Message(Role.USER, [TextPart("look"), ImagePart(data=b"\x89PNG\x00\xff", media_type="image/png", detail="low"),
                            ImagePart(url="https://example.com/cat.png")], name="ann"),
        Message(Role.ASSISTANT, [ReasoningPart(text="Hmm.", signature="sig+/="), ReasoningPart(redacted="opaque"),
                                 TextPart("calling"), ToolCallPart(id="call_1", name="f", arguments='{"a": 1 }')]),
        Message(Role.TOOL, [ToolResultPart(tool_call_id="call_1", name="f", is_error=True, content=[
            TextPart("out"), ImagePart(data=b"img", media_type="image/jpeg")])]),
    ]
    as_json = history_json(conversation)
    assert orjson.loads(orjson.dumps(as_json)) == as_json  # plain JSON, nothing else
    assert history_of(as_json) == conversation


def test_an_owner_is_a_digest_of_the_key() -> None:
    assert owner_of("sk-1") != owner_of("sk-2")
    assert owner_of(None) == owner_of("") and len(owner_of("sk-1")) == 64
    assert "sk-1" not in owner_of("sk-1")


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
    plain = build_body(ChatRequest(model="m", messages=[Message(Role.USER, [TextPart("x")])]), "m")
    assert "tools" not in plain and plain["store"] is False
