"""One assembly owner (issue 15): the app is built once in its lifespan and never mutated; live
edits go through one owner that swaps atomically and closes what it replaced; the config file's
entries and the admin's are kept apart.

Real servers over real HTTP: dragoman in a thread, a fake OpenAI upstream, the official SDKs
and httpx as clients. Open connections are counted from the kernel's socket table for this
process; tasks on the server's own event loop.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from dragoman.app import create_app
from dragoman.config import load_config
from tests.fakes.openai_upstream import FakeOpenAI, wait_until
from tests.servers import ServerThread, dragoman_server

PASSWORD = "assembly-admin-pw-5c1e"
KEY = "sk-dragoman-never-issued-0000"


def admin(server: ServerThread) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {PASSWORD}"}, timeout=20)


# ------------------------------------------------------------------- before start-up completes


def test_requests_before_start_up_completes_get_a_503_in_their_dialect(tmp_path: Path) -> None:
    """Served without a lifespan, nothing is built: every request is a clear 503, never an answer
    that skipped the key check (the gateway used to start with everyone allowed)."""
    path = tmp_path / "dragoman.yaml"
    path.write_text(f"backends: [{{name: echo, type: echo, models: [echo]}}]\n"
                    f"database: sqlite:///{tmp_path / 'dragoman.db'}\n"
                    f"auth: {{mode: keys, admin_password: {PASSWORD}}}\n", encoding="utf-8")
    app = create_app(load_config(path, environ={}))
    server = ServerThread(app)
    server.server.config.lifespan = "off"  # as an ASGI host that never runs the lifespan would
    with server:
        messages: Any = [{"role": "user", "content": "hi"}]
        oai = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=10)
        with pytest.raises(openai.APIStatusError) as openai_error:
            oai.chat.completions.create(model="echo/echo", messages=messages)
        assert openai_error.value.status_code == 503
        assert openai_error.value.response.headers["retry-after"] == "1"
        assert "dragoman is starting" in openai_error.value.message

        claude = anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=10)
        with pytest.raises(anthropic.APIStatusError) as anthropic_error:
            claude.messages.create(model="echo/echo", max_tokens=16, messages=messages)
        assert anthropic_error.value.status_code == 503
        assert anthropic_error.value.body == {"type": "error", "request_id": anthropic_error.value.request_id,
                                              "error": {"type": "overloaded_error",
                                                        "message": "dragoman is starting; try again in a moment"}}

        with pytest.raises(ollama.ResponseError) as ollama_error:
            ollama.Client(host=server.url, timeout=10).chat(model="echo/echo", messages=messages)
        assert ollama_error.value.status_code == 503
        assert ollama_error.value.error == "dragoman is starting; try again in a moment"

        assert httpx.get(f"{server.url}/v1/models").status_code == 503
        assert httpx.get(f"{server.url}/admin/api/keys", headers={"authorization": f"Bearer {PASSWORD}"}
                         ).status_code == 503
        health = httpx.get(f"{server.url}/health")
        assert (health.status_code, health.json()) == (503, {"status": "starting"})
        assert app.routes == []  # nothing was built


# ------------------------------------------------------------------------------- live edits


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture
def upstream(fake: FakeOpenAI) -> Iterator[ServerThread]:
    with ServerThread(fake.app()) as srv:
        yield srv


def connections_to(port: int) -> int:
    """This process's established TCP connections to ``port`` on loopback (client side)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table, encoding="ascii") as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                    count += 1
    return count


async def _task_count() -> int:
    return len(asyncio.all_tasks())


def _live_config(tmp_path: Path, upstream: ServerThread) -> dict[str, Any]:
    return {
        "backends": [{"name": "up", "type": "openai", "base_url": f"{upstream.url}/v1", "api_key": "sk-up",
                      "models": ["gpt-test", "gpt-drip"]}],
        "database": f"sqlite:///{tmp_path / 'dragoman.db'}",
        "auth": {"mode": "none", "admin_password": PASSWORD},
        "routing": {"health_interval": 0},
    }


def unclosed(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What asyncio reported of sessions and connectors dropped without being closed (collected
    now, so that none is left for later)."""
    gc.collect()
    return [r.getMessage() for r in caplog.records if "Unclosed" in r.getMessage()]


@pytest.fixture
def caplog(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Reports of what earlier tests left to the garbage collector are theirs: collected first."""
    gc.collect()
    caplog.clear()
    return caplog


def test_backend_edits_close_what_they_replaced(tmp_path: Path, upstream: ServerThread,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """50 edits of a backend through the admin API: each swaps in a new instance (with its own
    connection pool) and closes the one it replaced, so no socket and no task is left over (and
    none is left to the garbage collector, which would close the sockets but say so)."""
    port = upstream.port
    with dragoman_server(_live_config(tmp_path, upstream)) as server, admin(server) as client:
        llm = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=20)

        def ask(text: str) -> None:
            answer = llm.chat.completions.create(model="up/gpt-test", messages=[{"role": "user", "content": text}])
            assert answer.choices[0].message.content == f"You said: {text}"

        ask("before")
        sockets, tasks = connections_to(port), server.run_coroutine(_task_count())
        assert sockets >= 1  # the pooled keep-alive connection of the one instance
        for n in range(50):
            edited = client.put("/admin/api/backends/up", json={"type": "openai", "settings": {
                "base_url": f"{upstream.url}/v1", "api_key": f"sk-up-{n}", "models": ["gpt-test", "gpt-drip"]}})
            assert edited.status_code == 200, edited.text
            ask(f"edit {n}")  # the new instance opens its own connection
        assert wait_until(lambda: connections_to(port) <= sockets, timeout=10), \
            f"{connections_to(port)} connections to the upstream after 50 edits, {sockets} before"
        assert wait_until(lambda: server.run_coroutine(_task_count()) <= tasks, timeout=10)
        listing = client.get("/admin/api/backends").json()["backends"]
        assert [(b["name"], b["source"], b["reachable"]) for b in listing] == [("up", "admin", True)]
    assert unclosed(caplog) == []


def test_a_request_in_flight_keeps_the_backend_it_started_with(tmp_path: Path, fake: FakeOpenAI,
                                                               upstream: ServerThread,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    port = upstream.port
    with dragoman_server(_live_config(tmp_path, upstream)) as server, admin(server) as client:
        llm = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=20)
        stream = llm.chat.completions.create(model="up/gpt-drip", stream=True,
                                             messages=[{"role": "user", "content": "drip"}])
        chunks = iter(stream)
        for _ in range(3):
            next(chunks)
        edited = client.put("/admin/api/backends/up", json={"type": "openai", "settings": {
            "base_url": f"{upstream.url}/v1", "api_key": "sk-other", "models": ["gpt-test", "gpt-drip"]}})
        assert edited.status_code == 200, edited.text
        text = "".join(next(chunks).choices[0].delta.content or "" for _ in range(5))  # still flowing
        assert text
        assert fake.last().headers["authorization"] == "Bearer sk-up"  # served by the instance it started on
        assert connections_to(port) >= 1
        answer = llm.chat.completions.create(model="up/gpt-test", messages=[{"role": "user", "content": "new"}])
        assert answer.choices[0].message.content == "You said: new"
        assert fake.last().headers["authorization"] == "Bearer sk-other"  # new requests: the new instance
        before_close = connections_to(port)
        stream.close()
        # The old instance closes once its last request ends: its pool (the stream's connection) goes.
        assert wait_until(lambda: connections_to(port) < before_close, timeout=10)
        assert wait_until(lambda: fake.disconnects >= 1, timeout=10)
    assert unclosed(caplog) == []


# ------------------------------------------------------------------ the file's and the admin's


def _layers_config(tmp_path: Path, aliases: dict[str, str]) -> dict[str, Any]:
    return {
        "backends": [{"name": "echo", "type": "echo", "models": ["echo", "other"]}],
        "aliases": aliases,
        "database": f"sqlite:///{tmp_path / 'dragoman.db'}",
        "auth": {"mode": "none", "admin_password": PASSWORD},
    }


def served_by(server: ServerThread, model: str) -> str | int:
    """The deployment that answered ``model`` (its ``x-dragoman-backend``), or the error status."""
    answer = httpx.post(f"{server.url}/v1/chat/completions", timeout=20, json={
        "model": model, "messages": [{"role": "user", "content": "hi"}]})
    return answer.headers["x-dragoman-backend"] if answer.status_code == 200 else answer.status_code


def test_the_files_entries_are_replaced_on_every_start_and_the_admins_persist(tmp_path: Path) -> None:
    first = {"gone": "echo/echo", "fast": "echo/echo", "claude-*": "echo/echo"}
    with dragoman_server(_layers_config(tmp_path, first)) as server, admin(server) as client:
        assert client.put("/admin/api/aliases/mine", json={"targets": ["echo/other"]}).status_code == 200
        assert client.put("/admin/api/aliases/claude-3*", json={"targets": ["echo/other"]}).status_code == 200
        assert client.delete("/admin/api/aliases/fast").status_code == 200  # the file's: hidden by the admin
        assert served_by(server, "fast") == 404
        assert served_by(server, "mine") == "echo/other"
        # Globs are tried in a defined order: the file's in its order, then the admin's as made.
        assert served_by(server, "claude-3-opus") == "echo/echo"
        names = [a["name"] for a in client.get("/admin/api/models").json()["aliases"]]
        assert names == ["claude-*", "gone", "mine", "claude-3*"]  # (the test writes the file's keys sorted)

    # The file changes: "gone" is removed, "claude-*" points elsewhere, "fast" is still there.
    second = {"claude-*": "echo/other", "fast": "echo/echo"}
    with dragoman_server(_layers_config(tmp_path, second)) as server, admin(server) as client:
        assert served_by(server, "gone") == 404  # removed from the file: gone after the restart
        assert served_by(server, "claude-3-opus") == "echo/other"  # the file's new value
        assert served_by(server, "fast") == 404  # the admin's deletion persists
        assert served_by(server, "mine") == "echo/other"  # the admin's entry persists
        names = [a["name"] for a in client.get("/admin/api/models").json()["aliases"]]
        assert names == ["claude-*", "mine", "claude-3*"]
        # The admin's entry of the file's name replaces it in place; one equal to the file's is none.
        assert client.put("/admin/api/aliases/claude-*", json={"targets": ["echo/echo"]}).status_code == 200
        assert served_by(server, "claude-3-opus") == "echo/echo"
        assert client.put("/admin/api/aliases/fast", json={"targets": ["echo/echo"]}).status_code == 200
        assert served_by(server, "fast") == "echo/echo"

    # "fast" follows the file again; "claude-*" is the admin's until the admin says otherwise.
    third = {"claude-*": "echo/other", "fast": "echo/other"}
    with dragoman_server(_layers_config(tmp_path, third)) as server:
        assert served_by(server, "claude-3-opus") == "echo/echo"
        assert served_by(server, "fast") == "echo/other"
        assert served_by(server, "gone") == 404
