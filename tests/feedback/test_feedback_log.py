"""CompletionLog on SQLite and real PostgreSQL: batching, flush on stop, spill, exactly-once."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select

from feedback.log import CompletionLog
from feedback.spool import Spool, decode, encode
from gateway.core.db.models import Completion, Tenant
from gateway.core.db.session import Database
from gateway.core.tenants import create_tenant

# --- factories shared by the feedback tests ---------------------------------------------------


async def new_tenant(db: Database, **settings: Any) -> Tenant:
    async with db.transaction() as session:
        return await create_tenant(session, f"fb-{uuid.uuid4().hex[:12]}", **settings)


def completion_row(tenant_id: str, **overrides: Any) -> dict[str, Any]:
    """A Completion row as the serving layer submits it."""
    now = datetime.now(UTC)
    row: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "tenant_id": tenant_id,
        "key_id": None,
        "kind": "chat",
        "model": "demo-base",
        "adapter_id": None,
        "adapter_version_id": None,
        "request": {"messages": [{"role": "user", "content": "How do I reset my password?"}]},
        "params": {"max_tokens": 16},
        "response_text": "Open settings and press reset.",
        "finish_reason": "stop",
        "prompt_tokens": 7,
        "completion_tokens": 6,
        "status": "ok",
        "error_type": None,
        "end_user": None,
        "received_at": now - timedelta(milliseconds=40),
        "first_token_at": now - timedelta(milliseconds=20),
        "done_at": now,
    }
    row.update(overrides)
    return row


def make_log(db: Database, spool_dir: Path, **kw: Any) -> CompletionLog:
    params: dict[str, Any] = {
        "queue_size": 10_000,
        "batch_size": 500,
        "flush_interval_s": 0.05,
        "retry_interval_s": 0.2,
    }
    params.update(kw)
    return CompletionLog(db, spool_dir=spool_dir, **params)


async def count_ids(db: Database, ids: list[str]) -> int:
    async with db.session() as session:
        n = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            n += (
                await session.scalar(
                    select(func.count()).select_from(Completion).where(Completion.id.in_(chunk))
                )
                or 0
            )
        return n


@pytest.fixture
async def tenant(db: Database) -> AsyncIterator[Tenant]:
    yield await new_tenant(db)


# --- tests -------------------------------------------------------------------------------------


async def test_batched_writes_use_few_round_trips(
    db: Database, tenant: Tenant, tmp_path: Path
) -> None:
    inserts: list[int] = []

    def _count(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO COMPLETIONS"):
            inserts.append(len(params) if many else 1)

    event.listen(db.engine.sync_engine, "before_cursor_execute", _count)
    log = make_log(db, tmp_path / "spool", batch_size=500)
    await log.start()
    try:
        rows = [completion_row(tenant.id) for _ in range(2_000)]
        for row in rows:
            log.submit(row)
        assert log.depth == 2_000  # submit only queues: no I/O on the request path
        assert await log.flush(timeout=60)
    finally:
        await log.stop()
        event.remove(db.engine.sync_engine, "before_cursor_execute", _count)
    assert await count_ids(db, [r["id"] for r in rows]) == 2_000
    assert sum(inserts) == 2_000
    assert len(inserts) <= 8, f"{len(inserts)} INSERT round trips for 2000 rows"
    assert log.batches_written <= 8


async def test_stop_flushes_the_queue(db: Database, tenant: Tenant, tmp_path: Path) -> None:
    # A flush interval far beyond the test: only stop() can have written these rows.
    log = make_log(db, tmp_path / "spool", flush_interval_s=3600, batch_size=10_000)
    await log.start()
    rows = [completion_row(tenant.id) for _ in range(300)]
    for row in rows:
        log.submit(row)
    await log.stop()
    assert await count_ids(db, [r["id"] for r in rows]) == 300
    assert log.spool_rows == 0


async def test_full_queue_spills_to_spool_and_nothing_is_lost(
    db: Database, tenant: Tenant, tmp_path: Path
) -> None:
    log = make_log(db, tmp_path / "spool", queue_size=50, flush_interval_s=3600)
    rows = [completion_row(tenant.id) for _ in range(500)]
    for row in rows:  # no await in between: the writer cannot drain meanwhile
        log.submit(row)
    assert log.depth == 50
    assert log.spilled_on_full == 450
    assert log.spool_rows == 450
    assert log.degraded
    assert all(log.is_pending(r["id"], tenant.id) for r in rows)
    await log.start()
    try:
        assert await log.flush(timeout=60)
    finally:
        await log.stop()
    assert await count_ids(db, [r["id"] for r in rows]) == 500
    assert log.spool_rows == 0
    assert not log.degraded
    assert not any(log.is_pending(r["id"], tenant.id) for r in rows)


class Crash(Exception):
    pass


async def test_spool_replay_is_exactly_once_after_a_crash_before_truncation(
    db: Database, tenant: Tenant, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool_dir = tmp_path / "spool"
    first = make_log(db, spool_dir, queue_size=10, flush_interval_s=3600)
    rows = [completion_row(tenant.id) for _ in range(120)]
    for row in rows:
        first.submit(row)  # 110 spill to the spool
    spilled = [r["id"] for r in rows[10:]]

    # The "crash": every replay inserts the rows, then dies before the segment is removed.
    # The writer retries, so the same rows are inserted again and again meanwhile.
    crashes = 0

    def _crash(_segment: object) -> None:
        nonlocal crashes
        crashes += 1
        raise Crash("between insert and spool truncation")

    monkeypatch.setattr(first._spool, "remove", _crash)
    await first.start()
    for _ in range(200):
        if crashes >= 3:
            break
        await asyncio.sleep(0.05)
    assert crashes >= 3
    await first.stop()
    assert await count_ids(db, spilled) == 110  # inserted...
    assert len(list(spool_dir.glob("seg-*.jsonl"))) >= 1  # ...and still in the spool

    second = make_log(db, spool_dir)
    assert second.spool_rows == 110
    await second.start()  # replays the same rows once more
    try:
        assert await second.flush(timeout=30)
    finally:
        await second.stop()
    assert second.spool_rows == 0
    assert not list(spool_dir.glob("seg-*.jsonl"))
    assert await count_ids(db, [r["id"] for r in rows]) == 120


async def test_pending_state_and_text(db: Database, tenant: Tenant, tmp_path: Path) -> None:
    log = make_log(db, tmp_path / "spool", flush_interval_s=3600)
    await log.start()
    try:
        row = completion_row(tenant.id, response_text="draft answer")
        assert not log.is_pending(row["id"], tenant.id)
        log.begin(row["id"], tenant.id)
        assert log.is_pending(row["id"], tenant.id)
        assert log.pending_text(row["id"], tenant.id) is None  # still generating
        log.submit(row)
        assert log.is_pending(row["id"], tenant.id)
        assert not log.is_pending(row["id"], "ten_other")  # pending is per tenant
        assert log.pending_text(row["id"], tenant.id) == "draft answer"
        assert await log.flush(timeout=30)
        assert not log.is_pending(row["id"], tenant.id)
    finally:
        await log.stop()


async def test_store_content_hint_and_datetimes(
    db: Database, tenant: Tenant, tmp_path: Path
) -> None:
    log = make_log(db, tmp_path / "spool", queue_size=1, flush_interval_s=3600)
    eastern = timezone(timedelta(hours=-5))
    received = datetime(2025, 3, 1, 7, 30, 15, 123456, tzinfo=eastern)
    private = completion_row(tenant.id, received_at=received, _store_content=False)
    spilled = completion_row(tenant.id, received_at=received)
    log.submit(private)
    log.submit(spilled)  # queue of 1 is full: goes through the spool (JSON) and back
    await log.start()
    try:
        assert await log.flush(timeout=30)
    finally:
        await log.stop()
    async with db.session() as session:
        got = {
            c.id: c
            for c in await session.scalars(
                select(Completion).where(Completion.id.in_([private["id"], spilled["id"]]))
            )
        }
    assert got[private["id"]].request is None
    assert got[private["id"]].response_text is None
    assert got[spilled["id"]].response_text == spilled["response_text"]
    for c in got.values():
        stored = c.received_at if c.received_at.tzinfo else c.received_at.replace(tzinfo=UTC)
        assert stored == received


def test_spool_encoding_round_trips_datetimes_only_where_they_were() -> None:
    when = datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    row = {"id": "x", "received_at": when, "request": {"received_at": when.isoformat()}}
    back = decode(encode("completion", row))
    assert back.kind == "completion"
    assert back.row["received_at"] == when
    assert back.row["received_at"].tzinfo is not None
    assert back.row["request"] == {"received_at": when.isoformat()}  # client JSON untouched


def test_spool_is_exclusive_to_one_process_at_a_time(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    with pytest.raises(RuntimeError, match="in use"):
        Spool(tmp_path)
    first.close()
    Spool(tmp_path).close()


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([("completion", {"id": "a", "tenant_id": "t"})])
    (segment,) = spool.seal()
    with open(segment, "a") as fp:
        fp.write('{"kind":"completion","row":{"id":"b"')  # crash mid-append
    spool.close()
    again = Spool(tmp_path)
    assert again.rows == 2
    (path,) = again.seal()
    seg = again.read(path)
    assert [r.row["id"] for r in seg.records] == ["a"]
    again.remove(seg)
    assert again.rows == 0


async def test_rows_the_database_refuses_are_set_aside_not_retried_forever(
    db: Database, tenant: Tenant, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    log = make_log(db, spool_dir)
    await log.start()
    try:
        good = [completion_row(tenant.id) for _ in range(9)]
        bad = completion_row(tenant.id, prompt_tokens=None)  # NOT NULL
        for row in [*good[:4], bad, *good[4:]]:
            log.submit(row)
        log.submit({"id": "cmpl-broken", "tenant_id": tenant.id})  # a caller bug: no raise
        assert await log.flush(timeout=30)
    finally:
        await log.stop()
    assert await count_ids(db, [r["id"] for r in good]) == 9
    assert log.rejected_rows == 2
    rejected = (spool_dir / "rejected.jsonl").read_text().splitlines()
    assert len(rejected) == 2
    assert any(bad["id"] in line for line in rejected)
    assert any("cmpl-broken" in line for line in rejected)
    assert log.spool_rows == 0 and not log.degraded


async def test_erasure_scrubs_rejected_rows_here_and_in_other_processes(
    db: Database, tenant: Tenant, tmp_path: Path
) -> None:
    """rejected.jsonl never reaches the database, so the write path's erasure filter never sees
    it: forget scrubs this process's file at once, and every other log scrubs its own at
    start and then on an interval."""
    from feedback.retention import forget_end_user

    here, there = tmp_path / "here", tmp_path / "there"
    other = make_log(db, there)
    await other.start()
    log = make_log(db, here)
    await log.start()
    try:
        for target in (log, other):
            for user in ("u1", "u2"):
                target.submit(completion_row(tenant.id, end_user=user, prompt_tokens=None))
            target.submit(completion_row(tenant.id, end_user="u1", completion_tokens=None))
            assert await target.flush(timeout=30)
            assert target.rejected_rows == 3
        await other.stop()  # "another gateway", down during the erasure
        deleted = await forget_end_user(db, tenant.id, "u1", log=log)
        assert deleted.rejected_rows == 2
        assert rejected_users(here) == ["u2"]
        assert rejected_users(there) == ["u1", "u2", "u1"]  # not reachable from here
        later = make_log(db, there)
        await later.start()  # scrubs at start
        try:
            assert await later.scrub_rejected() == 0  # already done by the start-up round
            assert rejected_users(there) == ["u2"]
        finally:
            await later.stop()
    finally:
        await log.stop()


def rejected_users(spool_dir: Path) -> list[str]:
    """The end users in a spool's rejected.jsonl, read as a human would (it is plain JSON)."""
    lines = (spool_dir / "rejected.jsonl").read_text().splitlines()
    return [json.loads(line)["record"]["row"]["end_user"] for line in lines]
