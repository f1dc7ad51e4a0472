"""A stale-if-error cache for the lookups every request makes (API key, model route).

With ``ttl_s`` = 0 (the default) every request asks the database, so a revoked key or a new
route takes effect at once; the cached answer is only used while the database is unreachable,
which lets the gateway keep serving known tenants through a database outage (completions are
spooled meanwhile, see feedback/log.py).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from gateway.core.db.errors import DB_UNAVAILABLE
from gateway.core.errors import DatabaseUnavailable

K = TypeVar("K")
V = TypeVar("V")


class StaleIfErrorCache(Generic[K, V]):
    def __init__(self, ttl_s: float = 0.0, max_entries: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[K, tuple[V, float]] = {}

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is not None and now - entry[1] < self.ttl_s:
            return entry[0]
        try:
            value = await load()
        except DB_UNAVAILABLE as exc:
            if entry is not None:
                return entry[0]
            raise DatabaseUnavailable(
                "The database is unreachable and this request cannot be answered from cache.",
                retry_after=2,
            ) from exc
        except BaseException:
            # The database answered "no" (a revoked key, a disabled tenant, a removed route):
            # the old "yes" must not come back while the database is away later.
            self._entries.pop(key, None)
            raise
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (value, now)
        return value

    def invalidate(self, key: K | None = None) -> None:
        if key is None:
            self._entries.clear()
        else:
            self._entries.pop(key, None)
