"""Slow clients hold nothing for long: a request body that stops arriving ends in a 408 in the
client's dialect, a request head that never completes closes its connection, connections past
``server.max_connections`` get a 503 in their dialect, and none of it keeps a normal request waiting.

Raw sockets play the slow clients (no SDK can stall a body); the official SDKs make the normal
requests. ``dragoman serve`` itself runs in a subprocess, so its uvicorn setup is what is tested.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import ollama
import openai
import orjson
import pytest
import yaml

from tests.servers import dragoman_server

TIMEOUT = 1.0  # server.header_timeout and server.body_timeout in these tests
STALLED = f"the request body stopped arriving: no data for {TIMEOUT:g} s after 16 bytes"
OVER_CAPACITY = "Too many connections to this gateway; try again shortly."
ECHO = [{"name": "test", "type": "echo", "models": ["echo"]}]
CHAT = {"model": "test/echo", "messages": [{"role": "user", "content": "hi"}]}


class Served:
    """``dragoman serve`` in a subprocess; everything it prints is collected in ``lines``."""

    def __init__(self, tmp_path: Path, settings: dict[str, Any]) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = {"server": {"port": self.port, **settings}, "backends": ECHO,
                  "database": f"sqlite:///{tmp_path / 'db.sqlite'}"}
        path = tmp_path / "dragoman.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.process = subprocess.Popen([sys.executable, "-m", "dragoman", "serve", "--config", str(path)],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "DRAGOMAN_ADMIN_PASSWORD": "test-password"})
        self.lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(30):
            self.stop()
            raise RuntimeError("dragoman serve did not start:\n" + "".join(self.lines))

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if "Application startup complete" in line:
                self._ready.set()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=20)

    def logged(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = Served(tmp_path_factory.mktemp("slow"), {"header_timeout": TIMEOUT, "body_timeout": TIMEOUT})
    try:
        yield server
    finally:
        server.stop()


def stalled_body(port: int, path: str, *, chunked: bool = True) -> socket.socket:
    """A request whose body stops after its first 16 bytes (chunked, or short of its Content-Length)."""
    sock = socket.create_connection(("127.0.0.1", port))
    start = b'{"model": "test/'
    assert len(start) == 16
    framing = b"Transfer-Encoding: chunked\r\n\r\n10\r\n" + start + b"\r\n" if chunked \
        else b"Content-Length: 200\r\n\r\n" + start
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: dragoman\r\nContent-Type: application/json\r\n".encode() + framing)
    return sock


def slow_head(port: int) -> socket.socket:
    """A connection whose request head stops half-way through its headers."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: dragoman\r\nContent-Ty")
    return sock


def response_of(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], Any]:
    sock.settimeout(timeout)
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = orjson.loads(response.read())
    return response.status, {name.lower(): value for name, value in response.getheaders()}, body


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def expected_408(path: str, headers: dict[str, str]) -> Any:
    if path.startswith("/api/"):
        return {"error": STALLED}
    if path.startswith("/v1/messages"):  # every Anthropic error names the request it refused
        return {"type": "error", "error": {"type": "invalid_request_error", "message": STALLED},
                "request_id": headers["request-id"]}
    return {"error": {"message": STALLED, "type": "invalid_request_error", "param": None, "code": "request_timeout"}}


GENERATION_ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/chat/completions",
                     "/v1/messages", "/v1/messages/count_tokens", "/api/chat", "/api/generate", "/api/embed",
                     "/api/embeddings", "/api/show"]


def test_a_stalled_body_is_a_408_in_the_clients_dialect_on_every_route(served: Served) -> None:
    started = time.monotonic()
    sockets = {(path, chunked): stalled_body(served.port, path, chunked=chunked)
               for path in GENERATION_ROUTES for chunked in (True, False)}
    try:
        for (path, chunked), sock in sockets.items():
            status, headers, body = response_of(sock)
            assert status == 408, (path, chunked)
            assert body == expected_408(path, headers), (path, chunked)
            assert headers["connection"] == "close"
            assert closed_by_server(sock, within=2.0), (path, chunked)
        assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 4
    finally:
        for sock in sockets.values():
            sock.close()


def test_slow_heads_are_closed_and_do_not_keep_requests_waiting(served: Served) -> None:
    opened = time.monotonic()  # before the first connection: each one's head timer starts when it connects
    heads = [slow_head(served.port) for _ in range(200)]
    silent = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(100)]
    bodies = [stalled_body(served.port, "/v1/chat/completions") for _ in range(50)]
    last_opened = time.monotonic()
    try:
        # While 350 slow clients hold their connections, the SDKs are answered at once.
        started = time.monotonic()
        chat = openai.OpenAI(base_url=f"{served.url}/v1", api_key="none", max_retries=0)
        answer = chat.chat.completions.create(model="test/echo", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "hi"
        message = anthropic.Anthropic(base_url=served.url, api_key="none", max_retries=0).messages.create(
            model="test/echo", max_tokens=10, messages=[{"role": "user", "content": "yo"}])
        assert message.content[0].text == "yo"  # type: ignore[union-attr]
        reply = ollama.Client(host=served.url).chat(model="test/echo", messages=[{"role": "user", "content": "hey"}])
        assert reply.message.content == "hey"
        assert time.monotonic() - started < TIMEOUT  # none of them waited for a slow client's timeout

        for sock in heads + silent:
            assert closed_by_server(sock, within=TIMEOUT + 5 - (time.monotonic() - last_opened))
        assert time.monotonic() - opened >= TIMEOUT
        for sock in bodies:
            status, _, body = response_of(sock)
            assert (status, body["error"]["code"]) == (408, "request_timeout")
    finally:
        for sock in heads + silent + bodies:
            sock.close()
    # A slow head is logged, at most every 10 s: not once per connection.
    assert len(served.logged("sent no complete request head within 1 s (server.header_timeout)")) == 1


@pytest.mark.parametrize("protocol", ["httptools", "h11"])
def test_connections_past_the_cap_get_a_503_in_their_dialect(protocol: str) -> None:
    config = {"backends": ECHO, "server": {"max_connections": 3, "header_timeout": TIMEOUT}}
    with dragoman_server(config, guarded=protocol) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        try:
            time.sleep(0.3)  # accepted by the server, not only by the kernel
            with pytest.raises(openai.InternalServerError) as oa:
                openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0).chat.completions.create(
                    model="test/echo", messages=[{"role": "user", "content": "hi"}])
            assert oa.value.status_code == 503
            assert oa.value.body == {"message": OVER_CAPACITY, "type": "overloaded_error", "param": None,
                                     "code": "overloaded"}
            assert oa.value.response.headers["retry-after"] == "1"
            assert oa.value.response.headers["connection"] == "close"
            with pytest.raises(anthropic.APIStatusError) as an:
                anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0).messages.create(
                    model="test/echo", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
            assert an.value.status_code == 503
            assert an.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": OVER_CAPACITY},
                                 "request_id": an.value.response.headers["request-id"]}
            with pytest.raises(ollama.ResponseError) as ol:
                ollama.Client(host=server.url).chat(model="test/echo", messages=[{"role": "user", "content": "hi"}])
            assert (ol.value.status_code, ol.value.error) == (503, OVER_CAPACITY)

            # The idle connections time out (server.header_timeout); then requests are served again.
            for sock in idle:
                assert closed_by_server(sock, within=TIMEOUT + 5)
            answer = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0) \
                .chat.completions.create(model="test/echo", messages=[{"role": "user", "content": "hi"}])
            assert answer.choices[0].message.content == "hi"
        finally:
            for sock in idle:
                sock.close()


def _post(sock: socket.socket, body: bytes, *, pause: float = 0.0) -> None:
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: dragoman\r\nContent-Type: application/json\r\n" \
           f"Content-Length: {len(body)}\r\n\r\n".encode()
    sock.sendall(head)
    for start in range(0, len(body), 16):
        time.sleep(pause)
        sock.sendall(body[start:start + 16])


@pytest.mark.parametrize("protocol", ["httptools", "h11"])
def test_the_head_timeout_only_runs_while_a_head_is_awaited(protocol: str) -> None:
    config = {"backends": ECHO, "server": {"header_timeout": 0.5, "body_timeout": 5}}
    body = orjson.dumps(CHAT)
    with dragoman_server(config, guarded=protocol) as server, \
            contextlib.closing(socket.create_connection(("127.0.0.1", server.port))) as sock:
        # A body that takes longer than the head timeout, but keeps coming, is answered.
        started = time.monotonic()
        _post(sock, body, pause=0.2)
        status, _, answer = response_of(sock)
        assert time.monotonic() - started > 0.5
        assert (status, answer["choices"][0]["message"]["content"]) == (200, "hi")
        # So is the next request on the same (kept-alive) connection ...
        _post(sock, body)
        status, _, answer = response_of(sock)
        assert status == 200
        # ... but a next request whose head stops half-way is cut after the head timeout.
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: drag")
        started = time.monotonic()
        assert closed_by_server(sock, within=5)
        assert 0.4 < time.monotonic() - started < 4
