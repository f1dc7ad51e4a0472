"""Completion-log throughput into PostgreSQL: batched (CompletionLog) vs one INSERT per row.

Creates a fresh database on the local server (127.0.0.1:5432), migrates it, and times, in one
process and one run:

* batched: rows submitted to ``feedback.log.CompletionLog`` as the serving layer does (a
  non-blocking ``submit`` per completion), with the default queue/batch/flush settings, until
  every row is committed;
* per-row: the naive alternative, each row its own ``INSERT`` + commit, sequentially and with
  32 concurrent "requests" (what a per-request insert would do under load).

Prints a markdown table, then drops the database.

    .venv/bin/python bench/bench_logging.py [--rows 50000] [--per-row-rows 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, func, insert, select

from feedback.log import CompletionLog
from feedback.rows import normalize
from gateway.core.config import Settings
from gateway.core.db.migrate import upgrade_sync
from gateway.core.db.models import Completion
from gateway.core.db.session import Database

ADMIN_URL = os.environ.get(
    "FLYWHEEL_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TARGET_ROWS_PER_S = 5_000


@dataclass(frozen=True)
class Result:
    mode: str
    rows: int
    seconds: float
    round_trips: int | None = None

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def make_row(tenant_id: str, i: int) -> dict[str, Any]:
    """A realistic chat completion row (a short conversation and answer)."""
    now = datetime.now(UTC)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "tenant_id": tenant_id,
        "key_id": "key_bench",
        "kind": "chat",
        "model": "support",
        "adapter_id": "ad_bench",
        "adapter_version_id": "ver_bench",
        "request": {
            "messages": [
                {"role": "system", "content": "You are a helpful support agent."},
                {"role": "user", "content": f"How do I reset my password? (ticket {i})"},
            ]
        },
        "params": {"max_tokens": 128, "temperature": 0.7},
        "response_text": "Open settings, choose security, and press reset. " * 4,
        "finish_reason": "stop",
        "prompt_tokens": 31,
        "completion_tokens": 48,
        "status": "ok",
        "error_type": None,
        "end_user": f"user-{i % 100}",
        "received_at": now,
        "first_token_at": now,
        "done_at": now,
    }


async def bench_batched(db: Database, rows: int, spool_dir: Path) -> Result:
    settings = Settings()
    log = CompletionLog(
        db,
        spool_dir=spool_dir,
        queue_size=settings.log_queue_size,
        batch_size=settings.log_batch_size,
        flush_interval_s=settings.log_flush_interval_s,
    )
    await log.start()
    high_water = int(0.8 * settings.log_queue_size)
    start = time.perf_counter()
    for i in range(rows):
        log.submit(make_row("ten_batched", i))
        if i % 100 == 99:
            # Requests arrive from the event loop; let the writer run between them, and stay
            # below the spill threshold as a real server's finite request rate would.
            await asyncio.sleep(0)
            while log.depth > high_water:
                await asyncio.sleep(0.001)
    assert await log.flush()
    seconds = time.perf_counter() - start
    await log.stop()
    if log.spilled_on_full:
        raise RuntimeError(f"{log.spilled_on_full} rows spilled: the bench overran the queue")
    return Result("batched (CompletionLog)", rows, seconds, log.batches_written)


async def bench_per_row(db: Database, rows: int, concurrency: int) -> Result:
    table = cast(Table, Completion.__table__)
    stmt = insert(table)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem, db.transaction() as session:
            await session.execute(stmt, normalize(make_row(f"ten_row_{concurrency}", i)))

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(rows)))
    seconds = time.perf_counter() - start
    label = "one INSERT per row" + (f", {concurrency} concurrent" if concurrency > 1 else "")
    return Result(label, rows, seconds, rows)


async def count(db: Database, tenant_id: str) -> int:
    async with db.session() as session:
        n = await session.scalar(
            select(func.count()).select_from(Completion).where(Completion.tenant_id == tenant_id)
        )
    return int(n or 0)


async def run(url: str, rows: int, per_row_rows: int) -> list[Result]:
    db = Database(url)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            batched = await bench_batched(db, rows, Path(tmp) / "spool")
        sequential = await bench_per_row(db, per_row_rows, 1)
        concurrent = await bench_per_row(db, per_row_rows, 32)
        assert await count(db, "ten_batched") == rows
        assert await count(db, "ten_row_1") == per_row_rows
        assert await count(db, "ten_row_32") == per_row_rows
    finally:
        await db.close()
    return [batched, sequential, concurrent]


def table(results: list[Result]) -> str:
    batched = results[0]
    best_per_row = max(results[1:], key=lambda r: r.rows_per_s)
    lines = [
        "| mode | rows | seconds | rows/s | INSERT round trips |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        trips = "" if r.round_trips is None else f"{r.round_trips:,}"
        lines.append(f"| {r.mode} | {r.rows:,} | {r.seconds:.2f} | {r.rows_per_s:,.0f} | {trips} |")
    ratio = batched.rows_per_s / best_per_row.rows_per_s
    verdict = "meets" if batched.rows_per_s >= TARGET_ROWS_PER_S else "MISSES"
    lines.append("")
    lines.append(
        f"Batched is {ratio:.1f}x the best per-row mode; {batched.rows_per_s:,.0f} rows/s "
        f"{verdict} the {TARGET_ROWS_PER_S:,} rows/s target."
    )
    return "\n".join(lines)


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--per-row-rows", type=int, default=5_000)
    args = parser.parse_args()

    name = f"flywheel_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        host = ADMIN_URL.split("://", 1)[1].rsplit("/", 1)[0]
        url = f"postgresql+asyncpg://{host}/{name}"
        upgrade_sync(url)
        results = asyncio.run(run(url, args.rows, args.per_row_rows))
        print(table(results))
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
