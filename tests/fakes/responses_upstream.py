"""A fake upstream that serves only the OpenAI Responses API (``POST /v1/responses``, streamed).

The model name picks the behaviour:

* ``resp-text``: ``"You said: <last user text>"`` in small deltas;
* ``resp-agent``: when the last input item is a tool output, ``"Tool said: <output>"``; otherwise
  a call of the first function or custom tool offered (a custom tool gets the input ``SELECT 1``,
  a function ``{"city": "Paris"}``), with its namespace when it came in one;
* ``resp-search``: when a hosted ``web_search`` tool is offered, a ``web_search_call`` item, then
  text that says so; else plain text;
* ``resp-reason``: a reasoning item (two summary parts, ``encrypted_content`` ``enc-1``), then text;
* ``resp-long``: ``response.incomplete`` (max_output_tokens) after some text;
* ``resp-fail``: ``response.failed`` (``server_error``) after ``response.created``;
* ``resp-cut``: some text, then the body ends with no terminal event.

Every request is recorded (path, headers, JSON body).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODELS = ["resp-text", "resp-agent", "resp-search", "resp-reason", "resp-long", "resp-fail", "resp-cut"]
USAGE = {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 5,
         "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 14}


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeResponsesUpstream:
    requests: list[Recorded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def last(self) -> Recorded:
        return [r for r in self.requests if r.path.endswith("/responses")][-1]

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/models", self.models, methods=["GET"]),
                                 Route("/v1/responses", self.responses, methods=["POST"]),
                                 Route("/v1/responses/input_tokens", self.input_tokens, methods=["POST"])])

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model", "created": 1700000000,
                                                         "owned_by": "fake"} for m in MODELS]})

    async def input_tokens(self, request: Request) -> Response:
        """A count that tests can tell from an estimate: 1000 plus the input items."""
        body = orjson.loads(await request.body())
        with self.lock:
            self.requests.append(Recorded(request.url.path, dict(request.headers), body))
        return JSONResponse({"object": "response.input_tokens", "input_tokens": 1000 + len(body["input"])})

    async def responses(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        with self.lock:
            self.requests.append(Recorded(request.url.path, dict(request.headers), body))
        if not body.get("stream"):
            return JSONResponse({"error": {"message": "this fake only streams", "type": "invalid_request_error",
                                           "param": "stream", "code": None}}, status_code=400)
        return StreamingResponse(iter(Script(body).frames()), media_type="text/event-stream")


class Script:
    """One answer's events, in OpenAI's order."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.response = {"id": "resp_up1", "object": "response", "created_at": 1700000000, "status": "in_progress",
                         "model": body["model"], "output": [], "usage": None, "error": None}

    def event(self, kind: str, **data: Any) -> bytes:
        frame = b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(
            {"type": kind, **data, "sequence_number": self.seq}) + b"\n\n"
        self.seq += 1
        return frame

    def message(self, text: str, pieces: int = 3) -> list[bytes]:
        index, item_id = len(self.output), f"msg_{len(self.output)}"
        part = {"type": "output_text", "text": "", "annotations": []}
        out = [self.event("response.output_item.added", output_index=index,
                          item={"type": "message", "id": item_id, "status": "in_progress", "role": "assistant",
                                "content": []}),
               self.event("response.content_part.added", item_id=item_id, output_index=index, content_index=0,
                          part=part)]
        step = max(1, len(text) // pieces)
        for i in range(0, len(text), step):
            out.append(self.event("response.output_text.delta", item_id=item_id, output_index=index,
                                  content_index=0, delta=text[i:i + step], logprobs=[]))
        done = {"type": "message", "id": item_id, "status": "completed", "role": "assistant",
                "content": [{**part, "text": text}]}
        self.output.append(done)
        return [*out, self.event("response.output_item.done", output_index=index, item=done)]

    def call(self, tool: dict[str, Any], namespace: str | None) -> list[bytes]:
        index, custom = len(self.output), tool["type"] == "custom"
        item: dict[str, Any] = {"type": "custom_tool_call" if custom else "function_call", "id": f"fc_{index}",
                                "call_id": "call_up1", "name": tool["name"], "status": "in_progress"}
        if namespace:
            item["namespace"] = namespace
        payload = "SELECT 1" if custom else '{"city": "Paris"}'
        out = [self.event("response.output_item.added", output_index=index,
                          item={**item, "input" if custom else "arguments": ""})]
        delta = "response.custom_tool_call_input.delta" if custom else "response.function_call_arguments.delta"
        for piece in (payload[:4], payload[4:]):
            out.append(self.event(delta, item_id=item["id"], output_index=index, delta=piece))
        done = {**item, "status": "completed", "input" if custom else "arguments": payload}
        self.output.append(done)
        return [*out, self.event("response.output_item.done", output_index=index, item=done)]

    def frames(self) -> list[bytes]:
        model, items, tools = self.body["model"], self.body["input"], self.body.get("tools") or []
        out = [self.event("response.created", response=self.response),
               self.event("response.in_progress", response=self.response)]
        if model == "resp-fail":
            failed = {**self.response, "status": "failed", "error": {"code": "server_error",
                                                                     "message": "the fake model fell over"}}
            return [*out, self.event("response.failed", response=failed)]
        last = items[-1] if isinstance(items, list) else {"role": "user", "content": items}
        if model == "resp-agent" and last.get("type") in ("function_call_output", "custom_tool_call_output"):
            out += self.message(f"Tool said: {last['output']}")
        elif model == "resp-agent" and tools:
            tool, namespace = tools[0], None
            if tool["type"] == "namespace":
                tool, namespace = tool["tools"][0], tool["name"]
            out += self.call(tool, namespace)
        elif model == "resp-search" and any(t.get("type") == "web_search" for t in tools):
            index = len(self.output)
            search = {"type": "web_search_call", "id": "ws_1", "status": "completed",
                      "action": {"type": "search", "query": "news"}}
            out += [self.event("response.output_item.added", output_index=index, item={**search,
                                                                                      "status": "in_progress"}),
                    self.event("response.output_item.done", output_index=index, item=search)]
            self.output.append(search)
            out += self.message("I searched the web.")
        elif model == "resp-reason":
            index = len(self.output)
            item = {"type": "reasoning", "id": "rs_1", "summary": []}
            out.append(self.event("response.output_item.added", output_index=index, item=item))
            summary = []
            for n, text in enumerate(("First thought.", "Second thought.")):
                out.append(self.event("response.reasoning_summary_part.added", item_id="rs_1", output_index=index,
                                      summary_index=n, part={"type": "summary_text", "text": ""}))
                out.append(self.event("response.reasoning_summary_text.delta", item_id="rs_1", output_index=index,
                                      summary_index=n, delta=text))
                summary.append({"type": "summary_text", "text": text})
            done = {**item, "summary": summary, "encrypted_content": "enc-1"}
            self.output.append(done)
            out.append(self.event("response.output_item.done", output_index=index, item=done))
            out += self.message("Reasoned answer.")
        else:
            content = last.get("content")
            text = content if isinstance(content, str) else " ".join(
                p.get("text", "") for p in content or [] if isinstance(p, dict))
            out += self.message(f"You said: {text}")
        if model == "resp-cut":
            return out
        final = {**self.response, "output": self.output, "usage": USAGE}
        if model == "resp-long":
            final = {**final, "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
            return [*out, self.event("response.incomplete", response=final)]
        return [*out, self.event("response.completed", response={**final, "status": "completed"})]
