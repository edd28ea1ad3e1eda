"""The Redis client for the request path (limits, key-cache invalidation, cooldowns).

A burst of concurrent requests must queue for Redis, never be taken for Redis being down: the
pool is a blocking one (a caller waits for a free connection rather than failing), and each
user of it calls through a :class:`~dragoman.gateway.redis_gate.RedisGate`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

DEFAULT_MAX_CONNECTIONS = 32
DEFAULT_POOL_WAIT = 2.0
# Socket timeouts are only a backstop: redis-py counts them on the event loop's clock, which a
# burst stretches; callers bound their calls with RedisGate.reply instead.
SOCKET_TIMEOUT = 5.0


def connect_redis(url: str, *, timeout: float = SOCKET_TIMEOUT, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                  pool_wait: float = DEFAULT_POOL_WAIT) -> Redis:
    """A client with one immediate retry and a blocking pool.

    redis-py's defaults (several retries with backoff) would hold every request for seconds while
    Redis is down. Its default pool raises "Too many connections" past its size, which a burst
    reaches; this one waits up to ``pool_wait`` seconds for a connection instead. ``redis`` is an
    optional dependency (``dragoman[redis]``), imported only when configured.
    """
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=pool_wait,
                                           socket_connect_timeout=timeout, socket_timeout=timeout,
                                           retry=Retry(NoBackoff(), 1), health_check_interval=30)
    return Redis(connection_pool=pool)
