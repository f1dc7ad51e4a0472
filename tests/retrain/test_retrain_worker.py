"""The retrain worker: scheduling, claims that never collide, and recovery of dead workers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update

from gateway.core.db.models import Completion, Feedback, TrainingRound
from gateway.core.db.session import Database
from gateway.core.time import as_utc
from retrain.worker import claim, recover, schedule
from tools.harness import make_settings, seed_tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def seed_feedback(db: Database, tenant_id: str, adapter_id: str, n: int) -> None:
    now = datetime.now(UTC)
    async with db.transaction() as session:
        for i in range(n):
            cid = f"chatcmpl-{uuid.uuid4().hex}"
            session.add(
                Completion(
                    id=cid,
                    tenant_id=tenant_id,
                    kind="chat",
                    model="bot",
                    adapter_id=adapter_id,
                    status="ok",
                    request={"messages": [{"role": "user", "content": f"question {i}"}]},
                    params={},
                    response_text=f"garbled answer {i}",
                    received_at=now,
                )
            )
            session.add(
                Feedback(
                    tenant_id=tenant_id,
                    id=f"fb-{cid}",
                    completion_id=cid,
                    edited_output=f"Thank you for asking question {i}. Happy to help.",
                    meta={},
                )
            )


async def opted_in_tenant(
    db: Database, tmp: Path, url: str, base: Path, adapter: Path, **tenant: object
) -> tuple[str, str]:
    from adapters.golden import add_golden_set
    from adapters.registry import get_adapter
    from gateway.core.tenants import update_tenant

    settings = make_settings(tmp, url, base)
    t = await seed_tenant(db, settings, f"w-{uuid.uuid4().hex[:8]}", {"bot": adapter})
    async with db.transaction() as session:
        await update_tenant(session, t.name, retrain_enabled=True, **tenant)
        a = await get_adapter(session, t.id, "bot")
        # Frozen before any feedback: a round without one is refused before training.
        await add_golden_set(session, a, [{"prompt": "Hello", "reference": "Hi there."}])
    return t.name, a.id


async def test_schedule_queues_once_and_respects_threshold(
    db: Database, database_url: str, tmp_path: Path, demo_base: Path, demo_adapters: list[Path]
) -> None:
    name, adapter_id = await opted_in_tenant(
        db,
        tmp_path,
        database_url,
        demo_base,
        demo_adapters[0],
        retrain_min_feedback=10,
        retrain_max_age_hours=1000.0,
    )
    from gateway.core.tenants import get_tenant

    async with db.session() as s:
        tenant_id = (await get_tenant(s, name)).id
    await seed_feedback(db, tenant_id, adapter_id, 5)
    assert adapter_id not in await _queued_adapters(db, await schedule(db))
    await seed_feedback(db, tenant_id, adapter_id, 5)
    first = await schedule(db)
    assert adapter_id in await _queued_adapters(db, first)
    assert adapter_id not in await _queued_adapters(db, await schedule(db))  # no duplicate
    # Old feedback triggers a round even below the count threshold.  The first round took the
    # ten rows so far (its cutoff is now); one new row is below the threshold until it is old.
    async with db.transaction() as s:
        await s.execute(
            update(TrainingRound)
            .where(TrainingRound.adapter_id == adapter_id)
            .values(state="succeeded", data_cutoff=datetime.now(UTC))
        )
    await seed_feedback(db, tenant_id, adapter_id, 1)
    assert adapter_id not in await _queued_adapters(db, await schedule(db))
    later = datetime.now(UTC) + timedelta(hours=1001)
    assert adapter_id in await _queued_adapters(db, await schedule(db, now=later))
    async with db.transaction() as s:  # leave no queued round behind for the worker tests
        await s.execute(delete(TrainingRound).where(TrainingRound.adapter_id == adapter_id))


async def test_a_failed_round_is_retried_only_on_new_feedback(
    db: Database, database_url: str, tmp_path: Path, demo_base: Path, demo_adapters: list[Path]
) -> None:
    name, adapter_id = await opted_in_tenant(
        db, tmp_path, database_url, demo_base, demo_adapters[0], retrain_min_feedback=3
    )
    from gateway.core.tenants import get_tenant

    async with db.session() as s:
        tenant_id = (await get_tenant(s, name)).id
    await seed_feedback(db, tenant_id, adapter_id, 3)
    assert adapter_id in await _queued_adapters(db, await schedule(db))
    failed_at = datetime.now(UTC)
    async with db.transaction() as s:  # as a refusal ends it (e.g. the classes too imbalanced)
        await s.execute(
            update(TrainingRound)
            .where(TrainingRound.adapter_id == adapter_id)
            .values(state="failed", finished_at=failed_at)
        )
    # The same feedback would fail the same way: no new round (this loop used to spin).
    for _ in range(3):
        assert adapter_id not in await _queued_adapters(db, await schedule(db))
    await seed_feedback(db, tenant_id, adapter_id, 1)
    assert adapter_id in await _queued_adapters(db, await schedule(db))
    async with db.transaction() as s:
        await s.execute(delete(TrainingRound).where(TrainingRound.adapter_id == adapter_id))


async def _queued_adapters(db: Database, round_ids: list[str]) -> set[str]:
    async with db.session() as s:
        return set(
            await s.scalars(select(TrainingRound.adapter_id).where(TrainingRound.id.in_(round_ids)))
        )


async def test_two_workers_never_claim_the_same_round(database_url: str) -> None:
    dbs = [Database(database_url) for _ in range(4)]
    try:
        async with dbs[0].transaction() as s:
            ids = [f"round_race_{uuid.uuid4().hex[:8]}" for _ in range(5)]
            for rid in ids:
                # Older than anything else queued in this shared database, so these are the
                # ones claimed first whatever rounds earlier tests left behind.
                s.add(
                    TrainingRound(
                        id=rid,
                        tenant_id="t",
                        adapter_id=f"a-{rid}",
                        state="queued",
                        created_at=datetime(2000, 1, 1, tzinfo=UTC),
                    )
                )
        claimed: list[str] = []
        for _ in range(6):
            rows = await asyncio.gather(*(claim(d, f"w{i}") for i, d in enumerate(dbs)))
            claimed += [r.id for r in rows if r is not None and r.id in ids]
        assert sorted(claimed) == sorted(ids)  # each exactly once
    finally:
        # Out of the queue and of the running set, so later tests' recover() and claim()
        # never meet them.
        async with dbs[0].transaction() as s:
            await s.execute(
                update(TrainingRound).where(TrainingRound.id.in_(ids)).values(state="succeeded")
            )
        for d in dbs:
            await d.close()


async def test_dead_worker_round_is_recovered(
    db: Database, database_url: str, tmp_path: Path, demo_base: Path
) -> None:
    settings = make_settings(
        tmp_path, database_url, demo_base, retrain_round_timeout_s=60, retrain_max_attempts=2
    )
    rid = f"round_dead_{uuid.uuid4().hex[:8]}"
    async with db.transaction() as s:
        s.add(
            TrainingRound(
                id=rid,
                tenant_id="t",
                adapter_id=f"a-{rid}",
                state="queued",
                created_at=datetime(2000, 1, 1, tzinfo=UTC),
            )
        )
    for attempt in (1, 2):
        row = await claim(db, "doomed")
        assert row is not None and row.id == rid and row.attempts == attempt
        # the worker dies: its heartbeat stops; a minute later it is stale
        assert await recover(db, settings) == {"requeued": 0, "failed": 0}
        counts = await recover(db, settings, now=datetime.now(UTC) + timedelta(seconds=61))
        async with db.session() as s:
            state = (await s.get(TrainingRound, rid)).state  # type: ignore[union-attr]
        if attempt == 1:
            assert counts["requeued"] >= 1 and state == "queued"
        else:
            assert counts["failed"] >= 1 and state == "failed"


@pytest.mark.slow
async def test_killed_worker_process_round_is_requeued(
    db: Database, database_url: str, tmp_path: Path, demo_base: Path, demo_adapters: list[Path]
) -> None:
    """A real `flywheel retrain worker` killed with SIGKILL mid-round leaves it to recovery."""
    name, adapter_id = await opted_in_tenant(
        db, tmp_path, database_url, demo_base, demo_adapters[1], retrain_min_feedback=8
    )
    from gateway.core.tenants import get_tenant

    async with db.session() as s:
        tenant_id = (await get_tenant(s, name)).id
    await seed_feedback(db, tenant_id, adapter_id, 40)
    env = {
        **os.environ,
        "FLYWHEEL_DATA_DIR": str(tmp_path),
        "FLYWHEEL_DATABASE_URL": database_url,
        "FLYWHEEL_BASE_MODEL": str(demo_base),
        "FLYWHEEL_BASE_MODEL_NAME": "demo-base",
        "FLYWHEEL_RETRAIN_MIN_ROWS": "8",
    }
    with (tmp_path / "worker.log").open("w") as worker_log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli.main", "retrain", "worker", "--poll", "0.2"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=worker_log,
        )
    try:
        row = None
        # Poll the database for the claim, up to ~5 min: the worker imports torch and TRL
        # first, which took over a minute on a loaded 2-core machine.
        for _ in range(3000):
            async with db.session() as s:
                row = await s.scalar(
                    select(TrainingRound).where(
                        TrainingRound.adapter_id == adapter_id, TrainingRound.state == "running"
                    )
                )
            if row is not None:
                break
            await asyncio.sleep(0.1)
        assert row is not None, "worker never claimed the round"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    settings = make_settings(tmp_path, database_url, demo_base, retrain_round_timeout_s=30)
    async with db.session() as s:
        assert (await s.get(TrainingRound, row.id)).state == "running"  # type: ignore[union-attr]
    await recover(db, settings, now=datetime.now(UTC) + timedelta(seconds=31))
    async with db.session() as s:
        assert (await s.get(TrainingRound, row.id)).state == "queued"  # type: ignore[union-attr]


async def test_feedback_whose_completion_lands_late_joins_a_later_round(
    db: Database, database_url: str, tmp_path: Path, demo_base: Path, demo_adapters: list[Path]
) -> None:
    """Feedback may land before its completion row (queued, spooled); no round may skip it."""
    from gateway.core.tenants import get_tenant
    from retrain.rounds import prepare

    name, adapter_id = await opted_in_tenant(
        db, tmp_path, database_url, demo_base, demo_adapters[0]
    )
    settings = make_settings(tmp_path, database_url, demo_base)
    async with db.session() as s:
        tenant_id = (await get_tenant(s, name)).id
    await seed_feedback(db, tenant_id, adapter_id, 12)
    late = f"chatcmpl-{uuid.uuid4().hex}"
    async with db.transaction() as s:  # its completion is still in some gateway's queue
        s.add(
            Feedback(
                tenant_id=tenant_id,
                id=f"fb-{late}",
                completion_id=late,
                edited_output="Thank you for asking. Happy to help.",
                meta={},
            )
        )
    async with db.session() as s:
        late_at = await s.scalar(select(Feedback.updated_at).where(Feedback.completion_id == late))
    assert late_at is not None
    await seed_feedback(db, tenant_id, adapter_id, 11)

    first = await prepare(db, settings, tenant=name, adapter="bot")
    assert first.cutoff <= as_utc(late_at)  # stops before the feedback still waiting
    assert first.counts["edit pairs"] == 12
    async with db.transaction() as s:  # the completion lands; the first round ran
        s.add(
            Completion(
                id=late,
                tenant_id=tenant_id,
                kind="chat",
                model="bot",
                adapter_id=adapter_id,
                status="ok",
                request={"messages": [{"role": "user", "content": "late question"}]},
                params={},
                response_text="garbled late answer",
                received_at=datetime.now(UTC),
            )
        )
        s.add(
            TrainingRound(
                id=f"round_{uuid.uuid4().hex[:8]}",
                tenant_id=tenant_id,
                adapter_id=adapter_id,
                state="succeeded",
                data_cutoff=first.cutoff,
            )
        )
    second = await prepare(db, settings, tenant=name, adapter="bot")
    assert second.counts["edit pairs"] == 12  # the late one and the 11 after it
    async with db.transaction() as s:
        await s.execute(delete(TrainingRound).where(TrainingRound.adapter_id == adapter_id))


async def test_round_without_golden_set_is_refused_before_training(
    db: Database, database_url: str, tmp_path: Path, demo_base: Path, demo_adapters: list[Path]
) -> None:
    """No golden set frozen before the cut-off: refused at once, the feedback left for later."""
    from adapters.golden import add_golden_set
    from adapters.registry import get_adapter
    from gateway.core.errors import NotFound
    from retrain.rounds import prepare

    settings = make_settings(tmp_path, database_url, demo_base, retrain_min_pairs=4)
    t = await seed_tenant(db, settings, f"ng-{uuid.uuid4().hex[:8]}", {"bot": demo_adapters[2]})
    async with db.session() as s:
        adapter_id = (await get_adapter(s, t.id, "bot")).id
    await seed_feedback(db, t.id, adapter_id, 12)
    with pytest.raises(NotFound, match="no golden set before the round's data cut-off") as err:
        await prepare(db, settings, tenant=t.name, adapter="bot")
    assert err.value.param == "golden_set"
    async with db.session() as s:
        rounds = await s.scalar(
            select(func.count())
            .select_from(TrainingRound)
            .where(TrainingRound.adapter_id == adapter_id)
        )
    assert rounds == 0  # nothing ran and nothing counts the feedback as used
    async with db.transaction() as s:
        await add_golden_set(s, await get_adapter(s, t.id, "bot"), [{"prompt": "Hi"}])
    prepared = await prepare(db, settings, tenant=t.name, adapter="bot")
    assert prepared.counts["edit pairs"] == 12  # the same feedback, all still there
    assert "golden set v1" in prepared.describe()


async def test_tenant_recipe_applies_and_flags_win(
    db: Database, database_url: str, tmp_path: Path, demo_base: Path, demo_adapters: list[Path]
) -> None:
    from retrain.rounds import prepare

    name, _ = await opted_in_tenant(db, tmp_path, database_url, demo_base, demo_adapters[3])
    from gateway.core.tenants import get_tenant, update_tenant

    async with db.transaction() as s:
        t = await update_tenant(s, name, retrain_recipe={"learning_rate": 1e-4, "num_epochs": 2})
        adapter_id = (await get_adapter_of(s, t.id)).id
    await seed_feedback(db, t.id, adapter_id, 12)
    settings = make_settings(tmp_path, database_url, demo_base)
    hp = (await prepare(db, settings, tenant=name, adapter="bot")).plan.hyperparameters
    assert (hp.learning_rate, hp.num_epochs) == (1e-4, 2)
    flagged = await prepare(db, settings, tenant=name, adapter="bot", overrides={"num_epochs": 1})
    assert flagged.plan.hyperparameters.num_epochs == 1
    assert flagged.plan.hyperparameters.learning_rate == 1e-4
    async with db.session() as s:
        assert (await get_tenant(s, name)).retrain_recipe["num_epochs"] == 2


async def get_adapter_of(session: Any, tenant_id: str) -> Any:
    from adapters.registry import get_adapter

    return await get_adapter(session, tenant_id, "bot")
