"""Per-tenant rate limits shared by every gateway replica, in Redis.

The same token buckets as :class:`gateway.core.ratelimit.InMemoryRateLimiter` (capacity = the
per-minute limit, continuous refill, estimate taken up front, real usage settled after), but
each check-and-take is one Lua script run atomically by Redis, so N gateway replicas share one
budget instead of getting N.  The scripts read Redis' own clock (``TIME``), so gateway clocks
need not agree.  Scripts run by EVALSHA (redis-py loads them again after a Redis restart).

When Redis cannot be reached, ``fail_open`` decides: True lets the request through and logs
(at most once per ``_WARN_EVERY_S``), False answers 503 with Retry-After.  Settlement never
fails a request: a lost settlement is logged and dropped.
"""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.core.errors import RateLimited, ServiceUnavailable
from gateway.core.ratelimit import Limits, Quota
from gateway.core.redis import TIMEOUT_S, failed, own_or_shared

log = logging.getLogger("flywheel.ratelimit")

_WARN_EVERY_S = 10.0

# Shared by both scripts: refill bucket KEY (a hash {level, stamp}) at Redis time NOW.
_REFILL = """
local function refill(key, capacity, now)
  local level = tonumber(redis.call('HGET', key, 'level'))
  local stamp = tonumber(redis.call('HGET', key, 'stamp'))
  if level == nil or stamp == nil then
    return capacity
  end
  return math.min(capacity, level + math.max(0, now - stamp) * capacity / 60.0)
end

local function store(key, level, capacity, now)
  -- tostring() keeps 14 digits, which would round the stamp to 0.1 ms.
  redis.call('HSET', key, 'level', string.format('%.17g', level), 'stamp', string.format('%.6f', now))
  -- Keep the key until the bucket would be full again (debt included), then let it go:
  -- a missing key reads as a full bucket.
  local ttl = math.ceil((capacity - level) * 60.0 / capacity) + 60
  redis.call('EXPIRE', key, ttl)
end

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: requests bucket, tokens bucket.  ARGV: rpm, tpm, estimated tokens.
# Returns {0, "", requests left, tokens left} when taken, or {1|2, retry_after} when over the
# request|token limit.
ACQUIRE = (
    _REFILL
    + """
local rpm, tpm, estimate = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local req = refill(KEYS[1], rpm, now)
local tok = refill(KEYS[2], tpm, now)
if req < 1 then
  store(KEYS[1], req, rpm, now)
  store(KEYS[2], tok, tpm, now)
  return {1, tostring((1 - req) * 60.0 / rpm)}
end
-- A request larger than the whole per-minute budget could never pass; it is let through when
-- the bucket is full rather than refused forever.
local need = math.min(estimate, tpm)
if tok < need then
  store(KEYS[1], req, rpm, now)
  store(KEYS[2], tok, tpm, now)
  return {2, tostring((need - tok) * 60.0 / tpm)}
end
store(KEYS[1], req - 1, rpm, now)
store(KEYS[2], tok - estimate, tpm, now)
return {0, "", tostring(req - 1), tostring(tok - estimate)}
"""
)

# KEYS: tokens bucket.  ARGV: tpm, delta (real usage minus the estimate; negative refunds).
SETTLE = (
    _REFILL
    + """
local tpm, delta = tonumber(ARGV[1]), tonumber(ARGV[2])
store(KEYS[1], refill(KEYS[1], tpm, now) - delta, tpm, now)
return 0
"""
)


class RedisRateLimiter:
    """Implements gateway.core.ratelimit.RateLimiter with buckets in Redis."""

    def __init__(
        self,
        url: str | Redis,
        *,
        fail_open: bool = True,
        key_prefix: str = "flywheel:rl:",
        timeout_s: float = TIMEOUT_S,
        max_connections: int = 256,
        pool_timeout_s: float = 2.0,
    ) -> None:
        # A busy pool makes callers wait their turn (gateway/core/redis.py).
        self._redis, self._owns = own_or_shared(
            url, timeout_s=timeout_s, max_connections=max_connections, pool_timeout_s=pool_timeout_s
        )
        self._acquire = self._redis.register_script(ACQUIRE)
        self._settle = self._redis.register_script(SETTLE)
        self.fail_open = fail_open
        self.key_prefix = key_prefix
        self._last_warning = 0.0

    def _keys(self, tenant_id: str) -> tuple[str, str]:
        # The {hash tag} puts both buckets of a tenant in one Redis Cluster slot, which a
        # two-key script needs.
        base = f"{self.key_prefix}{{{tenant_id}}}"
        return f"{base}:req", f"{base}:tok"

    async def acquire(self, tenant_id: str, limits: Limits, estimated_tokens: int) -> Quota | None:
        try:
            verdict, wait, *left = await self._acquire(
                keys=list(self._keys(tenant_id)),
                args=[limits.rpm, limits.tpm, estimated_tokens],
            )
        except (RedisError, OSError) as exc:  # down, timed out, read-only, script broken
            failed("acquire")
            self._unreachable(exc)
            return None
        if int(verdict) == 1:
            raise RateLimited(
                f"Rate limit reached: {limits.rpm} requests per minute.", retry_after=float(wait)
            )
        if int(verdict) == 2:
            raise RateLimited(
                f"Rate limit reached: {limits.tpm} tokens per minute.", retry_after=float(wait)
            )
        return Quota(limits, float(left[0]), float(left[1]))

    async def settle(self, tenant_id: str, limits: Limits, delta_tokens: int) -> None:
        if delta_tokens == 0:
            return
        try:
            await self._settle(keys=[self._keys(tenant_id)[1]], args=[limits.tpm, delta_tokens])
        except (RedisError, OSError) as exc:
            failed("settle")
            self._warn(f"rate-limit settlement for {tenant_id} lost, Redis unreachable: {exc}")

    async def close(self) -> None:
        if self._owns:
            await self._redis.aclose()

    def _unreachable(self, exc: Exception) -> None:
        if not self.fail_open:
            raise ServiceUnavailable(
                "Rate limiting is unavailable (Redis unreachable); try again shortly.",
                retry_after=1.0,
            ) from exc
        self._warn(f"Redis unreachable, rate limits not enforced (fail open): {exc}")

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning = now
            log.warning(message)
