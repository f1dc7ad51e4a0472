"""The gateway's p50 latency with completion logging on vs off, and with the crash journal on
vs off, measured side by side.

In one process: the gateway in-process (embedded engine, demo base, a fresh PostgreSQL database
on 127.0.0.1:5432 when reachable, else SQLite), one tenant, sequential one-token requests so
the gateway's own work dominates.  Blocks of requests rotate between the real CompletionLog,
the same log with its journal's writes skipped (what durability against SIGKILL costs, see
feedback/journal.py), and one whose ``submit`` drops rows (the "off" case).  The last two exist
only here.

    .venv/bin/python -m bench.bench_log_overhead [--requests 1600] [--blocks 32]

Many short blocks, because the machine is shared: drift then hits both modes alike.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from adapters.demo import build_demo_adapter, build_demo_base
from feedback.journal import Journal
from feedback.log import CompletionLog
from gateway.app import create_app
from gateway.core.config import Settings
from tools.harness import make_settings, running_app, seed_tenant

BODY = {
    "model": "bot",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 1,
    "temperature": 0,
}
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


class NoJournal(Journal):
    """The journal's write skipped (rows then wait in memory only, as before the journal)."""

    def append(self, key: tuple[str, str], row: dict[str, Any]) -> None:
        return None


class DroppingLog(CompletionLog):
    """Logging "off": the same object, rows discarded."""

    def submit(self, row: dict[str, Any]) -> None:
        return None


async def database() -> tuple[str, str | None]:
    try:
        import asyncpg

        conn = await asyncpg.connect(PG_ADMIN, timeout=3)
        name = f"bench_log_{uuid.uuid4().hex[:8]}"
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()
        return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}", name
    except (OSError, asyncpg.PostgresError):
        return "", None


async def drop(name: str | None) -> None:
    if name is None:
        return
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN, timeout=3)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


async def run(requests: int, blocks: int) -> dict[str, Any]:
    url, pg_name = await database()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            base = build_demo_base(root / "base")
            adapter = build_demo_adapter(base, root / "a", seed=1)
            # The shipped flush interval (the test helper's is shorter, for fast tests).
            flush = Settings.model_fields["log_flush_interval_s"].default
            settings = make_settings(
                root / "data",
                url or f"sqlite+aiosqlite:///{root / 'fw.db'}",
                base,
                log_flush_interval_s=flush,
            )
            app = create_app(settings)
            async with running_app(app) as client:
                state = app.state.flywheel
                tenant = await seed_tenant(state.db, settings, "bench", {"bot": adapter})
                from gateway.core.tenants import update_tenant

                async with state.db.transaction() as session:
                    await update_tenant(session, "bench", rpm_limit=2**31 - 1, tpm_limit=2**31 - 1)
                key = {"Authorization": f"Bearer {tenant.key}"}
                real = state.completions
                off = DroppingLog(
                    state.db,
                    spool_dir=root / "spool-off",
                    queue_size=10,
                    batch_size=10,
                    flush_interval_s=1,
                )
                journal = real._journal
                unjournaled = NoJournal(journal.directory)
                times: dict[str, list[float]] = {"on": [], "nojournal": [], "off": []}
                for _ in range(20):  # warm-up
                    await client.post("/v1/chat/completions", json=BODY, headers=key)
                per_block = requests // blocks
                for block in range(blocks):
                    mode = ("on", "nojournal", "off")[block % 3]
                    state.completions = off if mode == "off" else real
                    real._journal = unjournaled if mode == "nojournal" else journal
                    for _ in range(per_block):
                        started = time.perf_counter()
                        r = await client.post("/v1/chat/completions", json=BODY, headers=key)
                        times[mode].append(time.perf_counter() - started)
                        assert r.status_code == 200, r.text
                state.completions = real
                real._journal = journal
    finally:
        await drop(pg_name)
    on, off_ = statistics.median(times["on"]), statistics.median(times["off"])
    nojournal = statistics.median(times["nojournal"])
    return {
        "database": "postgresql" if url else "sqlite",
        "p50_on_ms": on * 1000,
        "p50_nojournal_ms": nojournal * 1000,
        "p50_off_ms": off_ * 1000,
        "added_pct": (on / off_ - 1) * 100,
        "journal_pct": (on / nojournal - 1) * 100,
        "n": requests,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1600)
    parser.add_argument("--blocks", type=int, default=48)
    args = parser.parse_args(argv)
    r = asyncio.run(run(args.requests, args.blocks))
    print(
        f"### Gateway p50 with completion logging on vs off ({r['database']}, {r['n']} one-token requests)\n"
    )
    print(
        "| p50 logging on (ms) | p50 without the journal (ms) | p50 logging off (ms) "
        "| logging adds | the journal adds |"
    )
    print("| ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {r['p50_on_ms']:.2f} | {r['p50_nojournal_ms']:.2f} | {r['p50_off_ms']:.2f} "
        f"| {r['added_pct']:+.1f} % | {r['journal_pct']:+.1f} % |"
    )
    print(
        "\nTargets: logging adds at most 5 % to p50; the journal (no acknowledged row lost to "
        "SIGKILL) adds under 5 %."
    )
    return r


if __name__ == "__main__":
    main()
