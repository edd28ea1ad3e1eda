"""A fake OpenAI-compatible upstream speaking the real wire format, with scripted faults.

The model name picks the behaviour:

* ``gpt-test``: replies ``"You said: <last user text>"``, streamed in small chunks;
* ``gpt-tools``: two parallel tool calls, arguments streamed in fragments;
* ``gpt-reason``: ``reasoning_content`` deltas, then text;
* ``gpt-think``: text with inline ``<think>...</think>`` split across chunks;
* ``gpt-split``: the SSE bytes cut at awkward places (mid-line, mid-``\\r\\n``);
* ``gpt-nodone``: ends without ``data: [DONE]`` (clean EOF);
* ``gpt-nofinish``: some text, then a clean EOF with no ``finish_reason`` (nor ``[DONE]``): a
  truncated answer;
* ``gpt-drip``: a text chunk every 0.1 s, forever (asked for a whole answer: the JSON body's first
  bytes, then a space every 0.1 s, forever);
* ``gpt-giant``: one ``data:`` line of ``FakeOpenAI.giant_line_bytes`` bytes, sent 64 KiB at a time;
* ``gpt-eof``: the connection is cut mid-stream;
* ``gpt-stall``: stalls mid-stream forever; ``gpt-hang``: never answers (a client leaving counts
  as a disconnect);
* ``gpt-error-<status>``: an OpenAI-shaped error with that status (429 adds retry-after);
* ``gpt-midstream-error``: an ``{"error": ...}`` frame mid-stream;
* ``gpt-slow``: streams one chunk every 50 ms (for disconnect tests);
* ``gpt-short``: a context of 3 messages: more is ``context_length_exceeded``, else as ``gpt-test``;
* ``gpt-agent``: an agent's turn: when the last message is a tool result, ``"Tool said: <result>"``;
  otherwise a call of the first offered tool named in ``FakeOpenAI.agent_calls`` (with those
  arguments), else of the first offered tool with ``{}``, else plain text.

With ``tokenizer=True`` it also serves vLLM's ``/tokenize`` and ``/detokenize`` at its root (a
token per character: the id is the character's code point; chat messages as ``role: content`` lines).

Every request is recorded (path, headers, JSON body); streams record whether the client
went away before the end, and how many answers were in progress at once (``peak_streams``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

MODELS = ["gpt-test", "gpt-tools", "gpt-reason", "gpt-think", "gpt-split", "gpt-nodone", "gpt-eof",
          "gpt-stall", "gpt-hang", "gpt-error-400", "gpt-error-401", "gpt-error-429", "gpt-error-500",
          "gpt-error-503", "gpt-midstream-error", "gpt-slow", "text-embedding-test", "gpt-context",
          "gpt-nofinish", "gpt-drip", "gpt-giant", "gpt-agent", "gpt-short"]
DRIP_INTERVAL = 0.1
GIANT_PIECE = 64 << 10


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeOpenAI:
    requests: list[Recorded] = field(default_factory=list)
    disconnects: int = 0
    completed_streams: int = 0
    open_streams: int = 0
    peak_streams: int = 0  # the most answers in progress at once (reset it before a measurement)
    giant_line_bytes: int = 64 << 20
    # gpt-agent: tool name -> the JSON arguments it calls that tool with.
    agent_calls: dict[str, str] = field(default_factory=lambda: {"get_weather": '{"city": "Paris"}'})
    tokenizer: bool = False  # serve vLLM's /tokenize and /detokenize
    max_model_len: int = 2048
    lock: threading.Lock = field(default_factory=threading.Lock)

    def last(self, path_suffix: str = "/chat/completions") -> Recorded:
        return [r for r in self.requests if r.path.endswith(path_suffix)][-1]

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            *([Route("/tokenize", self.tokenize, methods=["POST"]),
               Route("/detokenize", self.detokenize, methods=["POST"])] if self.tokenizer else []),
        ])

    async def tokenize(self, request: Request) -> Response:
        body = await self._record(request)
        if "prompt" in body:
            text = ("\x01" if body.get("add_special_tokens", True) else "") + body["prompt"]
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in body["messages"])
        tokens = [ord(c) for c in text]
        return JSONResponse({"count": len(tokens), "max_model_len": self.max_model_len, "tokens": tokens})

    async def detokenize(self, request: Request) -> Response:
        body = await self._record(request)
        return JSONResponse({"prompt": "".join(chr(t) for t in body["tokens"])})

    async def _record(self, request: Request) -> Any:
        body = orjson.loads(await request.body()) if request.method == "POST" else None
        with self.lock:
            self.requests.append(Recorded(request.url.path, dict(request.headers), body))
        return body

    async def models(self, request: Request) -> Response:
        await self._record(request)
        return JSONResponse({"object": "list", "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"} for m in MODELS]})

    async def embeddings(self, request: Request) -> Response:
        body = await self._record(request)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        import array
        import base64

        data = []
        for i, text in enumerate(inputs):
            vector = [float(len(text)), 1.0, -0.5]
            if body.get("encoding_format") == "base64":
                data.append({"object": "embedding", "index": i,
                             "embedding": base64.b64encode(array.array("f", vector).tobytes()).decode()})
            else:
                data.append({"object": "embedding", "index": i, "embedding": vector})
        return JSONResponse({"object": "list", "data": data, "model": body["model"],
                             "usage": {"prompt_tokens": 7, "total_tokens": 7}})

    async def completions(self, request: Request) -> Response:
        body = await self._record(request)
        n = body.get("n") or 1  # as OpenAI: n choices, each prompt token counted once
        texts = [f"completed: {body['prompt']}" + (f" #{i}" if i else "") for i in range(n)]
        base = {"id": "cmpl-up1", "object": "text_completion", "created": 1700000000, "model": body["model"]}
        usage = {"prompt_tokens": 2, "completion_tokens": 3 * n, "total_tokens": 2 + 3 * n}
        if not body.get("stream"):
            return JSONResponse({**base, "choices": [{"text": text, "index": i, "logprobs": None,
                                                      "finish_reason": "stop"} for i, text in enumerate(texts)],
                                 "usage": usage})

        async def frames() -> Any:
            for piece in (slice(0, 5), slice(5, None)):
                for i, text in enumerate(texts):
                    yield _sse({**base, "choices": [{"text": text[piece], "index": i, "finish_reason": None}]})
            for i in range(n):
                yield _sse({**base, "choices": [{"text": "", "index": i, "finish_reason": "stop"}]})
            yield _sse({**base, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(frames(), media_type="text/event-stream")

    async def chat(self, request: Request) -> Response:
        body = await self._record(request)
        model: str = body["model"]
        if model.startswith("gpt-error-"):
            status = int(model.rsplit("-", 1)[1])
            headers = {"retry-after": "2"} if status == 429 else {}
            return JSONResponse({"error": {"message": f"fake upstream failure {status}", "type": "fake_error",
                                           "param": None, "code": f"fake_{status}"}},
                                status_code=status, headers=headers)
        if model == "gpt-context" or (model == "gpt-short" and len(body["messages"]) > 3):
            return JSONResponse({"error": {"message": "This model's maximum context length is 10 tokens",
                                           "type": "invalid_request_error", "param": "messages",
                                           "code": "context_length_exceeded"}}, status_code=400)
        if model == "gpt-hang":  # until the client gives up, which counts as a disconnect
            await _wait_disconnect(request.receive)
            with self.lock:
                self.disconnects += 1
            return Response(status_code=204)
        frames = self._frames(body)
        if not body.get("stream") and model == "gpt-midstream-error":
            return JSONResponse({"error": {"message": "upstream exploded", "type": "server_error", "param": None,
                                           "code": None}}, status_code=500)
        return _TrackedStream(self, frames, model, whole=not body.get("stream"))

    def _frames(self, body: dict[str, Any]) -> list[bytes]:
        """The answer's frames; with ``n`` > 1 (as OpenAI) every choice's chunks interleaved, each
        with its ``index``, then one usage chunk for all (the prompt counted once)."""
        n = body.get("n") or 1
        if n == 1:
            return self._choice_frames(body, 0)
        per_choice = [[f for f in self._choice_frames(body, c) if b'"choices":[]' not in f and b"[DONE]" not in f]
                      for c in range(n)]
        out = [frame for frames in itertools.zip_longest(*per_choice) for frame in frames if frame is not None]
        base = {"id": "chatcmpl-up123", "object": "chat.completion.chunk", "created": 1700000000,
                "model": body["model"]}
        out.append(_sse({**base, "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7 * n,
                                                          "total_tokens": 11 + 7 * n}}))
        return [*out, b"data: [DONE]\n\n"]

    def _choice_frames(self, body: dict[str, Any], choice: int) -> list[bytes]:
        """Choice ``index``'s frames (choice 0 is the whole answer when ``n`` is 1); a choice after
        the first says so at the end of its text, so a test can tell them apart."""
        model = body["model"]
        last_user = next((m for m in reversed(body["messages"]) if m["role"] == "user"), {"content": ""})
        content = last_user["content"]
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if p.get("type") == "text")
        base = {"id": "chatcmpl-up123", "object": "chat.completion.chunk", "created": 1700000000, "model": model}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            logprobs = None
            if body.get("logprobs") and delta.get("content"):  # a made-up logprob per chunk, alternatives as asked
                token = delta["content"]
                logprobs = {"content": [{"token": token, "logprob": -0.25, "bytes": list(token.encode()),
                                         "top_logprobs": [{"token": token, "logprob": -0.25 - i,
                                                           "bytes": list(token.encode())}
                                                          for i in range(body.get("top_logprobs") or 0)]}],
                            "refusal": None}
            return _sse({**base, "choices": [{"index": choice, "delta": delta, "logprobs": logprobs,
                                              "finish_reason": finish}]})

        out = [chunk({"role": "assistant", "content": ""})]
        finish = "stop"
        if model == "gpt-tools":
            calls = [("call_a", "get_weather", '{"city": "Paris"}'), ("call_b", "get_time", '{"tz": "UTC"}')]
            for index, (call_id, name, args) in enumerate(calls):
                out.append(chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                                  "function": {"name": name, "arguments": ""}}]}))
                for piece in (args[:6], args[6:]):
                    out.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
            finish = "tool_calls"
        elif model == "gpt-agent" and body["messages"][-1]["role"] != "tool" and body.get("tools"):
            offered = [t["function"]["name"] for t in body["tools"]]
            name = next((n for n in offered if n in self.agent_calls), offered[0])
            args = self.agent_calls.get(name, "{}")
            out.append(chunk({"tool_calls": [{"index": 0, "id": "call_agent1", "type": "function",
                                              "function": {"name": name, "arguments": ""}}]}))
            out.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": args}}]}))
            finish = "tool_calls"
        elif model == "gpt-agent" and body["messages"][-1]["role"] == "tool":
            result = body["messages"][-1]["content"]
            out.append(chunk({"content": f"Tool said: {result}"}))
        elif model == "gpt-reason":
            for piece in ("Let me ", "think."):
                out.append(chunk({"reasoning_content": piece}))
            out.append(chunk({"content": "Answer."}))
        elif model == "gpt-think":
            for piece in ("<thi", "nk>Pondering", " deeply</th", "ink>\nThe ", "answer."):
                out.append(chunk({"content": piece}))
        elif model == "gpt-midstream-error":
            out.append(chunk({"content": "partial "}))
            out.append(_sse({"error": {"message": "upstream exploded", "type": "server_error"}}))
            return out
        elif model == "gpt-nofinish":
            return [*out, chunk({"content": "The answer is cut "}), chunk({"content": "short"})]
        elif model == "gpt-drip":
            return out  # _TrackedStream adds a chunk every DRIP_INTERVAL seconds, forever
        elif model == "gpt-giant":
            line = chunk({"content": "x" * self.giant_line_bytes})
            out += [line[i:i + GIANT_PIECE] for i in range(0, len(line), GIANT_PIECE)]
        else:
            text = f"You said: {content}" + (f" #{choice}" if choice else "")
            for i in range(0, len(text), 4):
                out.append(chunk({"content": text[i:i + 4]}))
        out.append(chunk({}, finish))
        out.append(_sse({**base, "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7,
                                                          "total_tokens": 18}}))
        if model != "gpt-nodone":
            out.append(b"data: [DONE]\n\n")
        if model == "gpt-split":
            raw = b"".join(out).replace(b"\n", b"\r\n")
            out = [raw[i:i + 7] for i in range(0, len(raw), 7)]
        return out


class _TrackedStream(Response):
    """Streams frames and notes whether the client left before the end."""

    def __init__(self, fake: FakeOpenAI, frames: list[bytes], model: str, *, whole: bool = False) -> None:
        super().__init__(media_type="application/json" if whole else "text/event-stream")
        self.fake, self.frames, self.model, self.whole = fake, frames, model, whole

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self.fake.lock:
            self.fake.open_streams += 1
            self.fake.peak_streams = max(self.fake.peak_streams, self.fake.open_streams)
        producer = asyncio.ensure_future(self._produce(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if watcher.done() and not producer.done():
                producer.cancel()
                with self.fake.lock:
                    self.fake.disconnects += 1
            else:
                watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
        finally:
            watcher.cancel()
            with self.fake.lock:
                self.fake.open_streams -= 1

    async def _produce(self, send: Send) -> None:
        """Plays the frames with the model's faults; a whole answer is sent only at the end."""
        headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        if not self.whole:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
        if self.model == "gpt-drip":
            await self._drip(send, headers)
        for i, frame in enumerate(self.frames):
            if self.model == "gpt-eof" and i == 3:
                # Mid-stream means after the client has the first frames: the cut comes a moment
                # later, or aiohttp, seeing data and EOF in one read, reports only the broken body.
                await asyncio.sleep(0.1)
                raise _CutConnection
            if self.model == "gpt-stall" and i == 3:
                await asyncio.sleep(3600)
            if self.model == "gpt-slow":
                await asyncio.sleep(0.05)
            if not self.whole:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
        if self.whole:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": orjson.dumps(whole_answer(self.frames)),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        with self.fake.lock:
            self.fake.completed_streams += 1


    async def _drip(self, send: Send, headers: list[tuple[bytes, bytes]]) -> None:
        """Data every DRIP_INTERVAL seconds, never an end: only the client leaving stops it."""
        if self.whole:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b'{"id": "chatcmpl-drip"', "more_body": True})
            piece = b" "
        else:
            await send({"type": "http.response.body", "body": self.frames[0], "more_body": True})
            piece = _sse({"id": "chatcmpl-up123", "object": "chat.completion.chunk", "created": 1700000000,
                          "model": self.model, "choices": [{"index": 0, "delta": {"content": "drip "},
                                                            "logprobs": None, "finish_reason": None}]})
        while True:
            await asyncio.sleep(DRIP_INTERVAL)
            await send({"type": "http.response.body", "body": piece, "more_body": True})


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _CutConnection(Exception):
    """Raised inside the ASGI app mid-body: uvicorn then drops the connection."""


def whole_answer(frames: list[bytes]) -> dict[str, Any]:
    """The ``chat.completion`` body that the given chunk frames add up to."""
    raw = b"".join(frames).replace(b"\r\n", b"\n")
    chunks = [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]
    usage = None
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            state = choices.setdefault(choice.get("index", 0), {"content": "", "reasoning": "", "finish": None,
                                                                "calls": {}, "logprobs": []})
            delta = choice["delta"]
            state["logprobs"] += (choice.get("logprobs") or {}).get("content") or []
            state["content"] += delta.get("content") or ""
            state["reasoning"] += delta.get("reasoning_content") or ""
            for call in delta.get("tool_calls") or []:
                entry = state["calls"].setdefault(call["index"], {"id": call.get("id"), "type": "function",
                                                                  "function": {"name": "", "arguments": ""}})
                entry["function"]["name"] += call.get("function", {}).get("name") or ""
                entry["function"]["arguments"] += call.get("function", {}).get("arguments") or ""
            state["finish"] = choice.get("finish_reason") or state["finish"]
    bodies = []
    for index in sorted(choices):
        state = choices[index]
        calls = state["calls"]
        message: dict[str, Any] = {"role": "assistant", "content": state["content"] or (None if calls else "")}
        if state["reasoning"]:
            message["reasoning_content"] = state["reasoning"]
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        logprobs = state["logprobs"]
        bodies.append({"index": index, "message": message,
                       "logprobs": {"content": logprobs, "refusal": None} if logprobs else None,
                       "finish_reason": state["finish"] or "stop"})
    first = chunks[0]
    return {"id": first["id"], "object": "chat.completion", "created": first["created"], "model": first["model"],
            "choices": bodies, "usage": usage}


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())
