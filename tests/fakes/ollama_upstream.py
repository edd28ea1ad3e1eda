"""A fake Ollama server speaking the real wire format (NDJSON streams), with scripted behaviours.

The model name picks the behaviour of ``/api/chat`` and ``/api/generate``:

* ``llama3:latest``: replies ``"You said: <last user text>"`` in small chunks (generate:
  ``"Generated: <prompt>"``); with ``think`` set, ``thinking`` chunks come first;
* ``tools:latest``: one chunk with two whole tool calls and no ids, then ``done_reason: stop``;
* ``thinker:latest``: ``message.thinking`` chunks, then content;
* ``long:latest``: some content, then ``done_reason: length``;
* ``split:latest``: the NDJSON bytes cut every 5 bytes (mid-line, mid-UTF-8 character);
* ``midstream-error:latest``: a chunk, then an ``{"error": ...}`` line;
* ``nodone:latest``: content, then EOF without a ``done`` line (a truncated answer);
* ``drip:latest``: a content line every 0.1 s, forever;
* ``giant:latest``: one content line of ``FakeOllama.giant_line_bytes`` bytes, sent 64 KiB at a time;
* ``ghost:latest``: listed by ``/api/tags`` but answers 404 as a deleted model does;
* ``embed:latest``: an embedding model (``/api/embed``).

Unknown models answer 404 ``{"error": "model \\"x\\" not found, try pulling it first"}``.
Models can be added while it runs (:meth:`FakeOllama.add_model`). Every request is recorded.
``/img.png`` serves a small PNG (for image-URL fetching).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
CREATED_AT = "2025-01-02T03:04:05.123456789Z"
CHAT_MODELS = ["llama3:latest", "tools:latest", "thinker:latest", "long:latest", "split:latest",
               "midstream-error:latest", "nodone:latest", "ghost:latest", "drip:latest", "giant:latest"]
DRIP_INTERVAL = 0.1
GIANT_PIECE = 64 << 10


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any


def _show(capabilities: list[str], family: str = "llama", context: int = 8192) -> dict[str, Any]:
    return {
        "license": "fake license",
        "modelfile": "FROM fake",
        "parameters": 'stop "<|eot|>"\ntemperature 0.6',
        "template": "{{ .Prompt }}",
        "details": {"parent_model": "", "format": "gguf", "family": family, "families": [family],
                    "parameter_size": "8.0B", "quantization_level": "Q4_K_M"},
        "model_info": {"general.architecture": family, f"{family}.context_length": context,
                       f"{family}.embedding_length": 4096, "general.parameter_count": 8030261248,
                       "tokenizer.ggml.tokens": None},
        "capabilities": capabilities,
        "modified_at": "2025-01-02T03:04:05.123456789-07:00",
    }


@dataclass
class FakeOllama:
    requests: list[Recorded] = field(default_factory=list)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    giant_line_bytes: int = 64 << 20
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        for name in CHAT_MODELS:
            caps = {"llama3:latest": ["completion", "tools", "vision", "thinking"],
                    "thinker:latest": ["completion", "tools", "thinking"]}.get(name, ["completion", "tools"])
            self.add_model(name, caps)
        self.add_model("embed:latest", ["embedding"], family="bert", context=512)

    def add_model(self, name: str, capabilities: list[str], *, family: str = "llama", context: int = 8192) -> None:
        with self.lock:
            self.models[name] = _show(capabilities, family, context)

    def last(self, path: str) -> Recorded:
        with self.lock:
            return [r for r in self.requests if r.path == path][-1]

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r.path == path)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/api/tags", self.tags, methods=["GET"]),
            Route("/api/show", self.show, methods=["POST"]),
            Route("/api/chat", self.chat, methods=["POST"]),
            Route("/api/generate", self.generate, methods=["POST"]),
            Route("/api/embed", self.embed, methods=["POST"]),
            Route("/img.png", self.image, methods=["GET"]),
            Route("/api/pull", self.pull, methods=["POST"]),
            Route("/api/delete", self.delete, methods=["DELETE"]),
        ])

    async def pull(self, request: Request) -> Response:
        """Ollama's pull: progress lines, then the model is listed; ``missing*`` names fail after the
        first line, as a name the registry does not have."""
        body = await self._record(request)
        name = str(body.get("model") or body.get("name"))
        name = name if ":" in name else f"{name}:latest"
        digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
        lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        if name.startswith("missing"):
            lines.append({"error": "pull model manifest: file does not exist"})
        else:
            lines += [{"status": f"pulling {digest[7:19]}", "digest": digest, "total": 3000, "completed": done}
                      for done in (1000, 2000, 3000)]
            lines += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]
            self.add_model(name, ["completion"])
        if body.get("stream") is False:
            last = lines[-1]
            return JSONResponse(last, status_code=500 if "error" in last else 200)

        async def stream() -> Any:
            for line in lines:
                yield orjson.dumps(line) + b"\n"
                await asyncio.sleep(0.01)

        return StreamingResponse(stream(), media_type="application/x-ndjson")

    async def delete(self, request: Request) -> Response:
        body = await self._record(request)
        name = str(body.get("model") or body.get("name"))
        with self.lock:
            removed = self.models.pop(name, None) or self.models.pop(f"{name}:latest", None)
        if removed is None:
            return JSONResponse({"error": f"model '{name}' not found"}, status_code=404)
        return Response(status_code=200)

    async def _record(self, request: Request) -> Any:
        raw = await request.body()
        body = orjson.loads(raw) if raw else None
        with self.lock:
            self.requests.append(Recorded(request.url.path, dict(request.headers), body))
        return body

    async def image(self, request: Request) -> Response:
        await self._record(request)
        return Response(PNG, media_type="image/png")

    async def tags(self, request: Request) -> Response:
        await self._record(request)
        with self.lock:
            models = list(self.models.items())
        return JSONResponse({"models": [
            {"name": name, "model": name, "modified_at": "2025-01-02T03:04:05.123456789-07:00",
             "size": 4_920_753_328, "digest": hashlib.sha256(name.encode()).hexdigest(), "details": show["details"]}
            for name, show in models]})

    async def show(self, request: Request) -> Response:
        body = await self._record(request)
        name = body.get("model") or body.get("name")
        with self.lock:
            show = self.models.get(name) or self.models.get(f"{name}:latest")
        if show is None:
            return JSONResponse({"error": f"model '{name}' not found"}, status_code=404)
        return JSONResponse(show)

    def _known(self, name: str) -> bool:
        with self.lock:
            return name in self.models and name != "ghost:latest"

    async def embed(self, request: Request) -> Response:
        body = await self._record(request)
        if not self._known(body["model"]):
            return _not_found(body["model"])
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vectors = []
        for text in inputs:
            raw = [float(len(text)), 1.0, 2.0]
            norm = math.sqrt(sum(v * v for v in raw))
            vectors.append([v / norm for v in raw])
        return JSONResponse({"model": body["model"], "embeddings": vectors, "total_duration": 1000,
                             "load_duration": 10, "prompt_eval_count": 3 * len(inputs)})

    async def chat(self, request: Request) -> Response:
        body = await self._record(request)
        model = body["model"]
        if not self._known(model):
            return _not_found(model)
        last_user = next((m for m in reversed(body["messages"]) if m["role"] == "user"), {"content": ""})
        text = f"You said: {last_user['content']}"
        if any(m.get("images") for m in body["messages"]):
            text += f" [{sum(len(m.get('images') or []) for m in body['messages'])} image(s)]"
        return self._stream(model, body, text, chat=True)

    async def generate(self, request: Request) -> Response:
        body = await self._record(request)
        if not self._known(body["model"]):
            return _not_found(body["model"])
        return self._stream(body["model"], body, f"Generated: {body.get('prompt', '')}", chat=False)

    def _stream(self, model: str, body: dict[str, Any], text: str, *, chat: bool) -> Response:
        def line(**fields: Any) -> bytes:
            base: dict[str, Any] = {"model": model, "created_at": CREATED_AT}
            return orjson.dumps({**base, **fields}) + b"\n"

        def content(piece: str, thinking: str | None = None) -> bytes:
            if chat:
                message: dict[str, Any] = {"role": "assistant", "content": piece}
                if thinking is not None:
                    message["thinking"] = thinking
                return line(message=message, done=False)
            extra = {"thinking": thinking} if thinking is not None else {}
            return line(response=piece, done=False, **extra)

        lines: list[bytes] = []
        reason = "stop"
        if model == "tools:latest":
            calls = [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                     {"function": {"name": "get_time", "arguments": {"tz": "UTC"}}}]
            lines.append(line(message={"role": "assistant", "content": "", "tool_calls": calls}, done=False))
        elif model == "thinker:latest" or (model == "llama3:latest" and body.get("think")):
            for piece in ("Let me ", "think."):
                lines.append(content("", piece))
            lines.append(content("Answer."))
        elif model == "long:latest":
            lines += [content("Once upon "), content("a time")]
            reason = "length"
        elif model == "split:latest":
            lines += [content("Café "), content("crème "), content("brûlée")]
        elif model == "drip:latest":
            return _dripping(content("drip "))
        elif model == "giant:latest":
            giant = content("x" * self.giant_line_bytes)
            lines += [giant[i:i + GIANT_PIECE] for i in range(0, len(giant), GIANT_PIECE)]
        elif model == "midstream-error:latest":
            lines.append(content("partial "))
            lines.append(orjson.dumps({"error": "an error was encountered while running the model"}) + b"\n")
            return _ndjson(lines)
        else:
            lines += [content(text[i:i + 4]) for i in range(0, len(text), 4)]
        if model == "nodone:latest":
            return _ndjson(lines)
        final: dict[str, Any] = {"done": True, "done_reason": reason, "total_duration": 5_000_000,
                                 "load_duration": 1_000_000, "prompt_eval_count": 11,
                                 "prompt_eval_duration": 1_000_000, "eval_count": 7, "eval_duration": 3_000_000}
        if chat:
            final["message"] = {"role": "assistant", "content": ""}
        else:
            final["response"] = ""
        lines.append(line(**final))
        if model == "split:latest":
            raw = b"".join(lines)
            lines = [raw[i:i + 5] for i in range(0, len(raw), 5)]
        return _ndjson(lines)


def _ndjson(lines: list[bytes]) -> Response:
    async def frames() -> Any:
        for chunk in lines:
            yield chunk
            await asyncio.sleep(0)

    return StreamingResponse(frames(), media_type="application/x-ndjson")


def _dripping(line: bytes) -> Response:
    """The same line every DRIP_INTERVAL seconds, never a ``done`` one."""
    async def frames() -> Any:
        while True:
            yield line
            await asyncio.sleep(DRIP_INTERVAL)

    return StreamingResponse(frames(), media_type="application/x-ndjson")


def _not_found(model: str) -> Response:
    return JSONResponse({"error": f'model "{model}" not found, try pulling it first'}, status_code=404)
