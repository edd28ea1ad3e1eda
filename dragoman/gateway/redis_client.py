"""The Redis client for the request path (limits, key-cache invalidation)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis


def connect_redis(url: str, *, timeout: float = 1.0) -> Redis:
    """A client with short timeouts and one immediate retry.

    redis-py's defaults (5 s timeouts, several retries with backoff) would hold every request for
    seconds while Redis is down; the limiter would rather notice at once and fail open.
    ``redis`` is an optional dependency (``dragoman[redis]``), imported only when configured.
    """
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                          retry=Retry(NoBackoff(), 1), health_check_interval=30)
