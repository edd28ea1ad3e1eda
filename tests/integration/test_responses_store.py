"""Stored responses in the database and ``background: true``, over real HTTP with the ``openai`` SDK.

Every gateway here keeps its responses in a real database (a SQLite file, or PostgreSQL), so a
chain continues across a restart, across two instances sharing the database, and a response's
owner, retention and background state are the rows' own. Upstreams: ``echo`` and the fake OpenAI
upstream (``gpt-test`` echoes ``You said: ...``; ``gpt-hang`` never answers).
"""

from __future__ import annotations

import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI, wait_until
from tests.servers import ServerThread, dragoman_server
from tests.services import _psql, ensure_postgres, unique_name

ALICE = "sk-dm-alice-responses-store-key-0001"
BOB = "sk-dm-bob-responses-store-key-000002"


def config(upstream: ServerThread, database: str, **extra: Any) -> dict[str, Any]:
    return {
        "backends": [
            {"name": "up", "type": "openai", "base_url": f"{upstream.url}/v1", "api_key": "upstream-secret",
             "models": ["gpt-*"]},
            {"name": "test", "type": "echo", "models": ["echo"]},
        ],
        "auth": {"mode": "keys", "keys": [{"name": "alice", "key": ALICE}, {"name": "bob", "key": BOB}]},
        "timeouts": {"connect": 2, "first_byte": 30, "idle": 5},
        "database": database,
        **extra,
    }


def client(server: ServerThread, key: str = ALICE) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=15)


def rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM responses").fetchone()[0])


def sent_messages(fake: FakeOpenAI) -> list[tuple[str, Any]]:
    return [(m["role"], m["content"]) for m in fake.last().body["messages"]]


def test_a_chain_continues_after_a_restart_and_on_another_backend(tmp_path: Path, upstream: ServerThread,
                                                                    fake: FakeOpenAI) -> None:
    database = f"sqlite:///{tmp_path / 'dm.db'}"
    with dragoman_server(config(upstream, database)) as first:
        one = client(first).responses.create(model="test/echo", input="remember the echo")
        with client(first).responses.stream(model="up/gpt-test", input="and this", previous_response_id=one.id,
                                            instructions="rules") as stream:
            two = stream.get_final_response()
    assert rows(tmp_path / "dm.db") == 2
    with dragoman_server(config(upstream, database)) as again:  # a new app over the same file
        sdk = client(again)
        assert sdk.responses.retrieve(two.id).output_text == "You said: and this"
        three = sdk.responses.create(model="up/gpt-test", input="third", previous_response_id=two.id)
        assert three.previous_response_id == two.id
        assert sent_messages(fake) == [("user", "remember the echo"), ("assistant", "remember the echo"),
                                       ("user", "and this"), ("assistant", "You said: and this"),
                                       ("user", "third")]  # instructions are not carried over
        [item] = sdk.responses.input_items.list(two.id).data
        assert [c.text for c in item.content] == ["and this"]  # type: ignore[union-attr]


def test_a_response_is_its_keys_alone(tmp_path: Path, upstream: ServerThread) -> None:
    with dragoman_server(config(upstream, f"sqlite:///{tmp_path / 'dm.db'}")) as server:
        mine = client(server).responses.create(model="test/echo", input="private")
        bob = client(server, BOB)
        with pytest.raises(openai.NotFoundError):
            bob.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            bob.responses.input_items.list(mine.id)
        with pytest.raises(openai.NotFoundError):
            bob.responses.delete(mine.id)
        with pytest.raises(openai.NotFoundError) as caught:
            bob.responses.create(model="test/echo", input="x", previous_response_id=mine.id)
        assert caught.value.body["code"] == "previous_response_not_found"  # type: ignore[index]
        assert client(server).responses.retrieve(mine.id).output_text == "private"  # still there
        client(server).responses.delete(mine.id)
        with pytest.raises(openai.NotFoundError):
            client(server).responses.retrieve(mine.id)
        assert rows(tmp_path / "dm.db") == 0


def test_concurrent_answers_are_all_stored(tmp_path: Path, upstream: ServerThread) -> None:
    """Answers finishing together share a commit; every one of them is stored and chains."""
    with dragoman_server(config(upstream, f"sqlite:///{tmp_path / 'dm.db'}")) as server:
        sdk = client(server)
        with ThreadPoolExecutor(max_workers=12) as pool:
            answers = list(pool.map(lambda n: sdk.responses.create(model="test/echo", input=f"question {n}"),
                                    range(24)))
        assert rows(tmp_path / "dm.db") == 24
        for n, answer in enumerate(answers):
            assert sdk.responses.retrieve(answer.id).output_text == f"question {n}"
        follow = sdk.responses.create(model="test/echo", input="again", previous_response_id=answers[7].id)
        assert follow.previous_response_id == answers[7].id


def test_store_false_keeps_nothing(tmp_path: Path, upstream: ServerThread) -> None:
    with dragoman_server(config(upstream, f"sqlite:///{tmp_path / 'dm.db'}")) as server:
        sdk = client(server)
        unkept = sdk.responses.create(model="test/echo", input="gone", store=False)
        with sdk.responses.stream(model="test/echo", input="gone too", store=False) as stream:
            streamed = stream.get_final_response()
        for response_id in (unkept.id, streamed.id):
            with pytest.raises(openai.NotFoundError):
                sdk.responses.retrieve(response_id)
        assert rows(tmp_path / "dm.db") == 0


def test_expired_responses_are_not_served_and_are_purged(tmp_path: Path, upstream: ServerThread) -> None:
    retention = {"responses": {"retention_days": 2 / 86400}}  # two seconds
    with dragoman_server(config(upstream, f"sqlite:///{tmp_path / 'dm.db'}", **retention)) as server:
        sdk = client(server)
        response = sdk.responses.create(model="test/echo", input="short-lived")
        assert sdk.responses.retrieve(response.id).output_text == "short-lived"
        time.sleep(2.5)
        with pytest.raises(openai.NotFoundError):
            sdk.responses.retrieve(response.id)
        with pytest.raises(openai.NotFoundError):
            sdk.responses.create(model="test/echo", input="x", previous_response_id=response.id)
        assert wait_until(lambda: rows(tmp_path / "dm.db") == 0, timeout=10), "the expired row was not purged"


def test_a_too_large_response_is_answered_not_stored(tmp_path: Path, upstream: ServerThread) -> None:
    limit = {"responses": {"max_response_bytes": 4096}}
    with dragoman_server(config(upstream, f"sqlite:///{tmp_path / 'dm.db'}", **limit)) as server:
        sdk = client(server)
        big = sdk.responses.create(model="test/echo", input="word " * 2000)
        assert big.output_text.startswith("word word")
        with pytest.raises(openai.NotFoundError):
            sdk.responses.retrieve(big.id)


# ------------------------------------------------------------------------------ background


def poll(sdk: openai.OpenAI, response_id: str, *, until: tuple[str, ...], timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        response = sdk.responses.retrieve(response_id)
        if response.status in until or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def test_background_responses_are_polled_and_chained(tmp_path: Path, upstream: ServerThread,
                                                     fake: FakeOpenAI) -> None:
    with dragoman_server(config(upstream, f"sqlite:///{tmp_path / 'dm.db'}")) as server:
        sdk = client(server)
        queued = sdk.responses.create(model="up/gpt-test", input="in the background", background=True)
        assert queued.background is True and queued.status in ("queued", "in_progress")
        assert queued.output == []
        done = poll(sdk, queued.id, until=("completed",))
        assert done.status == "completed" and done.background is True
        assert done.output_text == "You said: in the background"
        assert done.usage is not None and done.usage.output_tokens > 0
        follow = sdk.responses.create(model="up/gpt-test", input="next", previous_response_id=done.id)
        assert follow.output_text == "You said: next"
        assert sent_messages(fake)[-3:] == [("user", "in the background"),
                                            ("assistant", "You said: in the background"), ("user", "next")]
        # A finished background response is returned as it is by cancel.
        assert sdk.responses.cancel(done.id).status == "completed"
        failed = sdk.responses.create(model="up/gpt-error-500", input="x", background=True)
        ended = poll(sdk, failed.id, until=("failed",))
        assert ended.status == "failed" and ended.error is not None and ended.error.code == "server_error"


def test_cancel_stops_a_background_response(tmp_path: Path, upstream: ServerThread, fake: FakeOpenAI) -> None:
    with dragoman_server(config(upstream, f"sqlite:///{tmp_path / 'dm.db'}")) as server:
        sdk = client(server)
        hanging = sdk.responses.create(model="up/gpt-hang", input="never", background=True)
        assert poll(sdk, hanging.id, until=("in_progress",)).status == "in_progress"
        assert wait_until(lambda: any(isinstance(r.body, dict) and r.body.get("model") == "gpt-hang"
                                          for r in fake.requests), timeout=5)
        disconnects = fake.disconnects
        with pytest.raises(openai.NotFoundError):
            client(server, BOB).responses.cancel(hanging.id)
        cancelled = sdk.responses.cancel(hanging.id)
        assert cancelled.id == hanging.id and cancelled.status == "cancelled"
        assert wait_until(lambda: fake.disconnects > disconnects, timeout=5), "the upstream call was not stopped"
        assert sdk.responses.retrieve(hanging.id).status == "cancelled"
        assert sdk.responses.cancel(hanging.id).status == "cancelled"  # again: as it is
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.responses.create(model="test/echo", input="x", previous_response_id=hanging.id)
        assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
        assert len(server.app_state.services.background) == 0  # type: ignore[attr-defined]

        foreground = sdk.responses.create(model="test/echo", input="synchronous")
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.responses.cancel(foreground.id)
        assert "synchronous" in refused.value.message


def test_background_requests_that_cannot_be_served(tmp_path: Path, upstream: ServerThread) -> None:
    with dragoman_server(config(upstream, f"sqlite:///{tmp_path / 'dm.db'}",
                                responses={"max_background": 1})) as server:
        sdk = client(server)
        with pytest.raises(openai.BadRequestError) as unstored:
            sdk.responses.create(model="test/echo", input="x", background=True, store=False)
        assert unstored.value.body["param"] == "store"  # type: ignore[index]
        streamed = httpx.post(f"{server.url}/v1/responses", timeout=10, headers={"authorization": f"Bearer {ALICE}"},
                              json={"model": "test/echo", "input": "x", "background": True, "stream": True})
        assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "stream"
        first = sdk.responses.create(model="up/gpt-hang", input="one", background=True)
        with pytest.raises(openai.RateLimitError):
            sdk.responses.create(model="up/gpt-hang", input="two", background=True)
        sdk.responses.cancel(first.id)


def test_shutdown_ends_background_responses_as_failed(tmp_path: Path, upstream: ServerThread) -> None:
    database = f"sqlite:///{tmp_path / 'dm.db'}"
    with dragoman_server(config(upstream, database)) as server:
        sdk = client(server)
        hanging = sdk.responses.create(model="up/gpt-hang", input="never", background=True)
        assert poll(sdk, hanging.id, until=("in_progress",)).status == "in_progress"
    with dragoman_server(config(upstream, database)) as again:
        ended = client(again).responses.retrieve(hanging.id)
        assert ended.status == "failed"
        assert ended.error is not None and "shut down" in ended.error.message


# ------------------------------------------------------------------------------ PostgreSQL


@pytest.mark.postgres
def test_two_instances_on_postgresql_share_responses(upstream: ServerThread, fake: FakeOpenAI) -> None:
    postgres = ensure_postgres()
    if postgres is None:
        pytest.skip("PostgreSQL is needed (apt-get install postgresql)")
    database = unique_name("dragoman_responses").lower()
    assert _psql(f"CREATE DATABASE {database}") is not None
    try:
        settings = config(upstream, postgres.rsplit("/", 1)[0] + f"/{database}")
        with dragoman_server(settings) as first, dragoman_server(settings) as second:
            a, b = client(first), client(second)
            one = a.responses.create(model="up/gpt-test", input="on the first")
            two = b.responses.create(model="up/gpt-test", input="on the second", previous_response_id=one.id)
            assert sent_messages(fake) == [("user", "on the first"), ("assistant", "You said: on the first"),
                                           ("user", "on the second")]
            assert a.responses.retrieve(two.id).output_text == "You said: on the second"
            with pytest.raises(openai.NotFoundError):
                client(second, BOB).responses.retrieve(two.id)
            [item] = b.responses.input_items.list(one.id).data
            assert [c.text for c in item.content] == ["on the first"]  # type: ignore[union-attr]
            hanging = a.responses.create(model="up/gpt-hang", input="never", background=True)
            assert poll(b, hanging.id, until=("in_progress",)).status == "in_progress"
            assert b.responses.cancel(hanging.id).status == "cancelled"  # the other instance runs it
            assert a.responses.retrieve(hanging.id).status == "cancelled"
            a.responses.delete(one.id)
            with pytest.raises(openai.NotFoundError):
                b.responses.retrieve(one.id)
    finally:
        _psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
