"""A fake Anthropic Messages API replaying real event sequences (wire-formats.md 3.4), with faults.

The model name picks the behaviour:

* ``claude-text``: ``message_start``, a ``ping``, one text block in three deltas, ``message_delta``
  with cumulative usage, ``message_stop``;
* ``claude-echo``: replies ``"Echo: <last user text>"`` (and ``"Result: <text>"`` after a tool result);
* ``claude-tools``: a text block, then a ``tool_use`` whose input arrives as ``input_json_delta``
  fragments; stop reason ``tool_use``;
* ``claude-think``: a thinking block (``thinking_delta`` x2 then ``signature_delta``) and a
  ``tool_use``. On the next turn (the last user turn holds a ``tool_result``) it checks that the
  assistant turn sent back starts with that very thinking block, byte-exact, before the
  ``tool_use``, and answers ``"verified: <result>"``; otherwise it answers 400;
* ``claude-redacted``: a ``redacted_thinking`` block, then text;
* ``claude-max``: stop reason ``max_tokens``; ``claude-stop``: ``stop_sequence`` with the first
  of the request's ``stop_sequences``;
* ``claude-split``: ``claude-text``'s bytes cut at awkward places with ``\\r\\n`` line ends;
* ``claude-error-529`` / ``-429`` (``retry-after: 7``) / ``-400``: Anthropic error bodies;
* ``claude-midstream-error``: an ``event: error`` (``overloaded_error``) after some text;
* ``claude-truncated``: the stream ends (cleanly) before ``message_delta``;
* ``claude-nostop``: the stream ends (cleanly) after ``message_delta``, without ``message_stop``;
* ``claude-drip``: a text delta every 0.1 s, forever;
* ``claude-giant``: one ``data:`` line of ``FakeAnthropic.giant_line_bytes`` bytes, 64 KiB at a time.

``GET /v1/models`` pages by 3 (so discovery must follow ``has_more``/``after_id``).
Every request is recorded (path, headers, JSON body and its raw bytes).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODELS = ["claude-text", "claude-echo", "claude-tools", "claude-think", "claude-redacted", "claude-max",
          "claude-stop", "claude-split", "claude-error-529", "claude-error-429", "claude-error-400",
          "claude-midstream-error", "claude-truncated", "claude-nostop", "claude-drip", "claude-giant"]
DRIP_INTERVAL = 0.1
GIANT_PIECE = 64 << 10

THINKING = "The user wants the weather. I should call get_weather for Paris."
# A realistic signature: base64 with '+', '/' and '=' so any re-encoding would show.
SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds+/Zv3aSdKk9dw==/x+Q=="
REDACTED = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP=="
TOOL_ID = "toolu_01A09q90qw90lq917835lq9"
TOOL_INPUT_FRAGMENTS = ['{"city": "Pa', 'ris", "unit', '": "celsius"}']
ERRORS: dict[int, tuple[str, str]] = {
    529: ("overloaded_error", "Overloaded"),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
    400: ("invalid_request_error", "messages: roles must alternate between \"user\" and \"assistant\""),
}


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any
    query: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""


@dataclass
class FakeAnthropic:
    requests: list[Recorded] = field(default_factory=list)
    giant_line_bytes: int = 64 << 20
    lock: threading.Lock = field(default_factory=threading.Lock)

    def last(self, path: str = "/v1/messages") -> Recorded:
        return [r for r in self.requests if r.path == path][-1]

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/messages", self.messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
        ])

    async def _record(self, request: Request) -> Any:
        raw = await request.body()
        body = orjson.loads(raw) if request.method == "POST" else None
        with self.lock:
            self.requests.append(Recorded(request.url.path, dict(request.headers), body,
                                          dict(request.query_params), raw))
        return body

    async def models(self, request: Request) -> Response:
        await self._record(request)
        after = request.query_params.get("after_id")
        start = MODELS.index(after) + 1 if after in MODELS else 0
        page = MODELS[start:start + 3]
        data = [{"type": "model", "id": m, "display_name": m.title(), "created_at": "2025-02-19T00:00:00Z"}
                for m in page]
        return JSONResponse({"data": data, "has_more": start + 3 < len(MODELS),
                             "first_id": page[0] if page else None, "last_id": page[-1] if page else None})

    async def count_tokens(self, request: Request) -> Response:
        await self._record(request)
        return JSONResponse({"input_tokens": 42})

    async def messages(self, request: Request) -> Response:
        body = await self._record(request)
        model: str = body["model"]
        if not body.get("stream"):
            return _error(400, "invalid_request_error", "the fake only streams")
        if model.startswith("claude-error-"):
            status = int(model.rsplit("-", 1)[1])
            kind, message = ERRORS[status]
            return _error(status, kind, message, {"retry-after": "7"} if status == 429 else None)
        if model == "claude-think" and _last_tool_result(body) is not None:
            problem = _check_thinking_turn(body)
            if problem:
                return _error(400, "invalid_request_error", problem)
        if model == "claude-drip":
            return StreamingResponse(_dripping(body), media_type="text/event-stream")
        frames = _events(body)
        if model == "claude-giant":  # the first text delta (frames[3]) made huge
            giant = sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
                "type": "text_delta", "text": "x" * self.giant_line_bytes}})
            frames[3:4] = [giant[i:i + GIANT_PIECE] for i in range(0, len(giant), GIANT_PIECE)]
        if model == "claude-split":
            raw = b"".join(frames).replace(b"\n", b"\r\n")
            frames = [raw[i:i + 5] for i in range(0, len(raw), 5)]
        return StreamingResponse(iter(frames), media_type="text/event-stream",
                                 headers={"request-id": "req_fake"})


async def _dripping(body: dict[str, Any]) -> Any:
    """``message_start``, a text block's start, then a text delta every DRIP_INTERVAL seconds, forever."""
    for frame in _events({**body, "model": "claude-text"})[:3]:
        yield frame
    delta = sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": "drip "}})
    while True:
        await asyncio.sleep(DRIP_INTERVAL)
        yield delta


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake"},
                        status_code=status, headers=headers)


def sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body["messages"]):
        if message["role"] != "user":
            continue
        content = message["content"]
        if isinstance(content, str):
            return content
        return " ".join(b["text"] for b in content if b.get("type") == "text")
    return ""


def _last_tool_result(body: dict[str, Any]) -> str | None:
    last = body["messages"][-1]
    if last["role"] != "user" or isinstance(last["content"], str):
        return None
    for block in last["content"]:
        if block.get("type") == "tool_result":
            content = block.get("content")
            if isinstance(content, list):
                return " ".join(b.get("text", "") for b in content if b.get("type") == "text")
            return str(content or "")
    return None


def _check_thinking_turn(body: dict[str, Any]) -> str | None:
    """What is wrong with the assistant turn before the tool result, or None."""
    assistant = body["messages"][-2]
    if assistant["role"] != "assistant" or isinstance(assistant["content"], str):
        return "expected an assistant turn with content blocks before the tool result"
    blocks = assistant["content"]
    if not blocks or blocks[0] != {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE}:
        return f"the thinking block did not come back byte-exact first: {blocks[:1]!r}"
    tool = [b for b in blocks if b.get("type") == "tool_use"]
    if not tool or tool[0]["id"] != TOOL_ID or blocks.index(tool[0]) < 1:
        return "the tool_use block must follow the thinking block"
    return None


def _events(body: dict[str, Any]) -> list[bytes]:
    model = body["model"]
    usage = {"input_tokens": 25, "output_tokens": 1, "cache_creation_input_tokens": 0,
             "cache_read_input_tokens": 5}
    start = {"type": "message_start", "message": {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "content": [],
        "model": model, "stop_reason": None, "stop_sequence": None, "usage": usage}}
    out = [sse("message_start", start), sse("ping", {"type": "ping"})]
    stop_reason, stop_sequence, output_tokens = "end_turn", None, 15

    def text_block(index: int, pieces: list[str]) -> None:
        out.append(sse("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": {"type": "text", "text": ""}}))
        for piece in pieces:
            out.append(sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                   "delta": {"type": "text_delta", "text": piece}}))
        out.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))

    def tool_block(index: int) -> None:
        out.append(sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": {
            "type": "tool_use", "id": TOOL_ID, "name": "get_weather", "input": {}}}))
        out.append(sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                               "delta": {"type": "input_json_delta", "partial_json": ""}}))
        for piece in TOOL_INPUT_FRAGMENTS:
            out.append(sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                   "delta": {"type": "input_json_delta", "partial_json": piece}}))
        out.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))

    if model in ("claude-text", "claude-split", "claude-nostop", "claude-giant"):
        text_block(0, ["Hello", " from", " Claude"])
    elif model == "claude-echo":
        result = _last_tool_result(body)
        text_block(0, [f"Result: {result}" if result is not None else f"Echo: {_last_user_text(body)}"])
    elif model == "claude-tools":
        text_block(0, ["Let me check."])
        tool_block(1)
        stop_reason = "tool_use"
    elif model == "claude-think":
        result = _last_tool_result(body)
        if result is not None:
            text_block(0, [f"verified: {result}"])
        else:
            out.append(sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
                "type": "thinking", "thinking": "", "signature": ""}}))
            half = len(THINKING) // 2
            for piece in (THINKING[:half], THINKING[half:]):
                out.append(sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                       "delta": {"type": "thinking_delta", "thinking": piece}}))
            out.append(sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                   "delta": {"type": "signature_delta", "signature": SIGNATURE}}))
            out.append(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
            tool_block(1)
            stop_reason = "tool_use"
    elif model == "claude-redacted":
        out.append(sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
            "type": "redacted_thinking", "data": REDACTED}}))
        out.append(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
        text_block(1, ["Done."])
    elif model == "claude-max":
        text_block(0, ["This answer is cut"])
        stop_reason, output_tokens = "max_tokens", int(body["max_tokens"])
    elif model == "claude-stop":
        text_block(0, ["Counting: 1, 2, "])
        stop_reason, stop_sequence = "stop_sequence", (body.get("stop_sequences") or ["3"])[0]
    elif model == "claude-midstream-error":
        text_block(0, ["partial"])
        out.append(sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
        return out
    elif model == "claude-truncated":
        text_block(0, ["cut short"])
        return out
    out.append(sse("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                                     "usage": {"output_tokens": output_tokens}}))
    if model != "claude-nostop":
        out.append(sse("message_stop", {"type": "message_stop"}))
    return out
