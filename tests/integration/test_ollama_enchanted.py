"""Byte-level replay of what Enchanted (AugustDev/OllamaKit) sends, checked the way it parses.

Enchanted decodes each network chunk as one JSON object, else splits it on newlines and decodes
each line alone; a line split across chunks is silently lost. So every HTTP chunk must hold
whole lines. Requests go over a raw socket, byte for byte (``Authorization: Bearer `` with an
empty token included), and the chunked body is read chunk by chunk.
"""

from __future__ import annotations

import base64
import json
import re
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.ollama_upstream import PNG
from tests.servers import ServerThread, dragoman_server

NANO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


@pytest.fixture(scope="module")
def gateway() -> Iterator[ServerThread]:
    with dragoman_server({"backends": [{"name": "test", "type": "echo", "models": ["echo"]}]}) as server:
        yield server


def exchange(server: ServerThread, method: str, path: str, body: bytes = b"") -> tuple[bytes, dict[str, str],
                                                                                      list[bytes]]:
    """Send Enchanted's exact request; return the status line, headers and the body's HTTP chunks."""
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAccept: */*\r\n"
            "Content-Type: application/json\r\nAuthorization: Bearer \r\n"
            "User-Agent: Enchanted/1.0 CFNetwork/1490 Darwin/23.2.0\r\nAccept-Language: en-GB,en;q=0.9\r\n"
            "Accept-Encoding: gzip, deflate\r\nConnection: close\r\n")
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    header_block, _, rest = data.partition(b"\r\n\r\n")
    status, *lines = header_block.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.decode().partition(":") for line in lines)}
    chunks: list[bytes] = []
    if headers.get("transfer-encoding") == "chunked":
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            chunks.append(rest[:size])
            assert rest[size:size + 2] == b"\r\n"
            rest = rest[size + 2:]
    elif rest:
        chunks.append(rest)
    return status, headers, chunks


def test_head_root(gateway: ServerThread) -> None:
    status, _, chunks = exchange(gateway, "HEAD", "/")
    assert status.startswith(b"HTTP/1.1 200")
    assert chunks == []
    assert httpx.get(gateway.url + "/").text == "Ollama is running"


def test_tags_decode_as_okmodelresponse(gateway: ServerThread) -> None:
    status, headers, chunks = exchange(gateway, "GET", "/api/tags")
    assert status.startswith(b"HTTP/1.1 200") and headers["content-type"] == "application/json"
    models = json.loads(b"".join(chunks))["models"]
    assert models
    for model in models:
        for key in ("name", "model", "digest", "size", "modified_at", "details"):
            assert key in model, key
        assert isinstance(model["size"], int) and NANO_TIME.match(model["modified_at"])
        details = model["details"]
        for key in ("parent_model", "format", "family", "parameter_size", "quantization_level"):
            assert isinstance(details[key], str), key
        assert isinstance(details["families"], list)


def chat_body(**extra: Any) -> bytes:
    messages = [{"role": "system", "content": "You are a helpful assistant.", "images": []},
                {"role": "user", "content": "Hello there, how are you?", "images": []}]
    # OllamaKit encodes with Swift's JSONEncoder: compact, keys in declaration order.
    body = {"stream": True, "model": "test/echo", "messages": messages, "options": {"temperature": 0}, **extra}
    return json.dumps(body, separators=(",", ":")).encode()


def check_stream(chunks: list[bytes]) -> list[dict[str, Any]]:
    """Every chunk is whole lines, each a complete object OllamaKit's OKChatResponse decodes."""
    lines: list[dict[str, Any]] = []
    for chunk in chunks:
        assert chunk.endswith(b"\n") and chunk.count(b"\n") == 1, chunk  # one line per write
        line = json.loads(chunk)
        assert isinstance(line["model"], str) and NANO_TIME.match(line["created_at"])
        assert isinstance(line["done"], bool)
        message = line["message"]
        assert message["role"] == "assistant" and isinstance(message["content"], str)
        lines.append(line)
    return lines


def test_streaming_chat(gateway: ServerThread) -> None:
    status, headers, chunks = exchange(gateway, "POST", "/api/chat", chat_body())
    assert status.startswith(b"HTTP/1.1 200")
    assert headers["content-type"] == "application/x-ndjson"
    lines = check_stream(chunks)
    assert "".join(line["message"]["content"] for line in lines) == "Hello there, how are you?"
    assert [line["done"] for line in lines][-1] is True and not any(line["done"] for line in lines[:-1])
    final = lines[-1]
    for key in ("done_reason", "total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                "eval_count", "eval_duration"):
        assert key in final, key


def test_streaming_chat_with_an_image(gateway: ServerThread) -> None:
    body = json.loads(chat_body())
    body["messages"][1]["images"] = [base64.b64encode(PNG).decode()]
    _, _, chunks = exchange(gateway, "POST", "/api/chat", json.dumps(body).encode())
    lines = check_stream(chunks)
    assert "".join(line["message"]["content"] for line in lines) == "Hello there, how are you?"


def test_errors_are_non_2xx(gateway: ServerThread) -> None:
    body = json.loads(chat_body())
    body["model"] = "missing"
    status, headers, chunks = exchange(gateway, "POST", "/api/chat", json.dumps(body).encode())
    assert status.startswith(b"HTTP/1.1 404") and headers["content-type"] == "application/json"
    assert json.loads(b"".join(chunks))["error"].startswith("model 'missing' not found")
