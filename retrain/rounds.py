"""One retraining round, end to end: select feedback, plan, train, register, gate.

A round continues from the serving version's weights with the serving version as the frozen
reference (TRL's ``ref`` copy), so it improves on what is served, not on the bare base.  Its
output is a ``candidate`` version that is never served until the gate passes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from adapters.base_models import resolve_base
from adapters.golden import golden_for_gate
from adapters.registry import add_version, get_adapter
from feedback.examples import DPORow, KTORow
from feedback.export import FEEDBACK_COMPLETION, FeedbackRow, select_rows, to_dpo, to_kto
from gateway.core import metrics
from gateway.core.config import Settings
from gateway.core.db.models import AdapterVersion, Completion, Feedback, Tenant, TrainingRound
from gateway.core.db.session import Database
from gateway.core.ids import new_id
from gateway.core.tenants import get_tenant
from gateway.core.time import as_utc
from gateway.engine.capabilities import capabilities_for
from retrain.gate import run_gate
from retrain.plan import (
    PAIR_METHODS,
    Plan,
    make_plan,
    row_kind,
    split_heldout,
)
from retrain.train import Progress, library_versions, step_log, train_round

log = logging.getLogger("flywheel.retrain")


@dataclass
class Prepared:
    """Everything decided before training: the data, the split and the plan."""

    tenant: Tenant
    adapter_id: str
    adapter_name: str
    serving: AdapterVersion | None
    since: datetime | None
    cutoff: datetime
    plan: Plan
    train: list[KTORow] | list[DPORow]
    heldout: list[KTORow] | list[DPORow]
    dataset_hash: str
    golden_version: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        since = f"{self.since:%Y-%m-%d %H:%M}" if self.since else "the beginning"
        parent = f"v{self.serving.version}" if self.serving else "none (new LoRA)"
        lines = [
            f"tenant {self.tenant.name}, adapter {self.adapter_name}, parent {parent}",
            f"feedback since {since} up to {self.cutoff:%Y-%m-%d %H:%M}: "
            + ", ".join(f"{k} {v}" for k, v in self.counts.items()),
            self.plan.describe(),
            f"split: {len(self.train)} training rows, {len(self.heldout)} held out for the gate",
            f"dataset sha256 {self.dataset_hash[:16]}; golden set v{self.golden_version} "
            "(frozen before the cut-off) gates the candidate",
        ]
        return "\n".join(lines)


def _majority_kind(rows: list[FeedbackRow]) -> list[FeedbackRow]:
    """One dataset column cannot mix chat and text prompts: keep the kind with most rows."""
    kinds = Counter(r.kind for r in rows)
    if len(kinds) <= 1:
        return rows
    keep = kinds.most_common(1)[0][0]
    return [r for r in rows if r.kind == keep]


def _dataset_hash(rows: list[KTORow] | list[DPORow]) -> str:
    canonical = json.dumps([r.to_trl() for r in rows], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def _data_cutoff(
    session: Any, settings: Settings, tenant_id: str, since: datetime | None
) -> datetime:
    """Now, or earlier: just before the oldest feedback whose completion row has not landed.

    Feedback may arrive before its completion is written (queued, or spooled through a
    database outage).  Such feedback cannot be attributed to an adapter yet; cutting the round
    off before it means the round after the row lands takes it, instead of no round ever
    (rounds select ``since <= updated_at < cutoff``).  A completion that never lands (erased)
    stops holding the cutoff back after ``retrain_completion_wait_s``.
    """
    now = datetime.now(UTC)
    floor = now - timedelta(seconds=settings.retrain_completion_wait_s)
    if since is not None:
        floor = max(floor, as_utc(since))
    waiting = await session.scalar(
        select(func.min(Feedback.updated_at))
        .select_from(Feedback)
        .outerjoin(
            Completion,
            FEEDBACK_COMPLETION,
        )
        .where(
            Feedback.tenant_id == tenant_id,
            Completion.id.is_(None),
            Feedback.updated_at >= floor,
        )
    )
    return min(now, as_utc(waiting)) if waiting is not None else now


async def prepare(
    db: Database,
    settings: Settings,
    *,
    tenant: str,
    adapter: str,
    method: str = "auto",
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
) -> Prepared:
    async with db.session() as session:
        t = await get_tenant(session, tenant)
        a = await get_adapter(session, t.id, adapter)
        serving = (
            await session.get(AdapterVersion, a.active_version_id) if a.active_version_id else None
        )
        last = await session.scalar(
            select(TrainingRound)
            .where(TrainingRound.adapter_id == a.id, TrainingRound.state == "succeeded")
            .order_by(TrainingRound.data_cutoff.desc())
            .limit(1)
        )
        since = last.data_cutoff if last is not None else None
        cutoff = await _data_cutoff(session, settings, t.id, since)
        # Refuse before any training: a round whose candidate could never be gated must not
        # run, nor count its feedback as used (the next round takes it).
        golden = await golden_for_gate(session, a.id, cutoff)
        selection = await select_rows(session, t.id, a.id, since=since, until=cutoff)
    rows = _majority_kind(list(selection))
    n_pairs = sum(1 for r in rows if r.edit is not None)
    n_up = sum(1 for r in rows if r.edit is None and r.rating == "up")
    n_down = sum(1 for r in rows if r.edit is None and r.rating == "down")
    # The tenant's stored recipe, then this round's own overrides (flags) on top.
    plan = make_plan(
        n_pairs,
        n_up,
        n_down,
        method,
        overrides={**(t.retrain_recipe or {}), **(overrides or {})},
        min_pairs=settings.retrain_min_pairs,
        min_kto_rows=settings.retrain_min_rows,
        max_imbalance=settings.retrain_max_imbalance,
    )
    data: list[KTORow] | list[DPORow] = (
        to_dpo(rows) if plan.method in PAIR_METHODS else to_kto(rows)
    )
    train, heldout = split_heldout(data, settings.retrain_heldout_fraction, seed, row_kind)
    return Prepared(
        tenant=t,
        adapter_id=a.id,
        adapter_name=a.name,
        serving=serving,
        since=since,
        cutoff=cutoff,
        plan=plan,
        train=train,  # type: ignore[arg-type]
        heldout=heldout,  # type: ignore[arg-type]
        dataset_hash=_dataset_hash(data),
        golden_version=golden.version,
        counts={
            "edit pairs": n_pairs,
            "thumbs up": n_up,
            "thumbs down": n_down,
            "without stored text": selection.skipped_no_content,
            "superseded": selection.superseded,
        },
    )


@dataclass(frozen=True)
class RoundOutcome:
    round_id: str
    candidate_version: int
    metrics: dict[str, float]
    timings: dict[str, float]
    gate_passed: bool | None
    gate_summary: str


async def create_round(db: Database, tenant_id: str, adapter_id: str, state: str = "queued") -> str:
    async with db.transaction() as session:
        row = TrainingRound(
            id=new_id("round"), tenant_id=tenant_id, adapter_id=adapter_id, state=state
        )
        session.add(row)
    return row.id


async def _update(db: Database, round_id: str, **values: Any) -> None:
    async with db.transaction() as session:
        row = await session.get(TrainingRound, round_id)
        assert row is not None
        for key, value in values.items():
            setattr(row, key, value)


async def run_round(
    db: Database,
    settings: Settings,
    prepared: Prepared,
    *,
    seed: int = 0,
    round_id: str | None = None,
    progress: Progress | None = None,
    gate: bool = True,
) -> RoundOutcome:
    """Train, register the candidate, record the round, then gate it."""
    round_id = round_id or await create_round(
        db, prepared.tenant.id, prepared.adapter_id, "running"
    )
    plan = prepared.plan
    await _update(
        db,
        round_id,
        state="running",
        started_at=datetime.now(UTC),
        method=plan.method,
        method_reason=plan.reason,
        parent_version_id=prepared.serving.id if prepared.serving else None,
        data_cutoff=prepared.cutoff,
        counts={
            **prepared.counts,
            "train_rows": len(prepared.train),
            "heldout_rows": len(prepared.heldout),
        },
        dataset_hash=prepared.dataset_hash,
        heldout=[r.to_json() for r in prepared.heldout],  # read back by example_from_json
        hyperparams={**plan.hyperparameters.__dict__, "seed": seed},
    )
    workdir = settings.data_dir / "rounds" / round_id
    try:
        base = await asyncio.to_thread(resolve_base, settings)
        parent = Path(prepared.serving.path) if prepared.serving else None
        shutil.rmtree(workdir, ignore_errors=True)  # a retried round starts clean
        result = await asyncio.to_thread(
            train_round,
            base.path,
            parent,
            plan.method,
            prepared.train,
            workdir / "adapter",
            plan.hyperparameters,
            seed,
            settings.device,
            progress,
        )
        async with db.transaction() as session:
            tenant = await session.get(Tenant, prepared.tenant.id)
            assert tenant is not None
            version = await add_version(
                session,
                tenant,
                prepared.adapter_name,
                result.adapter_dir,
                base=base.spec(),
                artifact_dir=settings.artifact_dir,
                max_rank=settings.max_lora_rank,
                state="candidate",
                parent_version_id=prepared.serving.id if prepared.serving else None,
                meta={
                    "round_id": round_id,
                    "method": plan.method,
                    "dataset_hash": prepared.dataset_hash,
                },
                allow_dora=capabilities_for(settings.engine).dora,
                actor="retrain",
            )
        metrics.ROUNDS.labels("succeeded").inc()
        metrics.ROUND_SECONDS.observe(sum(result.timings.values()))
        await _update(
            db,
            round_id,
            state="succeeded",
            candidate_version_id=version.id,
            metrics={**result.metrics, "timings": result.timings},
            hyperparams={
                **plan.hyperparameters.__dict__,
                "seed": seed,
                "precision": result.precision,
            },
            train_log=step_log(result.log_history),
            library_versions=library_versions(),
            finished_at=datetime.now(UTC),
        )
    except Exception as exc:
        metrics.ROUNDS.labels("failed").inc()
        await _update(
            db,
            round_id,
            state="failed",
            error=f"{type(exc).__name__}: {exc}",
            finished_at=datetime.now(UTC),
        )
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # the candidate lives in the artifact store
    passed: bool | None = None
    text = "gate not run"
    if gate:
        outcome = await run_gate(
            db,
            settings,
            tenant=prepared.tenant.name,
            adapter=prepared.adapter_name,
            version=version.version,
            round_id=round_id,
            actor="retrain",
        )
        passed, text = outcome.passed, outcome.summary
    log.info("round %s produced %s@%d", round_id, prepared.adapter_name, version.version)
    return RoundOutcome(round_id, version.version, result.metrics, result.timings, passed, text)
