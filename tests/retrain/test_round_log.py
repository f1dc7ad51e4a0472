"""A round's per-step training log: kept on its row (``training_rounds.train_log``) and answered
by the admin API, from a real DPO round on the tiny demo base (CPU), on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from gateway.api.admin.serving import adapter_detail
from gateway.core.db.models import TrainingRound
from gateway.core.db.session import Database
from gateway.core.tenants import get_tenant
from retrain.rounds import prepare, run_round
from retrain.train import STEP_LOG_MAX, step_log
from tests.retrain.test_retrain_worker import opted_in_tenant, seed_feedback
from tools.harness import make_settings


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # As in test_retrain_core: on a busy 2-core machine a second thread only slows tiny matmuls.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_step_log_keeps_per_step_numbers_only() -> None:
    history = [
        {"loss": 0.69, "rewards/margins": 0.0, "learning_rate": 1e-4, "epoch": 0.5, "step": 1},
        {"loss": float("nan"), "rewards/accuracies": 1.0, "step": 2, "note": "text"},
        {"train_runtime": 3.2, "train_loss": 0.5, "step": 2},  # the summary, not a step
        {"eval_loss": 0.7},  # no step: not a training step
    ]
    assert step_log(history) == [
        {"loss": 0.69, "rewards/margins": 0.0, "learning_rate": 1e-4, "epoch": 0.5, "step": 1.0},
        {"rewards/accuracies": 1.0, "step": 2.0},
    ]


def test_a_long_log_is_thinned_evenly_keeping_both_ends() -> None:
    long = [{"step": float(i), "loss": 1 / i} for i in range(1, 2 * STEP_LOG_MAX + 2)]
    kept = step_log(long)
    assert len(kept) == STEP_LOG_MAX
    assert kept[0] == long[0] and kept[-1] == long[-1]
    steps = [e["step"] for e in kept]
    assert steps == sorted(set(steps))
    gaps = {b - a for a, b in itertools.pairwise(steps)}
    assert gaps <= {2.0, 3.0}  # evenly spaced (1001 entries onto 500)


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="session")
async def test_a_rounds_per_step_log_is_stored_and_answered(
    db: Database, database_url: str, tmp_path: Path, demo_base: Path, demo_adapters: list[Path]
) -> None:
    name, adapter_id = await opted_in_tenant(
        db, tmp_path, database_url, demo_base, demo_adapters[3]
    )
    async with db.session() as s:
        tenant_id = (await get_tenant(s, name)).id
    await seed_feedback(db, tenant_id, adapter_id, 20)  # 20 edits: DPO pairs
    settings = make_settings(tmp_path, database_url, demo_base)
    prepared = await prepare(
        db,
        settings,
        tenant=name,
        adapter="bot",
        overrides={"learning_rate": 3e-3, "num_epochs": 2, "batch_size": 4},
    )
    assert prepared.plan.method == "dpo"
    outcome = await run_round(db, settings, prepared, seed=0, gate=False)

    async with db.session() as s:
        row = await s.scalar(select(TrainingRound).where(TrainingRound.id == outcome.round_id))
        assert row is not None
        log = row.train_log
        detail = await adapter_detail(s, name, "bot", 20, 0)
    # One entry per optimizer step (logging_steps=1), in order, each with its loss and DPO's
    # reward margins and accuracies.
    steps = [int(e["step"]) for e in log]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 4
    for entry in log:
        assert {"loss", "rewards/margins", "rewards/accuracies", "learning_rate"} <= entry.keys()
        assert all(math.isfinite(v) for v in entry.values())
        assert 0.0 <= entry["rewards/accuracies"] <= 1.0
    # The last step's values are the round's last-logged metrics, as before.
    assert log[-1]["loss"] == pytest.approx(row.metrics["loss"])
    (answered,) = [r for r in detail.rounds if r.id == outcome.round_id]
    assert answered.train_log == log
