"""Upstream stream framing: linear line splitting, the frame-size limit, and each wire format's end.

The decoders and the backends' stream calls are pure (bytes in, events out), so these need no
server; the same behaviour over real HTTP is in tests/integration/test_stream_limits.py.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from dragoman.backends.base import CallOptions, Timeouts, total_exceeded
from dragoman.backends.http import StreamCall
from dragoman.backends.ollama import OllamaBackend, OllamaSettings
from dragoman.backends.openai import OpenAIBackend, OpenAISettings
from dragoman.config import TimeoutConfig
from dragoman.core.events import Event, MessageEnd, PartDelta
from dragoman.core.sse import DEFAULT_MAX_FRAME, FrameTooLarge, LineSplitter, NDJSONDecoder, SSEDecoder
from dragoman.core.types import ChatRequest, FinishReason, Message, Role, TextPart
from dragoman.errors import ErrorKind, GatewayError

# ------------------------------------------------------------------------- line splitting


def _feed_seconds(size: int, chunk: int = 4096) -> float:
    """CPU seconds to decode one SSE line of ``size`` bytes arriving ``chunk`` bytes at a time."""
    raw = b"data: " + b"x" * size + b"\n\n"
    best = float("inf")
    for _ in range(3):
        decoder = SSEDecoder(max_frame=64 << 20)
        began = time.process_time()
        events = []
        for i in range(0, len(raw), chunk):
            events += decoder.feed(raw[i:i + chunk])
        best = min(best, time.process_time() - began)
        assert len(events) == 1 and len(events[0].data) == size
    return best


def test_a_long_line_in_small_chunks_costs_linear_time() -> None:
    """Eight times the bytes, about eight times the time (re-scanning the buffer on every chunk,
    as before, made it about sixty-four times: 8 MiB took seconds)."""
    small, large = _feed_seconds(1 << 20), _feed_seconds(8 << 20)
    # Below a few milliseconds the kernel's page faults for the growing buffer, not the splitter,
    # set the time (seen: 1 MiB 0.8 ms, 8 MiB 22 ms); the quadratic splitter took seconds.
    assert large / max(small, 5e-3) < 20, f"1 MiB: {small:.4f}s, 8 MiB: {large:.4f}s"
    assert large < 1.0


@pytest.mark.parametrize(("pieces", "lines"), [
    ([b"a\r", b"\nb\n"], [b"a", b"b"]),  # "\r\n" split across chunks: one line end
    ([b"a\rb\n"], [b"a", b"b"]),  # a lone "\r" ends a line
    ([b"a\r", b"b\n"], [b"a", b"b"]),  # ... also at the end of a chunk
    ([b"a", b"\r\n", b"\r\n", b"b\n"], [b"a", b"", b"b"]),  # an empty line between
])
def test_line_ends_across_chunks(pieces: list[bytes], lines: list[bytes]) -> None:
    splitter = LineSplitter()
    assert [line for piece in pieces for line in splitter.feed(piece)] == lines


@pytest.mark.parametrize("chunk", [1000, 1 << 20])
@pytest.mark.parametrize("decoder", [SSEDecoder, NDJSONDecoder])
def test_a_line_past_the_limit_raises(decoder: Any, chunk: int) -> None:
    limit = 64 << 10
    fits = b"data: " + b"y" * (limit - 6) + b"\n\n"  # a line of exactly ``limit`` bytes passes
    assert decoder(limit).feed(fits)
    raw = b"data: " + b"x" * limit + b"\n\n"
    stream = decoder(limit)
    with pytest.raises(FrameTooLarge) as caught:
        for i in range(0, len(raw), chunk):
            stream.feed(raw[i:i + chunk])
    assert caught.value.limit == limit


def test_a_partial_line_past_the_limit_raises_before_its_end_arrives() -> None:
    decoder = NDJSONDecoder(1024)
    decoder.feed(b"x" * 1000)
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"x" * 100)


def test_an_sse_event_past_the_limit_in_many_data_lines_raises() -> None:
    decoder = SSEDecoder(1024)
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"".join(b"data: " + b"z" * 100 + b"\n" for _ in range(11)))


def test_the_default_limit_is_a_few_megabytes() -> None:
    assert DEFAULT_MAX_FRAME == 8 << 20
    assert OpenAISettings(base_url="http://x").max_frame_bytes == DEFAULT_MAX_FRAME


# ------------------------------------------------------------------------ protocol ends


async def _run(call: StreamCall[Any], raw: bytes) -> list[Event]:
    events: list[Event] = []
    for frame in call.frames.feed(raw) + call.frames.flush():
        events += call.decode(frame)
    return events + call.end()


def _request() -> ChatRequest:
    return ChatRequest(model="m", messages=[Message(Role.USER, [TextPart("hi")])], stream=True)


async def _openai(raw: bytes) -> list[Event]:
    backend = OpenAIBackend("up", OpenAISettings(base_url="http://upstream.invalid/v1"))
    call = await backend.chat_call(_request(), "m", CallOptions())
    assert isinstance(call, StreamCall)
    return await _run(call, raw)


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return b"data: " + orjson.dumps({"id": "c", "choices": [{"index": 0, "delta": delta,
                                                             "finish_reason": finish}]}) + b"\n\n"


async def test_openai_ends_on_finish_reason_or_done_and_not_otherwise() -> None:
    text = _chunk({"content": "Hel"}) + _chunk({"content": "lo"})
    finished = await _openai(text + _chunk({}, "length"))  # no [DONE], as some servers end
    assert finished[-1] == MessageEnd(FinishReason.LENGTH, finished[-1].usage)  # type: ignore[union-attr]
    done_only = await _openai(text + b"data: [DONE]\n\n")
    assert isinstance(done_only[-1], MessageEnd) and done_only[-1].finish_reason is FinishReason.STOP
    with pytest.raises(GatewayError) as cut:
        await _openai(text)
    assert cut.value.kind is ErrorKind.UPSTREAM_ERROR
    assert cut.value.message == "upstream 'up' closed the stream before the answer finished (no finish_reason)"
    with pytest.raises(GatewayError, match="no finish_reason"):
        await _openai(b"")  # an empty body is no answer either


async def test_ollama_ends_only_on_done() -> None:
    backend = OllamaBackend("ol", OllamaSettings())
    line = orjson.dumps({"model": "m", "message": {"role": "assistant", "content": "Hi"}, "done": False}) + b"\n"
    done = orjson.dumps({"model": "m", "message": {"role": "assistant", "content": ""}, "done": True,
                         "done_reason": "stop", "eval_count": 1}) + b"\n"
    events = await _run(await backend.chat_call(_request(), "m", CallOptions()), line + done)
    assert PartDelta(0, "Hi") in events and isinstance(events[-1], MessageEnd)
    with pytest.raises(GatewayError) as cut:
        await _run(await backend.chat_call(_request(), "m", CallOptions()), line)
    assert cut.value.message == "upstream 'ol' closed the stream before the answer finished (no line with done: true)"


# ------------------------------------------------------------------------------ timeouts


def test_timeouts_name_the_setting_that_set_them() -> None:
    base = Timeouts(2, 5, 1, 30)
    assert base.limit("idle") == "idle timeout of 1s, timeouts.idle"
    model = base.with_limit("total", 300, "models['llama'].timeouts.total")
    overridden = model.with_limit("total", 6.5, "overrides['up/*'].request_timeout")
    assert overridden.total == 6.5 and overridden.limit("total") == (
        "total timeout of 6.5s, overrides['up/*'].request_timeout")
    assert overridden.limit("first_byte") == "first-byte timeout of 5s, timeouts.first_byte"
    assert total_exceeded(model).message == "request timed out (total timeout of 300s, models['llama'].timeouts.total)"
    assert not total_exceeded(model).retryable  # the request's time is up: no retry, no fallback


def test_a_total_limit_by_default() -> None:
    """An hour: an endless upstream ends, a long local generation has room."""
    assert TimeoutConfig().total == Timeouts().total == 3600.0
