"""One way to build a Redis client: a bounded pool that makes callers wait, not fail.

redis-py's default pool raises "Too many connections" past its size; under a burst (1,000
concurrent streams over several workers) that turned into rate limits let through unchecked
(fail open) and pending marks lost.  A ``BlockingConnectionPool`` instead queues a caller for
up to ``pool_timeout_s`` until a connection is free: back-pressure.  Only a Redis that is
really away (or slower than that) is an error, counted in ``flywheel_redis_errors_total``.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

from gateway.core import metrics

# Socket timeouts: a slow or absent Redis must cost a request milliseconds, not seconds.
TIMEOUT_S = 0.5


def redis_client(
    url: str, *, timeout_s: float = TIMEOUT_S, max_connections: int, pool_timeout_s: float
) -> Redis:
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )
    return Redis(connection_pool=pool)


def own_or_shared(
    url: str | Redis, *, timeout_s: float, max_connections: int, pool_timeout_s: float
) -> tuple[Redis, bool]:
    """A client of one's own for a URL, or the given shared one: (client, owned).  Whoever
    owns a client closes it (the lifespan shares one between the limiter and pending marks)."""
    if isinstance(url, Redis):
        return url, False
    client = redis_client(
        url, timeout_s=timeout_s, max_connections=max_connections, pool_timeout_s=pool_timeout_s
    )
    return client, True


def failed(operation: str) -> None:
    """Count a Redis call that failed (``operation``: acquire, settle, mark, check)."""
    metrics.REDIS_ERRORS.labels(operation).inc()
