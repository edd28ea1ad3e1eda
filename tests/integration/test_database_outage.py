"""A hung or refusing PostgreSQL does not stall requests under ``auth.mode: keys``.

dragoman reaches its own PostgreSQL database through a TCP proxy the test can hang (nothing
forwarded: a stopped server) or make refuse connections, so the server other tests share is
never touched. Keys seen recently keep working from the cache; a key never seen gets a quick 503
in the client's dialect; budgets count from zero for now; one warning is logged, not one per request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from dragoman.app import AppServices
from dragoman.errors import GatewayError
from dragoman.gateway.keys import KeyService, generate_secret
from dragoman.gateway.store import Store
from tests.fakes.tcp_proxy import PausableProxy
from tests.servers import ServerThread, dragoman_server
from tests.services import PG_HOST, PG_PORT, _psql, ensure_postgres, unique_name

DB_TIMEOUT = 0.5
UNAVAILABLE = "The key store is unavailable; try again shortly."
CHAT = {"model": "test/echo", "messages": [{"role": "user", "content": "hi"}]}

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A database of its own on the shared PostgreSQL server, dropped afterwards."""
    url = ensure_postgres()
    if url is None:
        pytest.skip("PostgreSQL is needed (apt-get install postgresql)")
    name = unique_name("dragoman_outage").lower()
    assert _psql(f"CREATE DATABASE {name}") is not None
    try:
        yield name
    finally:
        _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def proxy() -> Iterator[PausableProxy]:
    with PausableProxy(PG_HOST, PG_PORT) as running:
        yield running


@pytest.fixture
def gateway(database: str, proxy: PausableProxy) -> Iterator[ServerThread]:
    config = {"backends": [{"name": "test", "type": "echo", "models": ["echo", "other"]}],
              "auth": {"mode": "keys", "cache_ttl": 0.2},
              "database": f"postgresql://postgres@127.0.0.1:{proxy.port}/{database}",
              "database_timeout": DB_TIMEOUT}
    with dragoman_server(config) as server:
        yield server


def create_key(server: ServerThread, **options: Any) -> str:
    services: AppServices = server.app_state.services  # type: ignore[attr-defined]
    assert services.keys is not None
    _, secret = server.run_coroutine(services.keys.create(unique_name("key"), **options))
    return str(secret)


def chat(server: ServerThread, secret: str, model: str = "test/echo",
         client: httpx.Client | None = None) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    response = (client or httpx).post(f"{server.url}/v1/chat/completions", json={**CHAT, "model": model},
                                      headers={"authorization": f"Bearer {secret}"}, timeout=30)
    return time.monotonic() - started, response


def test_a_hung_database_does_not_stall_requests(gateway: ServerThread, proxy: PausableProxy) -> None:
    seen = create_key(gateway)
    budgeted = create_key(gateway, models=["test/echo"], budget_tokens=1000, budget_period="day")
    never_seen = create_key(gateway)
    assert chat(gateway, seen)[1].status_code == 200
    assert chat(gateway, budgeted, "test/other")[1].status_code == 403  # key cached; its budget not read yet

    hung_for = 6.0  # without the database timeout, requests waited until the database came back
    proxy.hang()
    safety = threading.Timer(hung_for, proxy.resume)
    safety.start()
    hung_at = time.monotonic()
    results: dict[str, list[tuple[float, int]]] = {"seen": [], "never_seen": []}

    def keep_calling(name: str, secret: str) -> None:
        with httpx.Client() as client:
            while time.monotonic() - hung_at < hung_for - 2.5:
                elapsed, response = chat(gateway, secret, client=client)
                results[name].append((elapsed, response.status_code))

    try:
        with ThreadPoolExecutor(4) as pool:
            calls = [pool.submit(keep_calling, "seen", seen) for _ in range(2)]
            calls.append(pool.submit(keep_calling, "never_seen", never_seen))
            # The budget's first figure cannot be read either: counted from zero for now, not waited on.
            budget_call = pool.submit(chat, gateway, budgeted)
            for call in calls:
                call.result()
            budget_elapsed, response = budget_call.result()
    finally:
        safety.cancel()
        proxy.resume()
    assert response.status_code == 200

    assert {status for _, status in results["seen"]} == {200}
    assert {status for _, status in results["never_seen"]} == {503}
    # No request waited much past the database timeout (the slack is for a busy test machine).
    slowest = max([budget_elapsed] + [elapsed for rows in results.values() for elapsed, _ in rows])
    assert slowest < DB_TIMEOUT + 2.0, results

    # A key never seen fails fast, in each dialect's shape, while the database hangs.
    proxy.hang()
    try:
        with pytest.raises(openai.InternalServerError) as oa:
            openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=never_seen, max_retries=0).chat.completions.create(
                model="test/echo", messages=[{"role": "user", "content": "hi"}])
        assert oa.value.status_code == 503
        assert oa.value.body == {"message": UNAVAILABLE, "type": "server_error", "param": None,
                                 "code": "key_store_unavailable"}
        assert oa.value.response.headers["retry-after"] == "1"
        with pytest.raises(anthropic.APIStatusError) as an:
            anthropic.Anthropic(base_url=gateway.url, api_key=never_seen, max_retries=0).messages.create(
                model="test/echo", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        assert an.value.status_code == 503
        assert an.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": UNAVAILABLE},
                                 "request_id": an.value.response.headers["request-id"]}
        with pytest.raises(ollama.ResponseError) as ol:
            ollama.Client(host=gateway.url, headers={"authorization": f"Bearer {never_seen}"}).chat(
                model="test/echo", messages=[{"role": "user", "content": "hi"}])
        assert (ol.value.status_code, ol.value.error) == (503, UNAVAILABLE)
    finally:
        proxy.resume()

    # Once the database answers again, so does the key it had no answer for.
    deadline = time.monotonic() + 10
    while chat(gateway, never_seen)[1].status_code != 200:
        assert time.monotonic() < deadline, "the key store did not recover"
        time.sleep(0.2)


def test_a_refusing_database_is_logged_once_not_per_request(
        gateway: ServerThread, proxy: PausableProxy, caplog: pytest.LogCaptureFixture) -> None:
    seen = create_key(gateway)
    assert chat(gateway, seen)[1].status_code == 200
    proxy.refuse()
    try:
        with caplog.at_level(logging.WARNING, logger="dragoman"):
            started = time.monotonic()
            statuses = []
            while time.monotonic() - started < 3.0:  # many times the key cache's TTL
                statuses.append(chat(gateway, seen)[1].status_code)
                time.sleep(0.01)
    finally:
        proxy.resume()
    assert len(statuses) > 10 and set(statuses) == {200}
    warnings = [r.getMessage() for r in caplog.records if r.name == "dragoman.gateway.keys"]
    assert warnings == ["key store unavailable (ConnectionRefusedError); cached keys are served, others get a 503"]


async def test_after_a_timeout_the_key_cache_answers_without_waiting(database: str, proxy: PausableProxy) -> None:
    store = await Store.open(f"postgresql://postgres@127.0.0.1:{proxy.port}/{database}", request_timeout=DB_TIMEOUT)
    keys = KeyService(store, cache_ttl=0.05, retry_interval=1.0)
    try:
        _, seen = await keys.create(unique_name("seen"))
        _, unseen = await keys.create(unique_name("unseen"))
        await keys.authenticate(seen)
        await asyncio.sleep(0.1)  # past the cache TTL: the next lookup would ask the database
        proxy.hang()

        started = time.monotonic()
        with pytest.raises(GatewayError) as first:
            await keys.authenticate(generate_secret())
        assert first.value.status == 503 and time.monotonic() - started >= DB_TIMEOUT  # waited for the timeout
        # The database just failed: nothing waits on it again, cached key or not.
        started = time.monotonic()
        assert (await keys.authenticate(seen)).key_id
        with pytest.raises(GatewayError) as second:
            await keys.authenticate(unseen)
        assert second.value.status == 503 and time.monotonic() - started < DB_TIMEOUT / 2

        proxy.resume()
        await asyncio.sleep(1.1)  # the retry interval: the next lookup asks the database again
        assert (await keys.authenticate(unseen)).key_id
    finally:
        proxy.resume()
        await keys.aclose()
        await store.aclose()
