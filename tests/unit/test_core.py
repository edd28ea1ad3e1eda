"""Pure core functions: stream decoders, part tracking, think splitting, accumulate/replay."""

from __future__ import annotations

import pytest

from dragoman.core.accumulate import Accumulator, replay_events
from dragoman.core.events import MessageEnd, MessageStart, PartDelta, PartEnd, PartStart, StreamError
from dragoman.core.parts import PartTracker
from dragoman.core.sse import NDJSONDecoder, SSEDecoder
from dragoman.core.think import ThinkSplitter
from dragoman.core.types import FinishReason, ReasoningPart, TextPart, ToolCallPart, Usage
from dragoman.errors import ErrorKind, GatewayError

SSE_FIXTURE = (
    b": keep-alive comment\r\n\r\n"
    b"event: message_start\r\ndata: {\"a\": 1}\r\n\r\n"
    b"data: line one\ndata: line two\n\n"
    b"data: {\"b\": 2}\r\n\r\n"
    b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 1000])
def test_sse_decoder_is_independent_of_chunking(size: int) -> None:
    decoder = SSEDecoder()
    events = []
    for i in range(0, len(SSE_FIXTURE), size):
        events += decoder.feed(SSE_FIXTURE[i:i + size])
    events += decoder.flush()
    assert [(e.event, e.data) for e in events] == [
        ("message_start", '{"a": 1}'),
        (None, "line one\nline two"),
        (None, '{"b": 2}'),
        (None, "[DONE]"),
    ]


def test_sse_decoder_keeps_a_final_event_without_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: {\"x\": 1}") == []
    assert [e.data for e in decoder.flush()] == ['{"x": 1}']


@pytest.mark.parametrize("size", [1, 4, 9, 100])
def test_ndjson_decoder_splits_lines_across_chunks(size: int) -> None:
    raw = b'{"a":1}\n\n{"b":2}\r\n{"c":3}'
    decoder = NDJSONDecoder()
    lines = []
    for i in range(0, len(raw), size):
        lines += decoder.feed(raw[i:i + size])
    lines += decoder.flush()
    assert lines == [b'{"a":1}', b'{"b":2}', b'{"c":3}']


def test_think_splitter_never_leaks_half_a_tag() -> None:
    splitter = ThinkSplitter()
    out = []
    for piece in ["<thi", "nk>Pond", "ering</th", "ink>\nAnswer", " <", "b>"]:
        out += splitter.feed(piece)
    out += splitter.flush()
    text = "".join(t for c, t in out if c == "text")
    reasoning = "".join(t for c, t in out if c == "reasoning")
    assert reasoning == "Pondering"
    assert text == "Answer <b>"
    assert all("<th" not in t for _, t in out)


def test_part_tracker_builds_sequential_blocks_and_tool_finish() -> None:
    tracker = PartTracker()
    events = tracker.start("id1", "m", 1)
    events += tracker.reasoning("hmm")
    events += tracker.text("Hi")
    events += tracker.tool_call(0, id="call_1", name="f", arguments='{"a"')
    events += tracker.tool_call(0, arguments=": 1}")
    events += tracker.tool_call(1, name="g", arguments="{}")
    tracker.finish(FinishReason.STOP)
    events += tracker.end()
    starts = [e for e in events if isinstance(e, PartStart)]
    assert [(s.index, s.kind) for s in starts] == [(0, "reasoning"), (1, "text"), (2, "tool_call"), (3, "tool_call")]
    assert starts[3].tool_call_id and starts[3].tool_call_id.startswith("call_")
    end = events[-1]
    assert isinstance(end, MessageEnd) and end.finish_reason is FinishReason.TOOL_CALLS
    acc = Accumulator()
    for event in events:
        acc.add(event)
    response = acc.result()
    assert response.parts == [ReasoningPart("hmm"), TextPart("Hi"), ToolCallPart("call_1", "f", '{"a": 1}'),
                              ToolCallPart(starts[3].tool_call_id, "g", "{}")]


def test_part_tracker_refuses_interleaved_tool_fragments() -> None:
    tracker = PartTracker()
    tracker.start("i", "m", 1)
    tracker.tool_call(0, name="a", arguments="{")
    tracker.tool_call(1, name="b", arguments="{")
    with pytest.raises(GatewayError):
        tracker.tool_call(0, arguments="}")


def test_replay_then_accumulate_round_trips() -> None:
    acc = Accumulator()
    original = [
        MessageStart("x", "m", 5, prompt_tokens=3),
        PartStart(0, "reasoning"), PartDelta(0, "why"), PartEnd(0, signature="sig=="),
        PartStart(1, "text"), PartDelta(1, "because"), PartEnd(1),
        MessageEnd(FinishReason.STOP_SEQUENCE, Usage(3, 2), "END"),
    ]
    for event in original:
        acc.add(event)
    response = acc.result()
    assert response.stop_sequence == "END"
    assert response.parts[0] == ReasoningPart("why", "sig==")
    again = Accumulator()
    for event in replay_events(response):
        again.add(event)
    assert again.result() == response


def test_accumulate_raises_stream_errors() -> None:
    acc = Accumulator()
    acc.add(MessageStart("x", "m", 1))
    with pytest.raises(GatewayError) as info:
        acc.add(StreamError(GatewayError(ErrorKind.TIMEOUT, "stalled")))
    assert info.value.kind is ErrorKind.TIMEOUT
