"""What gateway replicas share through a real Redis: rate limits (exact across replicas, fail
open/closed) and the completion ids in flight, for feedback sent to another replica.

Redis comes from FLYWHEEL_TEST_REDIS_URL or the local server at 127.0.0.1:6379.  In CI
(CI=true) a missing Redis is an error, never a skip.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from gateway.core.config import Settings
from gateway.core.errors import RateLimited, ServiceUnavailable
from gateway.core.ratelimit import InMemoryRateLimiter, Limits, RateLimiter
from gateway.core.ratelimit_redis import RedisRateLimiter
from tools.harness import free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

REDIS_URL = os.environ.get("FLYWHEEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest_asyncio.fixture(loop_scope="session")
async def prefix() -> AsyncIterator[str]:
    """A key prefix of its own for each test, deleted afterwards."""
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        await client.ping()
    except Exception as exc:  # pragma: no cover - depends on the machine
        await client.aclose()
        if os.environ.get("CI"):
            raise RuntimeError(f"Redis is required in CI but unreachable: {exc}") from exc
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    name = f"fwtest:{uuid.uuid4().hex[:8]}:"
    try:
        yield name
    finally:
        keys = [k async for k in client.scan_iter(match=f"{name}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def pair(prefix: str) -> AsyncIterator[tuple[RedisRateLimiter, RedisRateLimiter]]:
    """Two limiters, as two gateway replicas would hold, sharing one Redis."""
    a = RedisRateLimiter(REDIS_URL, key_prefix=prefix)
    b = RedisRateLimiter(REDIS_URL, key_prefix=prefix)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def outcomes(calls: Sequence[Awaitable[object]]) -> list[bool]:
    results = await asyncio.gather(*calls, return_exceptions=True)
    for r in results:
        assert not isinstance(r, BaseException) or isinstance(r, RateLimited), r
    return [not isinstance(r, BaseException) for r in results]


async def test_two_replicas_share_the_request_limit(
    pair: tuple[RedisRateLimiter, RedisRateLimiter],
) -> None:
    a, b = pair
    limits = Limits(rpm=20, tpm=1_000_000)
    # 60 concurrent requests spread over both replicas: exactly the limit passes, not twice it.
    calls = [asyncio.ensure_future((a if i % 2 else b).acquire("t1", limits, 1)) for i in range(60)]
    passed = await outcomes(calls)
    assert sum(passed) == 20
    with pytest.raises(RateLimited) as info:
        await a.acquire("t1", limits, 1)
    assert 0 < info.value.retry_after <= 60 / 20 + 0.1
    await b.acquire("t2", limits, 1)  # another tenant has its own bucket


async def test_token_limit_estimate_then_settle(
    pair: tuple[RedisRateLimiter, RedisRateLimiter],
) -> None:
    a, b = pair
    limits = Limits(rpm=1000, tpm=1000)
    await a.acquire("t", limits, 600)
    with pytest.raises(RateLimited, match="tokens per minute"):
        await b.acquire("t", limits, 600)
    await a.settle("t", limits, -500)  # the real usage was 100: refund on the other replica's view
    await b.acquire("t", limits, 600)
    await b.settle("t", limits, 2000)  # used far more than estimated: the bucket goes into debt
    with pytest.raises(RateLimited) as info:
        await a.acquire("t", limits, 1)
    assert info.value.retry_after > 60  # ~2200 tokens of debt at 1000/minute


async def test_huge_request_passes_on_a_full_bucket(
    pair: tuple[RedisRateLimiter, RedisRateLimiter],
) -> None:
    a, _ = pair
    await a.acquire("t", Limits(rpm=10, tpm=100), 5000)  # same rule as the in-memory limiter


async def test_same_decisions_as_in_memory(pair: tuple[RedisRateLimiter, RedisRateLimiter]) -> None:
    a, b = pair
    memory = InMemoryRateLimiter()
    limits = Limits(rpm=5, tpm=300)
    script = [
        ("acquire", 100),
        ("acquire", 100),
        ("settle", -80),
        ("acquire", 150),
        ("acquire", 90),
    ]
    script += [("acquire", 10), ("acquire", 10), ("acquire", 10)]
    for i, (op, n) in enumerate(script):
        redis_limiter = a if i % 2 else b
        if op == "settle":
            await memory.settle("t", limits, n)
            await redis_limiter.settle("t", limits, n)
            continue
        got = [True, True]
        limiters: tuple[RateLimiter, RateLimiter] = (memory, redis_limiter)
        for j, limiter in enumerate(limiters):
            try:
                await limiter.acquire("t", limits, n)
            except RateLimited:
                got[j] = False
        assert got[0] == got[1], f"step {i}: in-memory {got[0]}, redis {got[1]}"


async def test_fail_open_allows_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "flywheel.ratelimit")
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0", fail_open=True)
    try:
        for _ in range(3):
            await limiter.acquire("t", Limits(rpm=1, tpm=1), 10)
        await limiter.settle("t", Limits(rpm=1, tpm=1), 5)  # never raises
        assert sum("fail open" in r.getMessage() for r in caplog.records) == 1
    finally:
        await limiter.close()


async def test_fail_closed_is_503() -> None:
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0", fail_open=False)
    try:
        with pytest.raises(ServiceUnavailable) as info:
            await limiter.acquire("t", Limits(rpm=100, tpm=100), 1)
        assert info.value.status_code == 503 and info.value.retry_after >= 1
        await limiter.settle("t", Limits(rpm=100, tpm=100), 5)  # the answer already went out
    finally:
        await limiter.close()


async def test_keys_use_the_prefix_and_expire(
    pair: tuple[RedisRateLimiter, RedisRateLimiter], prefix: str
) -> None:
    a, _ = pair
    await a.acquire("tenant-x", Limits(rpm=60, tpm=600), 10)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = sorted([k.decode() async for k in client.scan_iter(match=f"{prefix}*")])
        assert keys == [f"{prefix}{{tenant-x}}:req", f"{prefix}{{tenant-x}}:tok"]
        ttls = [await client.ttl(k) for k in keys]
        assert all(0 < ttl <= 180 for ttl in ttls), ttls
    finally:
        await client.aclose()


def replica_settings(
    tmp_path: Path, database_url: str, base: Path, **first: object
) -> tuple[Settings, Settings]:
    """Two gateway replicas on one database and one Redis.  Each has its own data directory
    (its own spool); the second trusts the first's signing key."""
    from tools.harness import make_settings

    a = make_settings(tmp_path / "a", database_url, base, redis_url=REDIS_URL, **first)
    b = make_settings(
        tmp_path / "b",
        database_url,
        base,
        redis_url=REDIS_URL,
        signing_public_key=tmp_path / "a" / "signing" / "signing.pub",
    )
    return a, b


async def test_two_gateways_share_a_tenants_limit(
    prefix: str,
    fresh_database_url: str,
    demo_base: Path,
    demo_adapters: list[Path],
    tmp_path: Path,
) -> None:
    """Two whole gateway apps (two replicas) on one database and one Redis: N, not 2N."""
    from gateway.app import create_app
    from gateway.core.tenants import update_tenant
    from tools.harness import running_app, seed_tenant

    settings, other = replica_settings(tmp_path, fresh_database_url, demo_base)
    first, second = create_app(settings), create_app(other)
    async with running_app(first) as a, running_app(second) as b:
        db = first.state.flywheel.db
        tenant = await seed_tenant(
            db, settings, f"shared-{prefix[7:15]}", {"bot": demo_adapters[0]}
        )
        async with db.transaction() as session:
            await update_tenant(session, tenant.name, rpm_limit=6)
        auth = {"Authorization": f"Bearer {tenant.key}"}
        body = {"model": "bot", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        statuses = [
            (await client.post("/v1/chat/completions", json=body, headers=auth)).status_code
            for client in [a, b] * 6
        ]
    assert statuses.count(200) == 6 and statuses.count(429) == 6, statuses


async def test_feedback_on_a_completion_in_flight_on_another_replica_is_accepted(
    prefix: str,
    fresh_database_url: str,
    demo_base: Path,
    demo_adapters: list[Path],
    tmp_path: Path,
) -> None:
    """Replica A answered but has not written the row yet (its batch is waiting); the client's
    backend posts feedback with the tenant key, and the load balancer sends it to replica B."""
    from gateway.app import create_app
    from tools.harness import running_app, seed_tenant

    slow, other = replica_settings(
        tmp_path, fresh_database_url, demo_base, log_flush_interval_s=3600
    )
    first, second = create_app(slow), create_app(other)
    async with running_app(first) as a, running_app(second) as b:
        tenant = await seed_tenant(
            first.state.flywheel.db, slow, f"fb-{prefix[7:15]}", {"bot": demo_adapters[0]}
        )
        auth = {"Authorization": f"Bearer {tenant.key}"}
        body = {"model": "bot", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        r = await a.post("/v1/chat/completions", json=body, headers=auth)
        assert r.status_code == 200
        assert first.state.flywheel.completions.depth == 1  # the row is still queued on A
        fb = {"completion_id": r.json()["id"], "rating": "up", "id": "from-the-backend"}
        accepted = await b.post("/v1/feedback", json=fb, headers=auth)
        assert accepted.status_code == 200, accepted.text
        unknown = await b.post(
            "/v1/feedback", json={**fb, "completion_id": "chatcmpl-nope"}, headers=auth
        )
        assert unknown.status_code == 404  # still no existence oracle for unknown ids
        assert await first.state.flywheel.completions.flush()


async def test_limits_and_pending_marks_hold_at_1000_concurrent_requests(prefix: str) -> None:
    """1,000 requests at once over three replicas, each with a pool of 16 connections: every
    acquire is decided by Redis (none let through for want of a connection), exactly the
    limit passes, and every pending mark lands.  redis-py's default pool raised "Too many
    connections" here, and the limiter then failed open."""
    from feedback.pending import SharedPending
    from gateway.core import metrics

    OPS = ("acquire", "settle", "mark", "check")

    def errors() -> float:
        return sum(metrics.REDIS_ERRORS.labels(op)._value.get() for op in OPS)  # type: ignore[attr-defined]

    before = errors()
    before_by_op = {op: metrics.REDIS_ERRORS.labels(op)._value.get() for op in OPS}  # type: ignore[attr-defined]
    limiters = [
        # Generous timeouts: under a loaded CI machine a call may wait long for its turn; what
        # this test rules out is a call failing because the pool is full.
        RedisRateLimiter(
            REDIS_URL,
            key_prefix=prefix,
            fail_open=True,
            max_connections=16,
            timeout_s=10,
            pool_timeout_s=60,
        )
        for _ in range(3)
    ]
    pendings = [
        SharedPending(
            REDIS_URL,
            ttl_s=60,
            key_prefix=f"{prefix}p:",
            max_connections=16,
            timeout_s=10,
            pool_timeout_s=60,
        )
        for _ in range(3)
    ]
    try:
        limits = Limits(rpm=250, tpm=10**9)
        calls = [limiters[i % 3].acquire("burst", limits, 1) for i in range(1000)]
        passed = await outcomes(calls)
        for i in range(1000):
            pendings[i % 3].mark("burst", f"cmpl-{i}")
        for p in pendings:
            await p.close()  # waits for its marks
        checker = SharedPending(
            REDIS_URL, ttl_s=60, key_prefix=f"{prefix}p:", timeout_s=10, pool_timeout_s=60
        )
        try:
            found = await asyncio.gather(
                *(checker.contains("burst", f"cmpl-{i}") for i in range(1000))
            )
        finally:
            await checker.close()
    finally:
        for limiter in limiters:
            await limiter.close()
    by_op = {  # what failed during this test
        op: metrics.REDIS_ERRORS.labels(op)._value.get() - before_by_op[op]  # type: ignore[attr-defined]
        for op in OPS
    }
    assert errors() == before, f"a Redis call failed (limit or mark not enforced): {by_op}"
    assert 250 <= sum(passed) <= 252, sum(passed)  # refill during the burst: a token or two
    assert all(found)
