"""A static OpenAI-compatible upstream, cheap enough that it is never the bottleneck of a benchmark.

A raw ``asyncio.Protocol`` on uvloop with httptools parsing and every response precomputed as bytes:
no framework, no JSON work per request. It answers keep-alive HTTP/1.1 (pipelining included):

- ``GET /health``: 200 ``ok``;
- ``GET /stats``: requests served so far per ``METHOD path`` (JSON);
- ``GET /v1/models``: one model ``m``;
- ``POST /v1/chat/completions``: a fixed ``chat.completion``; when the body asks for ``"stream": true``
  a fixed SSE sequence (role chunk, 10 content chunks, finish chunk, usage chunk, ``[DONE]``) in
  chunked transfer encoding, one HTTP chunk per SSE frame, all written in one ``write``.

Run: ``python bench/upstream.py --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
from typing import cast

import httptools
import orjson
import uvloop

CREATED = 1_700_000_000
WORDS = ("The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".")
STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
# SSE events in one streamed answer: the role chunk, a chunk per word, the finish and usage chunks, [DONE].
STREAM_EVENTS = 1 + len(WORDS) + 2 + 1


def _chunk(delta: dict[str, object], finish: str | None) -> dict[str, object]:
    return {
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": CREATED, "model": "m",
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _response(status: bytes, content_type: bytes, body: bytes) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type
            + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _stream_response() -> bytes:
    usage = {"prompt_tokens": 12, "completion_tokens": len(WORDS), "total_tokens": 12 + len(WORDS)}
    events: list[object] = [_chunk({"role": "assistant", "content": ""}, None)]
    events += [_chunk({"content": word}, None) for word in WORDS]
    events.append(_chunk({}, "stop"))
    usage_chunk = _chunk({}, None)
    usage_chunk["choices"] = []
    usage_chunk["usage"] = usage
    events.append(usage_chunk)
    frames = [b"data: " + orjson.dumps(event) + b"\n\n" for event in events] + [b"data: [DONE]\n\n"]
    assert len(frames) == STREAM_EVENTS
    out = [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
           b"transfer-encoding: chunked\r\n\r\n"]
    out += [b"%x\r\n%s\r\n" % (len(frame), frame) for frame in frames]
    out.append(b"0\r\n\r\n")
    return b"".join(out)


def _completion_response() -> bytes:
    body = orjson.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": CREATED, "model": "m",
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(WORDS)},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": len(WORDS), "total_tokens": 12 + len(WORDS)},
    })
    return _response(b"200 OK", b"application/json", body)


class Responses:
    """Every answer, built once at start-up."""

    def __init__(self) -> None:
        self.completion = _completion_response()
        self.stream = _stream_response()
        self.models = _response(b"200 OK", b"application/json", orjson.dumps(
            {"object": "list", "data": [{"id": "m", "object": "model", "created": CREATED,
                                         "owned_by": "bench"}]}))
        self.health = _response(b"200 OK", b"text/plain", b"ok")
        self.not_found = _response(b"404 Not Found", b"application/json", orjson.dumps(
            {"error": {"message": "not found", "type": "invalid_request_error", "code": None}}))


class Counts:
    """Requests served per ``METHOD path``, so a harness can see how many upstream calls the
    proxy in front made per client request (``GET /stats``; not counted itself)."""

    def __init__(self) -> None:
        self.by_route: dict[str, int] = {}

    def add(self, method: bytes, path: bytes) -> None:
        key = f"{method.decode()} {path.decode(errors='replace')}"
        self.by_route[key] = self.by_route.get(key, 0) + 1

    def response(self) -> bytes:
        return _response(b"200 OK", b"application/json", orjson.dumps(self.by_route))


class UpstreamProtocol(asyncio.Protocol):
    """One connection: parse requests with httptools, answer each from the precomputed table."""

    def __init__(self, responses: Responses, counts: Counts) -> None:
        self.responses = responses
        self.counts = counts
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.write(self._answer(self.parser.get_method(), self.url.split(b"?", 1)[0]))
        if not self.parser.should_keep_alive():
            transport.close()

    def _answer(self, method: bytes, path: bytes) -> bytes:
        r = self.responses
        if path == b"/stats":
            return self.counts.response()
        self.counts.add(method, path)
        if path == b"/v1/chat/completions" and method == b"POST":
            return r.stream if STREAM_RE.search(b"".join(self.body)) else r.completion
        if path == b"/v1/models" and method == b"GET":
            return r.models
        if path == b"/health":
            return r.health
        return r.not_found


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    responses, counts = Responses(), Counts()
    server = await loop.create_server(lambda: UpstreamProtocol(responses, counts), host, port, backlog=4096,
                                      reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
