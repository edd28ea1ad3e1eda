"""What the model-management tests (pull, create) share: a module's gateway around one upstream,
the models an Ollama client lists, and a small GGUF file.

``served(kind, config)`` makes the three module fixtures ``workdir``, ``server`` and ``olla``: a
gateway built by ``config(workdir, upstream_url)`` from the module's own ``upstream_url`` fixture
(the fake hub, or a fake Ollama server), and an ``ollama`` client of it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ollama
import pytest

from tests.servers import ServerThread, dragoman_server

Fixture = Callable[..., Any]


def served(kind: str, config: Callable[[Path, str], dict[str, Any]]) -> tuple[Fixture, Fixture, Fixture]:
    @pytest.fixture(scope="module")
    def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
        return tmp_path_factory.mktemp(kind)

    @pytest.fixture(scope="module")
    def server(workdir: Path, upstream_url: str) -> Iterator[ServerThread]:
        with dragoman_server(config(workdir, upstream_url), workdir=workdir) as s:
            yield s

    @pytest.fixture(scope="module")
    def olla(server: ServerThread) -> ollama.Client:
        return ollama.Client(host=server.url, timeout=60)

    return workdir, server, olla


def names(client: ollama.Client) -> set[str]:
    return {m.model for m in client.list().models if m.model}


def tiny_gguf(name: str, padding: int = 3 << 20) -> bytes:
    """A header-only GGUF (enough to list and show it) padded to ``padding`` bytes of 'weights'."""
    def string(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw
    kvs = [("general.architecture", 8, string("llama")), ("general.name", 8, string(name)),
           ("llama.context_length", 4, struct.pack("<I", 2048)), ("general.file_type", 4, struct.pack("<I", 15))]
    body = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs))
    for key, kind, value in kvs:
        body += string(key) + struct.pack("<I", kind) + value
    return body + bytes(range(256)) * (padding // 256)
