"""`flywheel retrain worker --once` that ran nothing says why, adapter by adapter, from the same
rows its scheduler read: nobody opted in, no adapter, too little new feedback (and how much is
needed), a failed round waiting for newer feedback, a round another worker holds."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.core.db.models import Adapter, Completion, Feedback, TrainingRound
from gateway.core.db.session import Database
from gateway.core.ids import new_id


def flywheel(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), prog_name="flywheel")
    assert result.exit_code == 0, result.stderr
    return result.stdout


def worker_says() -> list[str]:
    lines = flywheel("retrain", "worker", "--once").splitlines()
    assert lines[0] == "rounds run: 0", lines
    return [line.strip() for line in lines[1:]]


def in_database(url: str, work: Callable[[AsyncSession], Awaitable[Any]]) -> Any:
    """``work`` in one transaction, from this synchronous test (the CLI runs its own loops)."""

    async def go() -> Any:
        db = Database(url)
        try:
            async with db.transaction() as session:
                return await work(session)
        finally:
            await db.close()

    return asyncio.run(go())


def add_feedback(url: str, tenant_id: str, adapter_id: str, n: int) -> None:
    async def work(session: AsyncSession) -> None:
        for i in range(n):
            cid = f"chatcmpl-{uuid.uuid4().hex}"
            session.add(
                Completion(
                    id=cid, tenant_id=tenant_id, kind="chat", model="support",
                    adapter_id=adapter_id, status="ok", params={}, response_text="an answer",
                    request={"messages": [{"role": "user", "content": f"question {i}"}]},
                    received_at=datetime.now(UTC),
                )
            )  # fmt: skip
            session.add(
                Feedback(
                    tenant_id=tenant_id, id=f"fb-{cid}", completion_id=cid,
                    edited_output="A better answer.", meta={},
                )
            )  # fmt: skip

    in_database(url, work)


def add_round(url: str, tenant_id: str, adapter_id: str, **fields: Any) -> str:
    round_id = new_id("round")

    async def work(session: AsyncSession) -> None:
        session.add(
            TrainingRound(id=round_id, tenant_id=tenant_id, adapter_id=adapter_id, **fields)
        )

    in_database(url, work)
    return round_id


def the_adapter(url: str) -> tuple[str, str]:
    async def work(session: AsyncSession) -> tuple[str, str]:
        tenant_id, adapter_id = (await session.execute(select(Adapter.tenant_id, Adapter.id))).one()
        return tenant_id, adapter_id

    result: tuple[str, str] = in_database(url, work)
    return result


@pytest.mark.usefixtures("kept_logging")
def test_the_worker_says_why_it_ran_no_round(
    empty_database: str, demo_adapters: list[Path]
) -> None:
    url = empty_database
    [nobody] = worker_says()
    assert nobody.startswith("no tenant has opted into retraining")
    assert "flywheel tenants update NAME --retrain" in nobody

    flywheel("tenants", "create", "acme")
    assert worker_says() == [nobody]  # created, not opted in
    flywheel("tenants", "update", "acme", "--retrain")
    assert worker_says() == ["acme: opted in, but has no adapter yet"]

    flywheel("adapters", "add", "--tenant", "acme", "--adapter", "support", str(demo_adapters[0]))
    assert worker_says() == ["acme/support: no feedback so far"]

    tenant_id, adapter_id = the_adapter(url)
    add_feedback(url, tenant_id, adapter_id, 3)
    [short] = worker_says()
    assert short.startswith("acme/support: 3 feedback rows so far; a round needs 50, or the oldest")
    assert "24 h old (it is 0.0 h)" in short
    assert "flywheel tenants update acme --retrain-min-feedback N" in short
    flywheel(
        "tenants",
        "update",
        "acme",
        "--retrain-min-feedback",
        "40",
        "--retrain-max-age-hours",
        "0.5",
    )
    [short] = worker_says()
    assert "a round needs 40, or the oldest of them to be 0.5 h old" in short

    # Later rounds, in order, each after the feedback above.
    t = [datetime.now(UTC) + timedelta(seconds=i) for i in range(1, 7)]
    add_round(url, tenant_id, adapter_id, state="succeeded", created_at=t[0], data_cutoff=t[1])
    assert worker_says() == ["acme/support: no feedback since its last round"]

    failed = add_round(
        url, tenant_id, adapter_id, state="failed", error="too few rows",
        created_at=t[2], finished_at=t[3],
    )  # fmt: skip
    assert worker_says() == [
        f"acme/support: its last round {failed} failed (too few rows); the worker retries once "
        "feedback newer than that failure arrives"
    ]

    held = add_round(
        url, tenant_id, adapter_id, state="running", worker_id="host:42:w1",
        heartbeat_at=datetime.now(UTC), created_at=t[4],
    )  # fmt: skip
    assert worker_says() == [f"acme/support: round {held} is already running by host:42:w1"]

    flywheel("tenants", "update", "acme", "--disabled")
    assert worker_says() == ["acme: the tenant is disabled"]
