"""Keys, limits, usage and metrics on the real request path, in every dialect's shape.

Also two dragoman instances on one PostgreSQL + Redis: a key made on one works on the other,
a revoke propagates, limits are shared.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from dragoman.app import AppServices
from tests.fakes.openai_upstream import wait_until
from tests.servers import ServerThread, dragoman_server
from tests.services import _psql, ensure_postgres, ensure_redis, unique_name


def services_of(server: ServerThread) -> AppServices:
    services: AppServices = server.app_state.services  # type: ignore[attr-defined]
    return services


def create_key(server: ServerThread, name: str, **options: Any) -> str:
    keys = services_of(server).keys
    assert keys is not None
    _, secret = server.run_coroutine(keys.create(name, **options))
    return str(secret)


def flush_usage(server: ServerThread) -> None:
    control = services_of(server).control
    assert control is not None
    server.run_coroutine(control.recorder.flush())


def usage_rows(server: ServerThread) -> list[Any]:
    control = services_of(server).control
    assert control is not None
    flush_usage(server)
    return list(server.run_coroutine(control.usage_store.recent(limit=100)))


BASE_CONFIG: dict[str, Any] = {
    "backends": [{"name": "test", "type": "echo", "models": ["echo", "other"]}],
    "auth": {"mode": "keys", "cache_ttl": 1},
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    directory = tmp_path_factory.mktemp("control")
    with dragoman_server({**BASE_CONFIG, "database": f"sqlite:///{directory / 'db.sqlite'}"}) as server:
        yield server


def test_keys_are_required_on_every_dialect(gateway: ServerThread) -> None:
    with pytest.raises(openai.AuthenticationError) as oa:
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-dm-wrong", max_retries=0).models.list()
    assert oa.value.status_code == 401 and oa.value.body["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError) as an:
        anthropic.Anthropic(base_url=gateway.url, api_key="sk-dm-wrong", max_retries=0).messages.create(
            model="test/echo", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert an.value.status_code == 401
    with pytest.raises(ollama.ResponseError) as ol:
        ollama.Client(host=gateway.url).list()
    assert ol.value.status_code == 401
    missing = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "test/echo", "messages": []})
    assert missing.status_code == 401
    assert missing.json()["error"]["message"] == "Invalid API key"


def test_rejections_are_logged_without_the_key(gateway: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    name = unique_name("logged")
    secret = create_key(gateway, name)
    keys = services_of(gateway).keys
    assert keys is not None
    gateway.run_coroutine(keys.revoke(name))
    with caplog.at_level("WARNING", logger="dragoman.auth"):
        response = httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {secret}"})
    assert response.status_code == 401
    rejections = [r.getMessage() for r in caplog.records if r.name == "dragoman.auth"]
    assert rejections and "rejected openai request from 127.0.0.1" in rejections[-1]
    assert all(secret not in r.getMessage() and secret[-8:] not in r.getMessage() for r in caplog.records)


def test_a_key_works_by_every_header(gateway: ServerThread) -> None:
    secret = create_key(gateway, unique_name("headers"))
    body = {"model": "test/echo", "messages": [{"role": "user", "content": "hi"}]}
    for headers in ({"authorization": f"Bearer {secret}"}, {"x-api-key": secret}, {"api-key": secret}):
        response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers)
        assert response.status_code == 200, (headers, response.text)
    client = anthropic.Anthropic(base_url=gateway.url, api_key=secret, max_retries=0)
    message = client.messages.create(model="test/echo", max_tokens=10, messages=[{"role": "user", "content": "yo"}])
    assert message.content[0].text == "yo"  # type: ignore[union-attr]
    chat = ollama.Client(host=gateway.url, headers={"Authorization": f"Bearer {secret}"}).chat(
        model="test/echo", messages=[{"role": "user", "content": "hey"}], stream=False)
    assert chat.message.content == "hey"


def test_model_access_is_per_key(gateway: ServerThread) -> None:
    secret = create_key(gateway, unique_name("narrow"), models=["test/echo"])
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0)
    assert [m.id for m in client.models.list()] == ["test/echo"]
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(model="test/other", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 403
    tags = ollama.Client(host=gateway.url, headers={"Authorization": f"Bearer {secret}"}).list()
    assert [m.model for m in tags.models] == ["test/echo"]


def test_revoked_and_expired_keys_fail(gateway: ServerThread) -> None:
    name = unique_name("revoke")
    secret = create_key(gateway, name)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0)
    assert client.models.list().data
    keys = services_of(gateway).keys
    assert keys is not None
    gateway.run_coroutine(keys.revoke(name))
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    from datetime import UTC, datetime, timedelta
    expired = create_key(gateway, unique_name("expired"), expires_at=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=expired, max_retries=0).models.list()


def test_rpm_limit_is_429_with_retry_after(gateway: ServerThread) -> None:
    secret = create_key(gateway, unique_name("rpm"), rpm=2)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0)
    for _ in range(2):
        client.chat.completions.create(model="test/echo", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="test/echo", messages=[{"role": "user", "content": "x"}])
    assert int(info.value.response.headers["retry-after"]) >= 1
    with pytest.raises(anthropic.RateLimitError):
        anthropic.Anthropic(base_url=gateway.url, api_key=secret, max_retries=0).messages.create(
            model="test/echo", max_tokens=5, messages=[{"role": "user", "content": "x"}])


def test_model_limits_from_the_config_are_shared_by_every_key(tmp_path: Path) -> None:
    """``limits.models``: one rpm for all callers of the matching models, on top of each key's own."""
    config = {**BASE_CONFIG, "database": f"sqlite:///{tmp_path / 'db.sqlite'}",
              "backends": [{"name": "test", "type": "echo", "models": ["echo", "shared"]}],
              "limits": {"models": {"test/shared*": {"rpm": 1}}}}
    with dragoman_server(config) as server:
        first, second = (openai.OpenAI(base_url=f"{server.url}/v1", api_key=create_key(server, unique_name(n)),
                                       max_retries=0) for n in ("one", "two"))
        first.chat.completions.create(model="test/shared", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.RateLimitError) as info:
            second.chat.completions.create(model="test/shared", messages=[{"role": "user", "content": "x"}])
        assert "test/shared*" in info.value.message
        assert second.chat.completions.create(model="test/echo", messages=[{"role": "user", "content": "x"}])


def test_usage_is_recorded_without_prompt_or_key(gateway: ServerThread) -> None:
    name = unique_name("usage")
    secret = create_key(gateway, name)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0)
    client.chat.completions.create(model="test/echo", messages=[{"role": "user", "content": "count these four"}])
    list(client.chat.completions.create(model="test/echo", messages=[{"role": "user", "content": "two words"}],
                                        stream=True))
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="test/nothing", messages=[{"role": "user", "content": "x"}])
    rows = [r for r in usage_rows(gateway) if r.key_name == name]
    assert len(rows) == 3
    by_status = sorted((r.status, r.completion_tokens, r.dialect) for r in rows)
    assert by_status == [(200, 2, "openai"), (200, 3, "openai"), (404, 0, "openai")]
    ok = [r for r in rows if r.status == 200]
    assert all(r.backend == "test" and r.upstream_model == "echo" and r.latency_ms > 0 for r in ok)
    assert all(r.ttft_ms is not None for r in ok)
    dump = repr(rows)
    assert secret not in dump and "count these four" not in dump


def test_metrics_endpoint(gateway: ServerThread) -> None:
    # Under auth.mode: keys the metrics need a key (metrics.auth defaults to key; see test_exposure).
    key = create_key(gateway, "prometheus")
    text = httpx.get(f"{gateway.url}/metrics", headers={"authorization": f"Bearer {key}"}).text
    assert "dragoman_requests_total" in text
    assert "dragoman_request_duration_seconds_bucket" in text
    assert "dragoman_usage_queue_depth" in text


@pytest.mark.postgres
@pytest.mark.redis
def test_two_instances_share_keys_and_limits(tmp_path: Path) -> None:
    postgres, redis_url = ensure_postgres(), ensure_redis()
    if postgres is None or redis_url is None:
        pytest.skip("PostgreSQL and Redis are needed (apt-get install postgresql redis-server)")
    database = unique_name("dragoman_two").lower()
    assert _psql(f"CREATE DATABASE {database}") is not None
    try:
        config = {**BASE_CONFIG, "database": postgres.rsplit("/", 1)[0] + f"/{database}", "redis": redis_url}
        with dragoman_server(config) as first, dragoman_server(config) as second:
            secret = create_key(first, "shared", rpm=3)
            a = openai.OpenAI(base_url=f"{first.url}/v1", api_key=secret, max_retries=0)
            b = openai.OpenAI(base_url=f"{second.url}/v1", api_key=secret, max_retries=0)
            for client in (a, b, a):  # one limit of 3 across both instances
                client.chat.completions.create(model="test/echo", messages=[{"role": "user", "content": "x"}])
            with pytest.raises(openai.RateLimitError):
                b.chat.completions.create(model="test/echo", messages=[{"role": "user", "content": "x"}])
            keys = services_of(first).keys
            assert keys is not None
            first.run_coroutine(keys.revoke("shared"))
            started = time.monotonic()

            def revoked() -> bool:
                try:
                    b.models.list()
                except openai.AuthenticationError:
                    return True
                return False

            assert wait_until(revoked, timeout=5), "revoke did not reach the second instance"
            assert time.monotonic() - started < 5
    finally:
        _psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
