"""Completion ids in flight on some gateway replica, shared through Redis.

A completion's row reaches the database only after it finished and its batch was written; until
then, feedback naming it is accepted because the generating process knows the id is on its way
(``CompletionLog.is_pending``).  Behind a load balancer the feedback may reach another replica
(or another ``--workers`` process), which does not know it.  With ``FLYWHEEL_REDIS_URL`` set,
each replica also marks its in-flight ids in Redis, with a TTL, so every replica accepts them.
Browser feedback tokens need none of this: the signed token already proves the id.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.core.redis import TIMEOUT_S, failed, own_or_shared

log = logging.getLogger("flywheel.feedback")


class SharedPending:
    def __init__(
        self,
        url: str | Redis,
        *,
        ttl_s: float,
        key_prefix: str = "flywheel:pending:",
        timeout_s: float = TIMEOUT_S,
        max_connections: int = 256,
        pool_timeout_s: float = 2.0,
    ) -> None:
        self._redis, self._owns = own_or_shared(
            url, timeout_s=timeout_s, max_connections=max_connections, pool_timeout_s=pool_timeout_s
        )
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._prefix = key_prefix
        self._marks: set[asyncio.Task[None]] = set()

    def _key(self, tenant_id: str, completion_id: str) -> str:
        return f"{self._prefix}{tenant_id}:{completion_id}"

    def mark(self, tenant_id: str, completion_id: str) -> None:
        """Mark an id as in flight, without waiting: the request path must not pay a round
        trip (the client learns the id only with the first chunk, after this has landed)."""
        task = asyncio.get_running_loop().create_task(self._set(tenant_id, completion_id))
        self._marks.add(task)
        task.add_done_callback(self._marks.discard)

    async def _set(self, tenant_id: str, completion_id: str) -> None:
        try:
            await self._redis.set(self._key(tenant_id, completion_id), b"1", px=self._ttl_ms)
        except (RedisError, OSError) as exc:
            failed("mark")
            log.warning("could not mark completion %s as pending in Redis: %s", completion_id, exc)

    async def contains(self, tenant_id: str, completion_id: str) -> bool:
        try:
            return bool(await self._redis.exists(self._key(tenant_id, completion_id)))
        except (RedisError, OSError) as exc:
            failed("check")
            log.warning("could not check pending completion %s in Redis: %s", completion_id, exc)
            return False

    async def close(self) -> None:
        if self._marks:
            await asyncio.gather(*self._marks, return_exceptions=True)
        if self._owns:
            await self._redis.aclose()
