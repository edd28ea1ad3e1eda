"""One generic handler serves every generation request (issue 15).

A browser's request (``Origin`` set) takes the same path as any other: the same answer, plus the
CORS headers. A dialect given in code (``create_app(config, dialects=...)``) is served by the
same handler, with its own parse, frames and errors, beside the built-in ones.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from dragoman.app import create_app
from dragoman.config import load_config
from dragoman.core.dialect import Generation, GenerationRoute, WireError
from dragoman.core.events import Event, MessageEnd, PartDelta, StreamError
from dragoman.core.service import CallContext, GatewayService
from dragoman.core.types import ChatRequest, Message, Role, TextPart
from dragoman.errors import ErrorKind, GatewayError
from tests.servers import ServerThread

ORIGIN = "http://browser.test"
# Values that differ between any two answers (ids, clocks, the request's own id and timings, and so
# the length of a body that carries timings: the bodies themselves are compared, masked).
VOLATILE = {"id", "created", "created_at", "total_duration", "load_duration", "prompt_eval_duration",
            "eval_duration", "completed_at", "item_id", "request_id", "x-request-id", "x-dragoman-overhead-ms",
            "request-id", "date", "content-length"}


class PlainEncoder:
    """The test dialect's frames: each text delta as a line, ``.`` at the end, ``!`` and the
    message on an error."""

    def encode(self, event: Event) -> bytes:
        if isinstance(event, PartDelta):
            return event.text.encode() + b"\n"
        if isinstance(event, MessageEnd):
            return f"#{event.finish_reason.value}\n".encode()
        if isinstance(event, StreamError):
            return f"!{event.error.message}\n".encode()
        return b""

    def tail(self) -> bytes:
        return b".\n"


class PlainDialect:
    """A dialect written outside dragoman: ``POST /plain/say`` with ``{"model", "say", "stream"}``."""

    name = "plain"

    def __init__(self, service: GatewayService) -> None:
        self.service = service

    def generation_routes(self) -> Sequence[GenerationRoute]:
        return [GenerationRoute("/plain/say", "say")]

    async def parse(self, operation: str, body: Any, headers: Mapping[str, str], ctx: CallContext) -> Generation:
        if not isinstance(body, dict) or not isinstance(body.get("say"), str):
            raise GatewayError(ErrorKind.INVALID_REQUEST, "say must be a string", param="say")
        chat = ChatRequest(model=str(body.get("model", "")), messages=[Message(Role.USER, [TextPart(body["say"])])],
                           stream=bool(body.get("stream")))
        return Generation([chat], PlainEncoder, lambda responses: {"said": responses[0].text},
                          media_type="text/plain", headers={"x-plain": operation})

    def render_error(self, error: GatewayError, ctx: CallContext) -> WireError:
        return WireError(error.status, {"plain_error": error.message, "kind": error.kind.value}, {"x-plain": "error"})

    def routes(self) -> Sequence[Any]:
        return []


@pytest.fixture(scope="module")
def gateway() -> Iterator[ServerThread]:
    config = {"backends": [{"name": "test", "type": "echo", "models": ["echo"]}],
              "server": {"cors_origins": [ORIGIN]}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dragoman.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        app = create_app(load_config(path, environ={}), dialects=[PlainDialect])
        with ServerThread(app) as server:
            yield server


def masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "*" if k in VOLATILE else masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def answer(response: httpx.Response) -> tuple[int, dict[str, str], Any]:
    """Status, headers (CORS ones left out) and body, with what differs per request masked."""
    headers = {k: "*" if k in VOLATILE else v for k, v in response.headers.items()
               if not k.startswith("access-control-") and k != "vary"}
    text = response.text
    kind = response.headers.get("content-type", "")
    if kind.startswith("application/json"):
        body: Any = masked(response.json())
    elif kind.startswith("text/event-stream"):
        body = [masked(orjson.loads(line[6:])) if line.startswith("data: {") else line
                for line in text.split("\n") if line]
    elif kind.startswith("application/x-ndjson"):
        body = [masked(orjson.loads(line)) for line in text.splitlines()]
    else:
        body = text
    return response.status_code, headers, body


REQUESTS = [
    ("/v1/chat/completions", {"model": "test/echo", "messages": [{"role": "user", "content": "one two"}]}),
    ("/v1/chat/completions", {"model": "test/echo", "messages": [{"role": "user", "content": "one two"}],
                              "stream": True, "n": 2, "stream_options": {"include_usage": True}}),
    ("/v1/completions", {"model": "test/echo", "prompt": "a b c", "stream": True}),
    ("/v1/messages", {"model": "test/echo", "max_tokens": 20, "stream": True,
                      "messages": [{"role": "user", "content": "hello there"}]}),
    ("/api/chat", {"model": "test/echo", "messages": [{"role": "user", "content": "hi"}]}),
    ("/api/generate", {"model": "test/echo", "prompt": "hi", "stream": False}),
    ("/v1/responses", {"model": "test/echo", "input": "hi", "stream": True, "store": False}),
    ("/v1/chat/completions", {"model": "test/nope", "messages": [{"role": "user", "content": "x"}]}),
    ("/v1/messages", {"model": "test/echo"}),
    ("/plain/say", {"model": "test/echo", "say": "from outside", "stream": True}),
]


@pytest.mark.parametrize(("path", "body"), REQUESTS, ids=[f"{p}-{i}" for i, (p, _) in enumerate(REQUESTS)])
def test_a_browsers_request_gets_the_same_answer_plus_cors(gateway: ServerThread, path: str,
                                                           body: dict[str, Any]) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        plain = client.post(path, json=body)
        browser = client.post(path, json=body, headers={"origin": ORIGIN})
    assert "access-control-allow-origin" not in plain.headers
    assert browser.headers["access-control-allow-origin"] == ORIGIN
    assert answer(browser) == answer(plain)
    assert plain.text  # every one of them answers something


def test_other_methods_on_a_generation_path_are_405(gateway: ServerThread) -> None:
    response = httpx.get(f"{gateway.url}/v1/chat/completions")
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"


# ------------------------------------------------------------------- a dialect given in code


def test_a_dialect_given_in_code_answers_whole(gateway: ServerThread) -> None:
    response = httpx.post(f"{gateway.url}/plain/say", json={"model": "test/echo", "say": "hello plain world"})
    assert response.status_code == 200
    assert response.json() == {"said": "hello plain world"}
    assert response.headers["x-plain"] == "say"
    assert response.headers["x-dragoman-backend"] == "test/echo"


def test_a_dialect_given_in_code_streams_its_frames(gateway: ServerThread) -> None:
    with httpx.stream("POST", f"{gateway.url}/plain/say",
                      json={"model": "test/echo", "say": "hello plain world", "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        text = response.read().decode()
    assert text == "hello \nplain \nworld\n#stop\n.\n"


def test_a_dialect_given_in_code_renders_its_errors(gateway: ServerThread) -> None:
    bad = httpx.post(f"{gateway.url}/plain/say", json={"model": "test/echo", "say": 3})
    assert bad.status_code == 400
    assert bad.json() == {"plain_error": "say must be a string", "kind": "invalid_request"}
    assert bad.headers["x-plain"] == "error"
    missing = httpx.post(f"{gateway.url}/plain/say", json={"model": "test/none", "say": "hi"})
    assert missing.status_code == 404
    assert missing.json()["kind"] == "not_found"
    broken = httpx.post(f"{gateway.url}/plain/say", content=b"{not json")
    assert broken.status_code == 400
    assert broken.json()["plain_error"].startswith("request body is not valid JSON")


def test_the_built_in_dialects_are_served_beside_it(gateway: ServerThread) -> None:
    response = httpx.post(f"{gateway.url}/v1/chat/completions",
                          json={"model": "test/echo", "messages": [{"role": "user", "content": "still here"}]})
    assert response.json()["choices"][0]["message"]["content"] == "still here"
