"""Nothing accepted is lost: a database outage, and SIGTERM with a full queue.

The outage tests stop and restart a throwaway PostgreSQL server of their own (tests/pgtools.py),
never the shared one.  The SIGTERM test runs a real subprocess against the usual test
databases (SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import func, select

from feedback.log import CompletionLog
from feedback.service import FeedbackInput, StoredFeedback, record_feedback
from feedback.spool import Spool
from gateway.core.db.migrate import upgrade_sync
from gateway.core.db.models import Completion, Feedback
from gateway.core.db.session import Database
from tests import pgtools
from tests.feedback.test_feedback_log import completion_row, make_log, new_tenant
from tools.harness import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pg() -> Iterator[pgtools.ThrowawayPostgres]:
    if not pgtools.available():
        if os.environ.get("CI"):
            raise RuntimeError("PostgreSQL server binaries are required in CI")
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    with pgtools.throwaway_postgres() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def outage_db(pg: pgtools.ThrowawayPostgres) -> AsyncIterator[Database]:
    if not pg.is_running():
        await asyncio.to_thread(pg.start)
    url = await asyncio.to_thread(pg.create_database, f"outage_{uuid.uuid4().hex[:8]}")
    await asyncio.to_thread(upgrade_sync, url)
    db = Database(url)
    yield db
    await db.close()


async def wait_flushed(log: CompletionLog, seconds: float = 60) -> None:
    """Flush until everything is in the database (the server may still be starting)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await log.flush(timeout=seconds):
        assert asyncio.get_running_loop().time() < deadline, log.stats()
        await asyncio.sleep(0.2)


async def test_database_outage_loses_nothing_and_duplicates_nothing(
    pg: pgtools.ThrowawayPostgres, outage_db: Database, tmp_path: Path
) -> None:
    db = outage_db
    tenant = await new_tenant(db)
    log = make_log(db, tmp_path / "spool", batch_size=50, write_timeout_s=5)
    await log.start()
    submitted: list[dict[str, Any]] = []
    acked: dict[str, StoredFeedback] = {}  # feedback id -> last acknowledgement

    async def completions(n: int) -> list[dict[str, Any]]:
        rows = []
        for i in range(n):
            row = completion_row(tenant.id, response_text=f"answer {len(submitted)}")
            log.submit(row)
            submitted.append(row)
            rows.append(row)
            if i % 10 == 0:
                await asyncio.sleep(0.01)  # requests trickle in; the writer runs meanwhile
        return rows

    async def feedback(items: list[FeedbackInput]) -> list[StoredFeedback]:
        stored = await record_feedback(db, log, tenant.id, items)
        acked.update({s.id: s for s in stored})
        return stored

    try:
        before = await completions(100)
        await wait_flushed(log)
        await feedback(
            [FeedbackInput(r["id"], rating="up", id=f"pre-{i}") for i, r in enumerate(before[:20])]
        )

        await asyncio.to_thread(pg.stop, "immediate")  # the crash
        during = await completions(300)
        queued = await feedback(
            [
                FeedbackInput(r["id"], rating="down", id=f"out-{i}")
                for i, r in enumerate(before[20:40])
            ]
        )
        assert {s.status for s in queued} == {"queued"}
        # Feedback on completions that exist only in the spool, an edit among them.
        await feedback([FeedbackInput(during[0]["id"], edited_output="fixed", id="out-edit")])
        # A retry of the same item, twice, and an update of pre-outage feedback.
        for _ in range(2):
            await feedback([FeedbackInput(during[1]["id"], rating="up", id="out-retry")])
        await feedback([FeedbackInput(before[0]["id"], rating="down", id="pre-0")])
        assert log.degraded and log.spool_rows > 0

        await asyncio.to_thread(pg.start)
        after = await completions(50)  # new traffic right as the database returns
        await wait_flushed(log)
        assert not log.degraded
    finally:
        await log.stop()

    assert len(after) == 50
    ids = [r["id"] for r in submitted]
    async with db.session() as session:
        stored_ids = list(
            await session.scalars(select(Completion.id).where(Completion.tenant_id == tenant.id))
        )
        fb = {
            f.id: f
            for f in await session.scalars(select(Feedback).where(Feedback.tenant_id == tenant.id))
        }
    assert len(stored_ids) == len(set(stored_ids)) == len(ids) == 450
    assert set(stored_ids) == set(ids)
    assert set(fb) == set(acked)
    for fid, ack in acked.items():
        assert fb[fid].rating == ack.rating
        assert fb[fid].completion_id == ack.completion_id
    assert fb["pre-0"].rating == "down"  # the update made during the outage won
    assert fb["out-edit"].edited_output == "fixed"


async def test_http_api_through_an_outage(
    pg: pgtools.ThrowawayPostgres, demo_base: Path, tmp_path: Path
) -> None:
    """The same through the gateway: chat completions and feedback keep being acknowledged."""
    from gateway.app import create_app
    from tools.harness import make_settings, running_app, seed_tenant

    if not pg.is_running():
        await asyncio.to_thread(pg.start)
    url = await asyncio.to_thread(pg.create_database, f"outage_http_{uuid.uuid4().hex[:8]}")
    settings = make_settings(tmp_path / "data", url, demo_base, log_flush_interval_s=0.05)
    app = create_app(settings)
    chat = {
        "model": "demo-base",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "temperature": 0,
    }
    completion_ids: list[str] = []
    feedback_ids: list[str] = []
    async with running_app(app) as client:
        state = app.state.flywheel
        tenant = await seed_tenant(state.db, settings, f"outage-{uuid.uuid4().hex[:6]}", {})
        headers = {"Authorization": f"Bearer {tenant.key}"}

        async def one_round(expect: int) -> None:
            r = await client.post("/v1/chat/completions", json=chat, headers=headers)
            assert r.status_code == 200, r.text
            cid = r.json()["id"]
            completion_ids.append(cid)
            token = r.headers["x-flywheel-feedback-token"]
            for auth in (headers, {"Authorization": f"Bearer {token}"}):
                fid = f"fb-{uuid.uuid4().hex[:8]}"
                f = await client.post(
                    "/v1/feedback",
                    headers=auth,
                    json={"completion_id": cid, "rating": "up", "id": fid},
                )
                assert f.status_code == expect, f.text
                feedback_ids.append(fid)

        from gateway.core.tenants import create_key, get_tenant, revoke_key

        async with state.db.transaction() as session:
            row = await get_tenant(session, tenant.name)
            second, second_secret = await create_key(session, row)
        revoked = {"Authorization": f"Bearer {second_secret}"}
        assert (await client.post("/v1/chat/completions", json=chat, headers=revoked)).is_success
        async with state.db.transaction() as session:
            await revoke_key(session, second.id)
        assert (await client.get("/v1/models", headers=revoked)).status_code == 401
        assert (await client.get("/v1/models", headers=headers)).status_code == 200
        for _ in range(3):
            await one_round(200)
        await asyncio.to_thread(pg.stop, "immediate")
        for _ in range(5):
            await one_round(202)
        # A revoked key stays revoked while the database is away (the cached "yes" is gone)...
        r = await client.post("/v1/chat/completions", json=chat, headers=revoked)
        assert r.status_code == 503, r.text
        # ...and the model list (what SDKs call first) is served from cache, not a 500.
        models = await client.get("/v1/models", headers=headers)
        assert models.status_code == 200, models.text
        assert [m["id"] for m in models.json()["data"]] == ["demo-base"]
        assert state.completions.spool_rows > 0
        await asyncio.to_thread(pg.start)
        await wait_flushed(state.completions)
        db: Database = state.db
        async with db.session() as session:
            n_completions = await session.scalar(
                select(func.count())
                .select_from(Completion)
                .where(Completion.id.in_(completion_ids))
            )
            n_feedback = await session.scalar(
                select(func.count()).select_from(Feedback).where(Feedback.tenant_id == tenant.id)
            )
    assert n_completions == len(completion_ids) == 8
    assert n_feedback == len(feedback_ids) == 16


async def test_a_stalled_database_pool_serves_from_cache_not_500(
    postgres_url: str, demo_base: Path, tmp_path: Path
) -> None:
    """Every pooled connection held by a stalled writer: requests wait ``pool_timeout`` for a
    connection, then count the database as away (sqlalchemy's TimeoutError is no DBAPIError):
    keys and routes come from cache, feedback is spooled, nothing answers 500."""
    from contextlib import AsyncExitStack

    from gateway.app import create_app
    from tools.harness import make_settings, running_app, seed_tenant

    settings = make_settings(
        tmp_path / "data", postgres_url, demo_base, database_pool_timeout_s=0.5
    )
    app = create_app(settings)
    chat = {"model": "demo-base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with running_app(app) as client:
        state = app.state.flywheel
        tenant = await seed_tenant(state.db, settings, f"stall-{uuid.uuid4().hex[:6]}", {})
        headers = {"Authorization": f"Bearer {tenant.key}"}
        assert (await client.get("/v1/models", headers=headers)).status_code == 200
        first = await client.post("/v1/chat/completions", json=chat, headers=headers)
        assert first.status_code == 200
        pool = state.db.engine.pool
        async with AsyncExitStack() as stall:
            held = [
                await stall.enter_async_context(state.db.engine.connect())
                for _ in range(pool.size() + pool._max_overflow)  # type: ignore[attr-defined]
            ]
            assert held
            models = await client.get("/v1/models", headers=headers)
            assert models.status_code == 200, models.text
            r = await client.post("/v1/chat/completions", json=chat, headers=headers)
            assert r.status_code == 200, r.text
            fb = await client.post(
                "/v1/feedback",
                headers=headers,
                json={"completion_id": r.json()["id"], "rating": "up"},
            )
            assert fb.status_code == 202, fb.text
            # A read with nothing cached: a 503 the client may retry, never a 500.
            listed = await client.get(
                "/v1/feedback", params={"completion_id": r.json()["id"]}, headers=headers
            )
            assert listed.status_code == 503, listed.text
            assert listed.json()["error"]["code"] == "database_unavailable"
        await wait_flushed(state.completions)


# --- SIGTERM ----------------------------------------------------------------------------------

SCRIPT = r"""
import asyncio, json, signal, sys, uuid
from datetime import UTC, datetime
from pathlib import Path

from feedback.log import CompletionLog
from gateway.core.db.session import Database

url, spool, tenant_id, n, ids_file = sys.argv[1:6]

async def main() -> None:
    db = Database(url)
    log = CompletionLog(db, spool_dir=Path(spool), queue_size=int(n) + 10, batch_size=500,
                        flush_interval_s=0.05, stop_timeout_s=2.0)
    await log.start()
    done = asyncio.Event()

    async def shutdown() -> None:
        await log.stop()
        print("STOPPED " + json.dumps(log.stats()), flush=True)
        done.set()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(shutdown()))
    ids = []
    now = datetime.now(UTC)
    for i in range(int(n)):  # no await: the whole burst is queued before the writer runs
        row = {"id": f"cmpl-{uuid.uuid4().hex}", "tenant_id": tenant_id, "kind": "text",
               "model": "m", "status": "ok", "received_at": now, "response_text": str(i),
               "request": {"prompt": "p"}}
        log.submit(row)
        ids.append(row["id"])
    Path(ids_file).write_text(json.dumps(ids))
    print(f"READY depth={log.depth}", flush=True)
    await done.wait()
    await db.close()

asyncio.run(main())
"""


class Blocker:
    """Holds a lock on the completions table so the writer's inserts block (a stuck database)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._sqlite: sqlite3.Connection | None = None
        self._pg: Any = None

    async def __aenter__(self) -> Blocker:
        if self.url.startswith("sqlite"):
            self._sqlite = sqlite3.connect(self.url.split("///", 1)[1], isolation_level=None)
            self._sqlite.execute("BEGIN EXCLUSIVE")
        else:
            import asyncpg

            self._pg = await asyncpg.connect(self.url.replace("postgresql+asyncpg", "postgresql"))
            await self._pg.execute("BEGIN")
            await self._pg.execute("LOCK TABLE completions IN ACCESS EXCLUSIVE MODE")
        return self

    async def release(self) -> None:
        if self._sqlite is not None:
            self._sqlite.execute("ROLLBACK")
            self._sqlite.close()
            self._sqlite = None
        if self._pg is not None:
            await self._pg.execute("ROLLBACK")
            await self._pg.close()
            self._pg = None

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


async def replay_spool(db: Database, spool_dir: Path, tenant_id: str) -> list[str]:
    """What the next gateway start does with a spool (replay it), then the tenant's
    completion ids in the database, duplicates included."""
    log = make_log(db, spool_dir)
    await log.start()
    try:
        await wait_flushed(log)
    finally:
        await log.stop()
    async with db.session() as session:
        return list(
            await session.scalars(select(Completion.id).where(Completion.tenant_id == tenant_id))
        )


async def _readline(proc: subprocess.Popen[str], prefix: str, timeout: float = 120) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)
    assert line.startswith(prefix), f"expected {prefix!r}, got {line!r}"
    return line


async def _until_spooled(spool_dir: Path, n: int, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while sum(len(p.read_bytes().splitlines()) for p in spool_dir.glob("seg-*.jsonl")) < n:
        assert asyncio.get_running_loop().time() < deadline, "stop() did not spool the queue"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("blocked", [False, True], ids=["busy", "blocked"])
async def test_sigterm_with_a_full_queue_loses_nothing(
    database_url: str, db: Database, tmp_path: Path, blocked: bool
) -> None:
    tenant = await new_tenant(db)
    n = 20_000 if not blocked else 3_000
    spool_dir, ids_file = tmp_path / "spool", tmp_path / "ids.json"
    (tmp_path / "script.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    async with Blocker(database_url) as blocker:
        if not blocked:
            await blocker.release()
        proc = subprocess.Popen(
            [
                sys.executable,
                str(tmp_path / "script.py"),
                database_url,
                str(spool_dir),
                tenant.id,
                str(n),
                str(ids_file),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            ready = await _readline(proc, "READY")
            assert f"depth={n}" in ready  # the queue holds the whole burst
            proc.send_signal(signal.SIGTERM)
            if blocked:
                # Once stop() gave up on the database and spooled everything, the database
                # "recovers", while the abandoned write is still being cancelled.
                await _until_spooled(spool_dir, n)
                await blocker.release()
            stats = json.loads((await _readline(proc, "STOPPED")).split(" ", 1)[1])
            assert await asyncio.to_thread(proc.wait, 120) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    ids = set(json.loads(ids_file.read_text()))
    assert len(ids) == n
    if blocked:
        assert stats["rows_spooled"] >= n  # the database took nothing before the deadline

    spool = Spool(spool_dir)
    spooled = {r.row["id"] for r in spool.iter_records()}
    spool.close()
    async with db.session() as session:
        in_db = set(
            await session.scalars(select(Completion.id).where(Completion.tenant_id == tenant.id))
        )
    assert ids <= in_db | spooled, f"{len(ids - in_db - spooled)} rows lost"

    # The next run replays the spool: every row in the database exactly once.
    rows = await replay_spool(db, spool_dir, tenant.id)
    assert len(rows) == len(set(rows)) == n and set(rows) == ids
    assert not list(spool_dir.glob("seg-*.jsonl"))


async def test_sigterm_to_a_serving_gateway_with_a_stuck_database_loses_nothing(
    database_url: str, db: Database, tmp_path: Path, demo_base: Path
) -> None:
    """The real path: ``flywheel serve`` (uvicorn, the app's lifespan) gets SIGTERM while its
    completion writes are stuck and its small queue overflowed; every answered completion is
    in the database or the spool, and the next start's replay lands each exactly once."""
    import httpx

    from gateway.core.tenants import create_key, create_tenant
    from tools.harness import free_port

    async with db.transaction() as session:
        tenant = await create_tenant(session, f"sigterm-{uuid.uuid4().hex[:8]}")
        _, key = await create_key(session, tenant)
    data, port = tmp_path / "data", free_port()
    env = {
        **os.environ,
        "FLYWHEEL_DATABASE_URL": database_url,
        "FLYWHEEL_DATA_DIR": str(data),
        "FLYWHEEL_BASE_MODEL": str(demo_base),
        "FLYWHEEL_BASE_MODEL_NAME": "demo-base",
        "FLYWHEEL_DEMO_BOOTSTRAP": "false",
        "FLYWHEEL_LOG_QUEUE_SIZE": "3",  # overflows to the spool after three rows
        "FLYWHEEL_PORT": str(port),
    }
    with (tmp_path / "serve.log").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli.main", "serve"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            deadline = asyncio.get_running_loop().time() + 120
            while True:  # polling the readiness endpoint until the process serves
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                assert asyncio.get_running_loop().time() < deadline, "gateway did not start"
                await asyncio.sleep(0.2)
            ids = []
            async with Blocker(database_url):
                for i in range(10):
                    r = await client.post(
                        "/v1/chat/completions",
                        json={
                            "model": "demo-base",
                            "messages": [{"role": "user", "content": f"question {i}"}],
                            "max_tokens": 2,
                        },
                        headers={"Authorization": f"Bearer {key}"},
                    )
                    assert r.status_code == 200, r.text
                    ids.append(r.json()["id"])
                proc.send_signal(signal.SIGTERM)
                # Shutdown waits for the stuck write (up to its stop timeout), then spools.
                # Uvicorn re-raises the signal once shut down, so the status is SIGTERM's.
                assert await asyncio.to_thread(proc.wait, 120) in (0, -signal.SIGTERM)
            assert "Application shutdown complete" in (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()

    rows = await replay_spool(db, data / "spool", tenant.id)
    assert sorted(rows) == sorted(ids)  # every answered completion, exactly once
