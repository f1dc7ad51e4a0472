"""``flywheel retrain worker``: schedule rounds from new feedback and run them, safely in parallel.

- Scheduling: a tenant that opted in (``retrain_enabled``) gets a round for an adapter when its
  new feedback reaches ``retrain_min_feedback`` rows, or when the oldest new row is older than
  ``retrain_max_age_hours``.  At most one round per adapter is queued or running.
- Claiming: PostgreSQL ``SELECT ... FOR UPDATE SKIP LOCKED``, so workers never claim the same
  round and never wait on each other; SQLite (one machine) uses a compare-and-set UPDATE.
- Liveness: a running round's worker heartbeats; a round whose heartbeat is older than
  ``retrain_round_timeout_s`` is requeued, or failed after ``retrain_max_attempts``.  A round
  started by ``flywheel retrain run`` heartbeats the same way, so a killed CLI is recovered too.
- After a failed round (a refusal such as too little data, or a training error) the adapter is
  scheduled again only once feedback newer than that failure arrives: the same data would fail
  the same way, and retrying it at once would spin.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from adapters.remote import remote_swap
from feedback.export import FEEDBACK_COMPLETION
from gateway.core.config import Settings
from gateway.core.db.models import Adapter, Completion, Feedback, Tenant, TrainingRound
from gateway.core.db.session import Database
from gateway.core.errors import Conflict, FlywheelError
from gateway.core.ids import new_id

log = logging.getLogger("flywheel.worker")
ACTIVE = ("queued", "running")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{new_id('w')[-6:]}"


async def schedule(db: Database, now: datetime | None = None) -> list[str]:
    """Queue rounds for adapters whose new feedback passed their tenant's threshold."""
    now = now or datetime.now(UTC)
    queued: list[str] = []
    async with db.session() as session:
        candidates = (
            await session.execute(
                select(Tenant, Adapter)
                .join(Adapter, Adapter.tenant_id == Tenant.id)
                .where(Tenant.retrain_enabled.is_(True), Tenant.disabled.is_(False))
            )
        ).all()
    for tenant, adapter in candidates:
        async with db.transaction() as session:
            # Lock the adapter row so two schedulers cannot both queue a round for it.
            await session.scalar(select(Adapter).where(Adapter.id == adapter.id).with_for_update())
            busy = await session.scalar(
                select(func.count())
                .select_from(TrainingRound)
                .where(TrainingRound.adapter_id == adapter.id, TrainingRound.state.in_(ACTIVE))
            )
            if busy:
                continue
            since = await session.scalar(
                select(func.max(TrainingRound.data_cutoff)).where(
                    TrainingRound.adapter_id == adapter.id, TrainingRound.state == "succeeded"
                )
            )
            if not await _news_since_last_failure(session, tenant.id, adapter.id):
                continue
            conditions = [Feedback.tenant_id == tenant.id, Completion.adapter_id == adapter.id]
            if since is not None:
                conditions.append(Feedback.updated_at >= since)
            count, oldest = (
                await session.execute(
                    select(func.count(), func.min(Feedback.updated_at))
                    .select_from(Feedback)
                    .join(
                        Completion,
                        FEEDBACK_COMPLETION,
                    )
                    .where(*conditions)
                )
            ).one()
            if not count:
                continue
            if oldest is not None and oldest.tzinfo is None:
                oldest = oldest.replace(tzinfo=UTC)
            old_enough = oldest is not None and now - oldest >= timedelta(
                hours=tenant.retrain_max_age_hours
            )
            if count < tenant.retrain_min_feedback and not old_enough:
                continue
            row = TrainingRound(
                id=new_id("round"), tenant_id=tenant.id, adapter_id=adapter.id, state="queued"
            )
            session.add(row)
            queued.append(row.id)
    return queued


async def _news_since_last_failure(session: Any, tenant_id: str, adapter_id: str) -> bool:
    """False while the adapter's latest round failed and no feedback arrived after it."""
    latest = await session.scalar(
        select(TrainingRound)
        .where(TrainingRound.adapter_id == adapter_id)
        .order_by(TrainingRound.created_at.desc())
        .limit(1)
    )
    if latest is None or latest.state != "failed":
        return True
    failed_at = latest.finished_at or latest.created_at
    newer = await session.scalar(
        select(func.count())
        .select_from(Feedback)
        .join(
            Completion,
            FEEDBACK_COMPLETION,
        )
        .where(
            Feedback.tenant_id == tenant_id,
            Completion.adapter_id == adapter_id,
            Feedback.updated_at > failed_at,
        )
    )
    return bool(newer)


async def start_round(db: Database, tenant_id: str, adapter_id: str, worker: str) -> str:
    """A round run right now (the CLI), claimed by ``worker``; Conflict if one is active."""
    now = datetime.now(UTC)
    async with db.transaction() as session:
        await session.scalar(select(Adapter).where(Adapter.id == adapter_id).with_for_update())
        active = await session.scalar(
            select(TrainingRound.id).where(
                TrainingRound.adapter_id == adapter_id, TrainingRound.state.in_(ACTIVE)
            )
        )
        if active is not None:
            raise Conflict(f"round {active} is already queued or running for this adapter")
        row = TrainingRound(
            id=new_id("round"),
            tenant_id=tenant_id,
            adapter_id=adapter_id,
            state="running",
            worker_id=worker,
            heartbeat_at=now,
            started_at=now,
            attempts=1,
        )
        session.add(row)
    return row.id


async def claim(db: Database, worker: str) -> TrainingRound | None:
    """Take the oldest queued round, or None.  Never hands one round to two workers."""
    now = datetime.now(UTC)
    async with db.transaction() as session:
        if db.is_postgres:
            row = await session.scalar(
                select(TrainingRound)
                .where(TrainingRound.state == "queued")
                .order_by(TrainingRound.created_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if row is None:
                return None
            row.state, row.worker_id, row.heartbeat_at = "running", worker, now
            row.attempts += 1
            row.started_at = now
            return row
        round_id = await session.scalar(
            select(TrainingRound.id)
            .where(TrainingRound.state == "queued")
            .order_by(TrainingRound.created_at)
            .limit(1)
        )
        if round_id is None:
            return None
        result: Any = await session.execute(
            update(TrainingRound)
            .where(TrainingRound.id == round_id, TrainingRound.state == "queued")
            .values(
                state="running",
                worker_id=worker,
                heartbeat_at=now,
                started_at=now,
                attempts=TrainingRound.attempts + 1,
            )
        )
        if result.rowcount != 1:
            return None  # another worker won the race
        return await session.get(TrainingRound, round_id)


async def heartbeat(db: Database, round_id: str, worker: str) -> bool:
    """Refresh the heartbeat; False when the round is no longer ours (it was recovered)."""
    async with db.transaction() as session:
        result: Any = await session.execute(
            update(TrainingRound)
            .where(
                TrainingRound.id == round_id,
                TrainingRound.worker_id == worker,
                TrainingRound.state == "running",
            )
            .values(heartbeat_at=datetime.now(UTC))
        )
        return bool(result.rowcount == 1)


async def recover(db: Database, settings: Settings, now: datetime | None = None) -> dict[str, int]:
    """Requeue (or fail, after too many attempts) rounds whose worker stopped heartbeating."""
    now = now or datetime.now(UTC)
    stale_before = now - timedelta(seconds=settings.retrain_round_timeout_s)
    counts = {"requeued": 0, "failed": 0}
    async with db.transaction() as session:
        rows = await session.scalars(
            select(TrainingRound)
            .where(TrainingRound.state == "running", TrainingRound.heartbeat_at < stale_before)
            .with_for_update(skip_locked=True)
        )
        for row in rows:
            if row.attempts >= settings.retrain_max_attempts:
                row.state, row.error = (
                    "failed",
                    f"worker {row.worker_id} stopped heartbeating ({row.attempts} attempts)",
                )
                row.finished_at = now
                counts["failed"] += 1
            else:
                row.state, row.worker_id = "queued", None
                counts["requeued"] += 1
    return counts


async def process(db: Database, settings: Settings, row: TrainingRound, worker: str) -> None:
    """Run one claimed round, heartbeating while it trains."""
    from retrain.rounds import prepare, run_round  # deferred: TRL and torch, on a claim only

    async with db.session() as session:
        tenant = await session.get(Tenant, row.tenant_id)
        adapter = await session.get(Adapter, row.adapter_id)
    if tenant is None or adapter is None:
        await _fail(db, row.id, "the round's tenant or adapter no longer exists")
        return
    try:
        async with heartbeating(db, settings, row.id, worker):
            prepared = await prepare(db, settings, tenant=tenant.name, adapter=adapter.name)
            outcome = await run_round(
                db, settings, prepared, round_id=row.id, progress=_log_progress(row.id)
            )
        if outcome.gate_passed and tenant.auto_promote:
            await _auto_promote(db, settings, row.id, tenant.name, adapter.name, outcome)
    except Exception as exc:
        # Refusals (too little data, imbalance) and training errors end the round; it is not
        # retried automatically (a worker that *died* is, through recover()).
        message = exc.message if isinstance(exc, FlywheelError) else f"{type(exc).__name__}: {exc}"
        await _fail(db, row.id, message)


def _log_progress(round_id: str) -> Any:
    """TRL's per-step metrics as log lines (the CLI prints the same to stderr)."""
    keys = ("step", "max_steps", "epoch", "loss", "rewards/margins", "rewards/accuracies", "eta_s")

    def progress(event: dict[str, Any]) -> None:
        fields = {k.replace("/", "_"): event[k] for k in keys if event.get(k) is not None}
        if fields:
            log.info(
                "round %s: %s",
                round_id,
                " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in fields.items()
                ),
            )

    return progress


@asynccontextmanager
async def heartbeating(
    db: Database, settings: Settings, round_id: str, worker: str
) -> AsyncIterator[None]:
    """Keep ``round_id``'s heartbeat fresh while the block runs."""
    stop = asyncio.Event()

    async def beat() -> None:
        interval = max(1.0, settings.retrain_round_timeout_s / 4)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                try:
                    if not await heartbeat(db, round_id, worker):
                        log.warning("round %s is no longer ours (it was recovered)", round_id)
                except Exception:  # a database blip must not end the heartbeats for good
                    log.exception("heartbeat for round %s failed; retrying", round_id)

    beater = asyncio.create_task(beat())
    try:
        yield
    finally:
        stop.set()
        await beater


async def _auto_promote(
    db: Database, settings: Settings, round_id: str, tenant: str, adapter: str, outcome: Any
) -> None:
    """Promote a passed candidate through the gateway; a failure is kept on the round."""
    try:
        await remote_swap(
            settings,
            tenant,
            adapter,
            version=outcome.candidate_version,
            reason=f"auto-promote after round {round_id}",
        )
    except Exception as exc:
        # The round itself succeeded (its candidate passed); only the promotion did not.
        message = exc.message if isinstance(exc, FlywheelError) else f"{type(exc).__name__}: {exc}"
        log.error("auto-promotion after round %s failed: %s", round_id, message)
        async with db.transaction() as session:
            r = await session.get(TrainingRound, round_id)
            if r is not None:
                r.error = f"auto-promotion failed: {message}"


async def _fail(db: Database, round_id: str, message: str) -> None:
    async with db.transaction() as session:
        r = await session.get(TrainingRound, round_id)
        if r is not None and r.state in ACTIVE:
            r.state, r.error, r.finished_at = "failed", message, datetime.now(UTC)
    log.warning("round %s failed: %s", round_id, message)


async def run_worker(
    db: Database, settings: Settings, *, once: bool = False, poll_s: float = 10.0
) -> int:
    """Loop: recover, schedule, claim, run.  Returns the number of rounds run (for --once)."""
    worker = worker_name()
    ran = 0
    log.info("retrain worker %s started", worker)
    while True:
        await recover(db, settings)
        await schedule(db)
        row = await claim(db, worker)
        if row is not None:
            await process(db, settings, row, worker)
            ran += 1
            continue
        if once:
            return ran
        await asyncio.sleep(poll_s)  # idle polling interval, not synchronisation
