"""API keys: creation, storage as hashes, and fast authentication with a short-lived cache.

A key is ``sk-dm-`` followed by 40 URL-safe random characters (240 bits). It is shown once, at
creation; the database keeps only its SHA-256 (HMAC-SHA-256 with a server pepper when one is
configured). A slow password hash (argon2, bcrypt) exists to make guessing a *low-entropy* secret
expensive; nobody can enumerate 2**240 keys, so a fast hash is as safe here and keeps
authentication cheap. The pepper adds that a stolen database alone cannot even check a guess.

Lookup is by hash (an index lookup on a value an attacker cannot steer towards a real key), then
``hmac.compare_digest``: nothing about the secret leaks through timing. Results, good and bad,
are cached for ``cache_ttl`` seconds (default 5) so the database is not on the request path; a
revoked or edited key therefore stops working within that TTL on every instance, and at once on
all of them when Redis is configured (a pub/sub message evicts it from every instance's cache).

When the database fails or does not answer within the store's ``request_timeout``, a key seen in
the last ``stale_ttl`` seconds is served from the cache and any other gets a 503; for
``retry_interval`` seconds after such a failure no request waits on the database again (one
lookup re-checks it in the background), and the warning is logged at most every 10 seconds.

Static keys (chosen by the operator in the configuration) are hashed the same way, checked
before the database and never stored; ``dragoman.gateway.static_keys`` says how.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, delete, or_, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from dragoman.errors import ErrorKind, GatewayError, invalid_request
from dragoman.gateway.key_fields import EDITABLE, check_budget, validate
from dragoman.gateway.logutil import ThrottledLog
from dragoman.gateway.principal import KeyInfo, Principal
from dragoman.gateway.static_keys import StaticKey, StaticKeyTable
from dragoman.gateway.store import Store
from dragoman.gateway.store.schema import api_keys
from dragoman.gateway.timeutil import as_utc, utcnow

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["AUTH_FAILED", "KEY_PREFIX", "KeyInfo", "KeyService", "Principal", "StaticKey", "generate_secret",
           "hash_secret"]

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-dm-"
_SECRET_BYTES = 30  # -> 40 URL-safe base64 characters
_MAX_SECRET_LEN = 256
AUTH_FAILED = "Invalid API key"  # one message for missing, unknown, revoked, expired and disabled keys
# What a key store that fails or does not answer raises (asyncpg raises OSError when it cannot connect).
_STORE_ERRORS = (SQLAlchemyError, OSError, TimeoutError)


def generate_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


def looks_like_key(text: str) -> bool:
    """True when ``text`` has the shape of a dragoman key (``sk-dm-`` and URL-safe characters),
    whether or not such a key exists: the admin sign-in refuses these without counting a guess."""
    rest = text[len(KEY_PREFIX):]
    return (text.startswith(KEY_PREFIX) and bool(rest) and len(text) <= _MAX_SECRET_LEN
            and all(c.isascii() and (c.isalnum() or c in "-_") for c in rest))


def hash_secret(secret: str, pepper: bytes | None = None) -> str:
    """Hex SHA-256 of the key, or HMAC-SHA-256 keyed by ``pepper`` (changing it voids every key)."""
    data = secret.encode()
    if pepper:
        return hmac.new(pepper, data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


def _info(row: RowMapping) -> KeyInfo:
    expires = row["expires_at"]
    last = row["last_used_at"]
    return KeyInfo(
        id=row["id"], name=row["name"], hint=row["hint"], models=tuple(row["models"]),
        expires_at=None if expires is None else as_utc(expires),
        rpm=row["rpm"], tpm=row["tpm"], max_parallel=row["max_parallel"],
        budget_tokens=row["budget_tokens"], budget_cost=row["budget_cost"],
        budget_period=row["budget_period"],
        enabled=bool(row["enabled"]), metadata=dict(row["metadata"] or {}),
        created_at=as_utc(row["created_at"]), last_used_at=None if last is None else as_utc(last),
    )


@dataclass(slots=True)
class _Cached:
    principal: Principal | None  # None: no such key (negative entries are cached too)
    fetched: float  # monotonic


class KeyService:
    """CRUD for keys and ``authenticate(secret) -> Principal``.

    ``redis`` (optional, ``redis.asyncio.Redis``) makes cache invalidation immediate on every
    instance; without it each instance's cache simply expires after ``cache_ttl``. Call
    :meth:`start` to run the background tasks (``last_used_at`` writer, invalidation listener)
    and :meth:`aclose` to stop them.
    """

    def __init__(
        self,
        store: Store,
        *,
        pepper: bytes | None = None,
        cache_ttl: float = 5.0,
        stale_ttl: float = 300.0,
        retry_interval: float = 1.0,
        max_cache_entries: int = 10_000,
        touch_interval: float = 10.0,
        redis: Redis | None = None,
        redis_prefix: str = "dragoman:",
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
        static: Iterable[StaticKey] = (),
    ) -> None:
        self._store = store
        self._pepper = pepper
        self.cache_ttl = cache_ttl
        self._stale_ttl = stale_ttl  # how long a cached answer may serve while the database is down
        self._retry_interval = retry_interval  # after a failure, requests do not wait on the database this long
        self._failing = False  # the last lookup failed and none has succeeded since
        self._retry_at = 0.0  # monotonic; while failing, the next lookup that may wait on the database
        self._warn_store = ThrottledLog(log, 10.0, clock)
        self._max_entries = max_cache_entries
        self._touch_interval = touch_interval
        self._redis = redis
        self._channel = f"{redis_prefix}keys:invalidate"
        self._clock = clock
        self._now = now
        self._cache: dict[str, _Cached] = {}
        self._hash_by_id: dict[str, str] = {}
        self._inflight: dict[str, asyncio.Task[Principal | None]] = {}
        self._touched: dict[str, datetime] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()
        self._static = StaticKeyTable(static, hash_secret=lambda secret: hash_secret(secret, pepper),
                                      loaded_at=now())

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        self._tasks.append(asyncio.create_task(self._touch_loop(), name="dragoman-keys-touch"))
        if self._redis is not None:
            self._tasks.append(asyncio.create_task(self._listen(), name="dragoman-keys-invalidate"))
            try:
                await asyncio.wait_for(self._subscribed.wait(), timeout=5.0)
            except TimeoutError:
                log.warning("key cache invalidation: Redis not subscribed yet; keys expire after %.0fs",
                            self.cache_ttl)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        lookups = list(self._inflight.values())
        for inflight in lookups:
            inflight.cancel()
        if lookups:  # a lookup stuck on a hung database takes a moment to give its connection back
            await asyncio.wait(lookups, timeout=3.0)
        await self.flush_last_used()

    # -- authentication --------------------------------------------------------------------

    async def authenticate(self, secret: str | None) -> Principal:
        """The principal for ``secret``; ``GatewayError(AUTHENTICATION)`` with one message otherwise."""
        if not secret or len(secret) > _MAX_SECRET_LEN:
            raise GatewayError(ErrorKind.AUTHENTICATION, AUTH_FAILED)
        key_hash = hash_secret(secret, self._pepper)
        static = self._static.find(key_hash)
        if static is None and not secret.startswith(KEY_PREFIX):
            raise GatewayError(ErrorKind.AUTHENTICATION, AUTH_FAILED)
        principal = static or await self._lookup(key_hash)
        if principal is None or not principal.enabled or principal.is_expired(self._now()):
            raise GatewayError(ErrorKind.AUTHENTICATION, AUTH_FAILED)
        if static is not None:
            self._static.touch(static.key_id, self._now())
        else:
            self._touched[principal.key_id] = self._now()
        return principal

    async def _lookup(self, key_hash: str) -> Principal | None:
        entry = self._cache.get(key_hash)
        now = self._clock()
        if entry is not None and now - entry.fetched < self.cache_ttl:
            return entry.principal
        stale = entry if entry is not None and now - entry.fetched < self._stale_ttl else None
        if self._failing:
            # The database failed a moment ago: answer at once rather than wait on it again. One
            # lookup per retry interval re-checks it (in the background when the cache can answer).
            probe = now >= self._retry_at
            if probe:
                self._retry_at = now + self._retry_interval
            if stale is not None:
                if probe:
                    self._start_load(key_hash)
                return stale.principal
            if not probe:
                raise self._unavailable()
        try:
            return await self._store.on_request_path(self._start_load(key_hash))
        except _STORE_ERRORS as exc:
            if isinstance(exc, TimeoutError):  # still running; an error was already seen by _loaded
                self._store_failed(exc)
            if stale is not None:
                return stale.principal
            raise self._unavailable() from exc

    def _start_load(self, key_hash: str) -> asyncio.Task[Principal | None]:
        """The lookup of ``key_hash``: one database query however many requests miss the cache at once."""
        task = self._inflight.get(key_hash)
        if task is None:
            task = asyncio.create_task(self._load(key_hash))
            self._inflight[key_hash] = task
            task.add_done_callback(functools.partial(self._loaded, key_hash))
        return task

    def _loaded(self, key_hash: str, task: asyncio.Task[Principal | None]) -> None:
        self._inflight.pop(key_hash, None)
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here too: nobody awaits a background re-check
        if exc is None:
            if self._failing:
                self._failing = False
                log.info("key store is answering again")
        elif isinstance(exc, _STORE_ERRORS):
            self._store_failed(exc)
        else:
            log.error("key lookup failed", exc_info=exc)

    def _store_failed(self, exc: BaseException) -> None:
        if not self._failing:
            self._failing = True
            self._retry_at = self._clock() + self._retry_interval
        why = (f"no answer within {self._store.request_timeout:g}s" if isinstance(exc, TimeoutError)
               else type(exc).__name__)
        self._warn_store(logging.WARNING, "key store unavailable (%s); cached keys are served, others get a 503",
                         why)

    @staticmethod
    def _unavailable() -> GatewayError:
        return GatewayError(ErrorKind.INTERNAL, "The key store is unavailable; try again shortly.",
                            status=503, code="key_store_unavailable", retry_after=1.0)

    async def _load(self, key_hash: str) -> Principal | None:
        async with self._store.connect() as conn:
            query = select(api_keys).where(api_keys.c.key_hash == key_hash)
            row = (await conn.execute(query)).mappings().first()
        principal = None
        if row is not None and hmac.compare_digest(row["key_hash"], key_hash):
            principal = _info(row).principal()
        self._remember(key_hash, principal)
        return principal

    def _remember(self, key_hash: str, principal: Principal | None) -> None:
        if len(self._cache) >= self._max_entries and key_hash not in self._cache:
            self._shrink()
        self._cache[key_hash] = _Cached(principal, self._clock())
        if principal is not None:
            self._hash_by_id[principal.key_id] = key_hash

    def _shrink(self) -> None:
        """Drop expired entries, then the oldest half if that was not enough (bounded memory
        however many random keys a client tries)."""
        now = self._clock()
        for key_hash in [h for h, e in self._cache.items() if now - e.fetched >= self._stale_ttl]:
            self._forget_hash(key_hash)
        if len(self._cache) >= self._max_entries:
            for key_hash in list(self._cache)[: len(self._cache) // 2 + 1]:
                self._forget_hash(key_hash)

    def _forget_hash(self, key_hash: str) -> None:
        entry = self._cache.pop(key_hash, None)
        if entry is not None and entry.principal is not None:
            self._hash_by_id.pop(entry.principal.key_id, None)

    def invalidate(self, key_id: str | None = None) -> None:
        """Evict one key (by id) from this instance's cache, or everything with ``None``."""
        if key_id is None:
            self._cache.clear()
            self._hash_by_id.clear()
            return
        key_hash = self._hash_by_id.pop(key_id, None)
        if key_hash is not None:
            self._cache.pop(key_hash, None)

    async def _broadcast(self, key_id: str) -> None:
        self.invalidate(key_id)
        if self._redis is None:
            return
        from redis.exceptions import RedisError

        try:
            await self._redis.publish(self._channel, key_id)
        except (RedisError, OSError) as exc:
            # The change is saved; only the broadcast failed, and caches expire on their own.
            log.warning("could not publish key invalidation (%s); other instances catch up within %.0fs",
                        exc, self.cache_ttl)

    async def _listen(self) -> None:
        from redis.exceptions import RedisError

        assert self._redis is not None
        backoff = 0.5
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    # Anything published while we were not listening is lost: start clean.
                    self.invalidate()
                    self._subscribed.set()
                    backoff = 0.5
                    while True:
                        # Poll with a timeout rather than block: a blocking read would trip the
                        # client's socket timeout on a quiet channel.
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if message and message.get("type") == "message":
                            data = message["data"]
                            key_id = data.decode() if isinstance(data, bytes) else str(data)
                            self.invalidate(None if key_id == "*" else key_id)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._subscribed.clear()
                log.warning("key invalidation listener lost Redis (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    # -- last_used_at, written in batches off the request path ---------------------------------

    async def _touch_loop(self) -> None:
        while True:
            await asyncio.sleep(self._touch_interval)
            await self.flush_last_used()

    async def flush_last_used(self) -> None:
        if not self._touched:
            return
        batch, self._touched = self._touched, {}
        try:
            async with self._store.begin() as conn:
                await conn.execute(
                    update(api_keys)
                    .where(api_keys.c.id == bindparam("kid"))
                    .values(last_used_at=bindparam("ts")),
                    [{"kid": k, "ts": ts} for k, ts in batch.items()],
                )
        except (SQLAlchemyError, OSError) as exc:
            log.warning("could not record keys' last use (%s); will retry", exc)
            for key_id, ts in batch.items():
                self._touched.setdefault(key_id, ts)

    # -- management --------------------------------------------------------------------------

    async def create(
        self,
        name: str,
        *,
        models: Iterable[str] = ("*",),
        expires_at: datetime | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        max_parallel: int | None = None,
        budget_tokens: int | None = None,
        budget_cost: float | None = None,
        budget_period: str | None = None,
        enabled: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> tuple[KeyInfo, str]:
        """Store a new key; returns its info and the secret, which is never available again."""
        values = validate({
            "name": name, "models": list(models), "expires_at": expires_at, "rpm": rpm, "tpm": tpm,
            "max_parallel": max_parallel, "budget_tokens": budget_tokens, "budget_cost": budget_cost,
            "budget_period": budget_period, "enabled": enabled, "metadata": metadata,
        })
        check_budget(values)
        self._static.refuse_name(values["name"])
        secret = generate_secret()
        row = {
            **values,
            "id": "key_" + secrets.token_hex(8),
            "key_hash": hash_secret(secret, self._pepper),
            "hint": secret[-4:],
            "created_at": self._now(),
            "last_used_at": None,
        }
        try:
            async with self._store.begin() as conn:
                await conn.execute(api_keys.insert().values(**row))
        except IntegrityError as exc:
            raise invalid_request(f"a key named {values['name']!r} already exists", "name") from exc
        return await self.get(row["id"]), secret

    async def list_keys(self) -> list[KeyInfo]:
        """The static keys (in config order), then the stored ones."""
        async with self._store.connect() as conn:
            query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.name)
            rows = (await conn.execute(query)).mappings()
            stored = [_info(row) for row in rows]
        return [*self._static.infos(), *stored]

    async def get(self, ref: str) -> KeyInfo:
        """A key by id or, failing that, by name; ``GatewayError(NOT_FOUND)`` if neither."""
        static = self._static.get(ref)
        if static is not None:
            return static
        async with self._store.connect() as conn:
            rows = (await conn.execute(
                select(api_keys).where(or_(api_keys.c.id == ref, api_keys.c.name == ref))
            )).mappings().all()
        if not rows:
            raise GatewayError(ErrorKind.NOT_FOUND, f"no API key with id or name {ref!r}",
                               code="key_not_found")
        by_id = [row for row in rows if row["id"] == ref]
        return _info((by_id or rows)[0])

    async def update(self, ref: str, changes: Mapping[str, Any]) -> KeyInfo:
        """Change editable fields (see ``EDITABLE``); ``None`` clears an optional limit."""
        self._static.refuse_changes(ref)
        values = validate(changes)
        if "name" in values:
            self._static.refuse_name(values["name"])
        current = await self.get(ref)
        merged = {f: getattr(current, f) for f in EDITABLE} | values
        check_budget(merged)
        if values:
            try:
                async with self._store.begin() as conn:
                    await conn.execute(update(api_keys).where(api_keys.c.id == current.id).values(**values))
            except IntegrityError as exc:
                raise invalid_request(f"a key named {values.get('name')!r} already exists", "name") from exc
            await self._broadcast(current.id)
        return await self.get(current.id)

    async def revoke(self, ref: str) -> KeyInfo:
        """Delete a key for good (usage records keep its id and name). To pause a key instead,
        ``update(ref, {"enabled": False})``."""
        self._static.refuse_changes(ref)
        current = await self.get(ref)
        async with self._store.begin() as conn:
            await conn.execute(delete(api_keys).where(api_keys.c.id == current.id))
        self._touched.pop(current.id, None)
        await self._broadcast(current.id)
        return current


