"""Per-tenant rate limits: requests per minute and tokens per minute.

Token buckets that refill continuously (capacity = the per-minute limit).  A request takes one
request token and an estimate of its tokens (prompt + max_tokens) up front; the difference with
the real usage is settled after the call, so the token budget tracks real usage.  A bucket may
go into debt by that settlement; the next request then waits until it is paid back.

``InMemoryRateLimiter`` is exact for one gateway process; with several replicas use the Redis
limiter (gateway/core/ratelimit_redis.py) so limits are shared, not multiplied.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.core.errors import RateLimited


@dataclass(frozen=True)
class Limits:
    rpm: int
    tpm: int


@dataclass(frozen=True)
class Quota:
    """What is left after a request was taken: OpenAI's ``x-ratelimit-*`` headers."""

    limits: Limits
    remaining_requests: float
    remaining_tokens: float

    def headers(self) -> dict[str, str]:
        rpm, tpm = self.limits.rpm, self.limits.tpm
        requests, tokens = max(0.0, self.remaining_requests), max(0.0, self.remaining_tokens)
        return {
            "x-ratelimit-limit-requests": str(rpm),
            "x-ratelimit-limit-tokens": str(tpm),
            "x-ratelimit-remaining-requests": str(int(requests)),
            "x-ratelimit-remaining-tokens": str(int(tokens)),
            # Until the bucket is full again, at the refill rate (limit per minute).
            "x-ratelimit-reset-requests": _duration((rpm - requests) * 60.0 / rpm),
            "x-ratelimit-reset-tokens": _duration((tpm - tokens) * 60.0 / tpm),
        }


def _duration(seconds: float) -> str:
    """OpenAI's format: "1s", "6m0s", "20ms"."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s" if minutes else f"{rest:.0f}s"


class RateLimiter(Protocol):
    async def acquire(self, tenant_id: str, limits: Limits, estimated_tokens: int) -> Quota | None:
        """Take one request and ``estimated_tokens``; raise RateLimited when over.  Returns what
        is left (None when it cannot say: Redis away and failing open)."""

    async def settle(self, tenant_id: str, limits: Limits, delta_tokens: int) -> None:
        """Charge (or refund, when negative) the difference between real and estimated usage."""

    async def close(self) -> None: ...


@dataclass
class _Bucket:
    level: float
    stamp: float

    def refill(self, capacity: float, now: float) -> None:
        self.level = min(capacity, self.level + (now - self.stamp) * capacity / 60.0)
        self.stamp = now


class InMemoryRateLimiter:
    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or time.monotonic
        self._requests: dict[str, _Bucket] = {}
        self._tokens: dict[str, _Bucket] = {}

    def _bucket(self, table: dict[str, _Bucket], key: str, capacity: float, now: float) -> _Bucket:
        bucket = table.get(key)
        if bucket is None:
            bucket = table[key] = _Bucket(capacity, now)
        bucket.refill(capacity, now)
        return bucket

    async def acquire(self, tenant_id: str, limits: Limits, estimated_tokens: int) -> Quota:
        now = self._clock()
        req = self._bucket(self._requests, tenant_id, limits.rpm, now)
        tok = self._bucket(self._tokens, tenant_id, limits.tpm, now)
        if req.level < 1:
            wait = (1 - req.level) * 60.0 / limits.rpm
            raise RateLimited(
                f"Rate limit reached: {limits.rpm} requests per minute.", retry_after=wait
            )
        # A request larger than the whole per-minute budget could never pass; it is let through
        # when the bucket is full rather than refused forever.
        need = min(estimated_tokens, limits.tpm)
        if tok.level < need:
            wait = (need - tok.level) * 60.0 / limits.tpm
            raise RateLimited(
                f"Rate limit reached: {limits.tpm} tokens per minute.", retry_after=wait
            )
        req.level -= 1
        tok.level -= estimated_tokens
        return Quota(limits, req.level, tok.level)

    async def settle(self, tenant_id: str, limits: Limits, delta_tokens: int) -> None:
        now = self._clock()
        tok = self._bucket(self._tokens, tenant_id, limits.tpm, now)
        tok.level -= delta_tokens

    async def close(self) -> None:
        return None
