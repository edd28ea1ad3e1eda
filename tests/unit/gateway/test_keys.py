"""API keys: format, hashing, lookup, expiry, revocation, cache TTL, last use."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, text

from dragoman.errors import ErrorKind, GatewayError
from dragoman.gateway.keys import AUTH_FAILED, KeyService, Principal, generate_secret, hash_secret
from dragoman.gateway.store import Store
from dragoman.gateway.store.schema import api_keys
from tests.gateway_fixtures import FakeClock, FakeNow


def test_secret_format_and_entropy() -> None:
    secrets = {generate_secret() for _ in range(200)}
    assert len(secrets) == 200
    for secret in secrets:
        assert re.fullmatch(r"sk-dm-[A-Za-z0-9_-]{40}", secret)


def test_hash_is_sha256_or_hmac_with_pepper() -> None:
    secret = "sk-dm-" + "a" * 40
    assert hash_secret(secret) == hashlib.sha256(secret.encode()).hexdigest()
    peppered = hash_secret(secret, b"pepper")
    assert peppered == hmac.new(b"pepper", secret.encode(), hashlib.sha256).hexdigest()
    assert peppered != hash_secret(secret, b"other")


def test_principal_globs() -> None:
    p = Principal(key_id="k", name="n", models=("up/gpt-*", "fast"))
    assert p.may_use("up/gpt-4o")
    assert p.may_use("fast")
    assert p.may_use("nope", "up/gpt-4o-mini")  # any name of several
    assert not p.may_use("up/claude")
    assert not p.may_use("Fast")  # case-sensitive on every platform
    assert Principal(key_id="k", name="n", models=("*",)).may_use("anything/at-all")
    assert Principal.anonymous().may_use("x")


async def _auth_fails(service: KeyService, secret: str | None) -> None:
    with pytest.raises(GatewayError) as info:
        await service.authenticate(secret)
    assert info.value.kind is ErrorKind.AUTHENTICATION
    assert info.value.status == 401
    assert info.value.message == AUTH_FAILED


async def test_create_authenticate_and_storage(sqlite_store: Store) -> None:
    service = KeyService(sqlite_store)
    info, secret = await service.create("alice", models=["up/*"], rpm=10, tpm=1000, max_parallel=2,
                                        budget_tokens=5000, budget_period="month", metadata={"team": "a"})
    assert secret.startswith("sk-dm-") and info.hint == secret[-4:]
    principal = await service.authenticate(secret)
    assert principal == Principal(key_id=info.id, name="alice", models=("up/*",), rpm=10, tpm=1000,
                                  max_parallel=2, budget_tokens=5000, budget_period="month",
                                  metadata={"team": "a"})
    # Only the hash is stored: the secret appears in no column.
    async with sqlite_store.connect() as conn:
        row = (await conn.execute(select(api_keys))).mappings().one()
    assert row["key_hash"] == hash_secret(secret)
    assert all(secret not in str(value) for value in row.values())
    assert [k.name for k in await service.list_keys()] == ["alice"]
    assert (await service.get("alice")).id == info.id
    assert (await service.get(info.id)).name == "alice"


async def test_every_failure_looks_the_same(sqlite_store: Store) -> None:
    now = FakeNow()
    service = KeyService(sqlite_store, now=now)
    _, good = await service.create("good")
    _, expiring = await service.create("expiring", expires_at=now.now + timedelta(hours=1))
    _, disabled = await service.create("disabled", enabled=False)
    _, revoked = await service.create("revoked")
    await service.authenticate(good)
    await service.authenticate(expiring)
    await service.revoke("revoked")
    now.advance(hours=2)
    for secret in (None, "", "Bearer x", "sk-dm-wrong", "sk-dm-" + "x" * 300, good[:-1] + "!", expiring,
                   disabled, revoked):
        await _auth_fails(service, secret)
    await service.authenticate(good)


async def test_pepper_must_match(sqlite_store: Store) -> None:
    _, secret = await KeyService(sqlite_store, pepper=b"one").create("k")
    await KeyService(sqlite_store, pepper=b"one").authenticate(secret)
    await _auth_fails(KeyService(sqlite_store, pepper=b"two"), secret)
    await _auth_fails(KeyService(sqlite_store), secret)


async def test_cache_ttl_bounds_revocation_on_other_instances(sqlite_store: Store) -> None:
    clock = FakeClock()
    admin = KeyService(sqlite_store, clock=clock)
    gateway = KeyService(sqlite_store, clock=clock, cache_ttl=5.0)
    info, secret = await admin.create("bob")
    await gateway.authenticate(secret)  # now cached on the gateway instance
    await admin.revoke("bob")
    clock.advance(4.9)
    assert (await gateway.authenticate(secret)).key_id == info.id  # still cached: within the TTL
    clock.advance(0.2)
    await _auth_fails(gateway, secret)  # TTL over: the database says it is gone


async def test_update_takes_effect_at_once_on_the_same_instance(sqlite_store: Store) -> None:
    clock = FakeClock()
    service = KeyService(sqlite_store, clock=clock)
    _, secret = await service.create("carol")
    await service.authenticate(secret)
    updated = await service.update("carol", {"enabled": False, "rpm": 5})
    assert updated.rpm == 5 and not updated.enabled
    await _auth_fails(service, secret)
    await service.update("carol", {"enabled": True, "models": ["a/*"]})
    assert (await service.authenticate(secret)).models == ("a/*",)


def _count_queries(store: Store) -> list[str]:
    statements: list[str] = []
    event.listen(store.engine.sync_engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_a: statements.append(statement))
    return statements


async def test_answers_good_and_bad_are_cached(sqlite_store: Store) -> None:
    clock = FakeClock()
    service = KeyService(sqlite_store, clock=clock)
    _, good = await service.create("good")
    unknown = generate_secret()
    queries = _count_queries(sqlite_store)
    for _ in range(10):
        await service.authenticate(good)
        await _auth_fails(service, unknown)
    assert len(queries) == 2  # one lookup each per TTL, not one per attempt
    clock.advance(5.0)
    await service.authenticate(good)
    assert len(queries) == 3


async def test_database_outage_serves_recent_answers(sqlite_store: Store) -> None:
    clock = FakeClock()
    service = KeyService(sqlite_store, clock=clock, cache_ttl=5.0, stale_ttl=300.0)
    _, secret = await service.create("frank")
    await service.authenticate(secret)
    async with sqlite_store.begin() as conn:  # the key table becomes unreadable
        await conn.execute(text("ALTER TABLE api_keys RENAME TO api_keys_gone"))
    clock.advance(60)
    await service.authenticate(secret)  # stale but recent: still served
    with pytest.raises(GatewayError) as info:
        await service.authenticate(generate_secret())  # nothing cached: 503, not 401
    assert info.value.status == 503 and info.value.kind is ErrorKind.INTERNAL
    clock.advance(300)
    with pytest.raises(GatewayError) as info:
        await service.authenticate(secret)
    assert info.value.status == 503


async def test_after_an_outage_requests_stop_asking_the_database_for_a_while(
        sqlite_store: Store, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    service = KeyService(sqlite_store, clock=clock, cache_ttl=5.0, retry_interval=1.0)
    _, secret = await service.create("grace")
    await service.authenticate(secret)
    async with sqlite_store.begin() as conn:  # the key table becomes unreadable
        await conn.execute(text("ALTER TABLE api_keys RENAME TO api_keys_gone"))
    queries = _count_queries(sqlite_store)
    clock.advance(10)
    with caplog.at_level("WARNING", logger="dragoman.gateway.keys"):
        for _ in range(50):
            await service.authenticate(secret)  # from the cache
            with pytest.raises(GatewayError) as info:
                await service.authenticate(generate_secret())
            assert (info.value.status, info.value.code, info.value.retry_after) == (503, "key_store_unavailable", 1.0)
    def lookups() -> int:
        return len([q for q in queries if q.startswith("SELECT") and "FROM api_keys" in q])

    assert lookups() == 1  # the first failure; then nothing until the retry interval has passed
    assert [r.getMessage() for r in caplog.records] == [
        "key store unavailable (OperationalError); cached keys are served, others get a 503"]

    async with sqlite_store.begin() as conn:
        await conn.execute(text("ALTER TABLE api_keys_gone RENAME TO api_keys"))
    clock.advance(1.0)
    await service.authenticate(secret)  # served from the cache; the database is re-checked meanwhile
    while service._inflight:
        await asyncio.sleep(0.01)
    assert lookups() == 2
    clock.advance(1.0)
    with pytest.raises(GatewayError) as unknown:  # answered by the database again: a 401, not a 503
        await service.authenticate(generate_secret())
    assert unknown.value.status == 401


async def test_cache_is_bounded(sqlite_store: Store) -> None:
    service = KeyService(sqlite_store, max_cache_entries=50)
    _, good = await service.create("good")
    for _ in range(200):
        await _auth_fails(service, generate_secret())
    assert len(service._cache) <= 50
    await service.authenticate(good)


async def test_validation_errors(sqlite_store: Store) -> None:
    service = KeyService(sqlite_store)
    await service.create("taken")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "taken"}, "already exists"),
        ({"name": " "}, "name"),
        ({"name": "x", "models": []}, "models"),
        ({"name": "x", "rpm": 0}, "rpm"),
        ({"name": "x", "budget_tokens": 10}, "budget_period"),
        ({"name": "x", "budget_tokens": 10, "budget_period": "week"}, "budget_period"),
        ({"name": "x", "metadata": {"a": object()}}, "metadata"),
    ]
    for kwargs, needle in cases:
        name = kwargs.pop("name")
        with pytest.raises(GatewayError) as info:
            await service.create(name, **kwargs)
        assert info.value.kind is ErrorKind.INVALID_REQUEST
        assert needle in info.value.message
    with pytest.raises(GatewayError) as nf:
        await service.revoke("nobody")
    assert nf.value.kind is ErrorKind.NOT_FOUND
    with pytest.raises(GatewayError):
        await service.update("taken", {"secret": "x"})


async def test_last_used_is_written_in_batches(sqlite_store: Store) -> None:
    now = FakeNow()
    service = KeyService(sqlite_store, now=now, touch_interval=3600)
    info, secret = await service.create("dave")
    assert info.last_used_at is None
    await service.start()
    try:
        await service.authenticate(secret)
        assert (await service.get("dave")).last_used_at is None  # not written on the request path
    finally:
        await service.aclose()  # flushes
    assert (await service.get("dave")).last_used_at == now.now


async def test_concurrent_misses_share_one_lookup(sqlite_store: Store) -> None:
    import asyncio

    service = KeyService(sqlite_store)
    info, secret = await service.create("erin")
    results = await asyncio.gather(*(service.authenticate(secret) for _ in range(20)))
    assert {p.key_id for p in results} == {info.id}
    assert not service._inflight


async def test_unreachable_database_is_a_503_not_a_401() -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/test")  # nothing listens
    service = KeyService(Store(engine))
    try:
        with pytest.raises(GatewayError) as info:
            await service.authenticate(generate_secret())
        assert info.value.status == 503 and info.value.retry_after
    finally:
        await engine.dispose()
