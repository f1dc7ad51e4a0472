"""The whole loop on the embedded engine, in process: completions -> feedback (public API) ->
a real TRL round -> candidate -> gate -> signed -> promoted -> served, shown by the header."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.app import create_app
from gateway.core.admin_tokens import local_admin_token
from retrain.rounds import prepare, run_round
from tools.harness import make_settings, running_app, seed_tenant

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

TOPICS = [
    "billing",
    "refunds",
    "shipping",
    "passwords",
    "invoices",
    "plans",
    "orders",
    "returns",
    "accounts",
    "settings",
    "upgrades",
    "coupons",
    "delivery",
    "payments",
    "taxes",
    "support",
]
GOOD = "Thank you for asking about {topic}. We are happy to help."


async def test_feedback_to_promoted_version(
    tmp_path: Path, database_url: str, demo_base: Path, demo_adapters: list[Path]
) -> None:
    from adapters.golden import add_golden_set
    from adapters.registry import get_adapter

    settings = make_settings(tmp_path / "data", database_url, demo_base, retrain_min_rows=8)
    app = create_app(settings)
    async with running_app(app) as client:
        state = app.state.flywheel
        tenant = await seed_tenant(
            state.db, settings, f"loop-{tmp_path.name[-8:]}", {"support": demo_adapters[5]}
        )
        key = {"Authorization": f"Bearer {tenant.key}"}
        admin = {"Authorization": f"Bearer {local_admin_token(settings)}"}
        # The golden set exists before any feedback: it is frozen before training.
        async with state.db.transaction() as session:
            adapter = await get_adapter(session, tenant.id, "support")
            await add_golden_set(
                session,
                adapter,
                [
                    {
                        "messages": [{"role": "user", "content": f"Tell me about {t}"}],
                        "reference": GOOD.format(topic=t),
                        "checks": [{"type": "max_length", "value": 5000, "hard": True}],
                    }
                    for t in ("prices", "hours", "stock")
                ],
            )
        for i, topic in enumerate(TOPICS * 2):
            body = {
                "model": "support",
                "messages": [{"role": "user", "content": f"Tell me about {topic} #{i}"}],
                "max_tokens": 12,
                "temperature": 0,
            }
            r = await client.post("/v1/chat/completions", json=body, headers=key)
            assert r.status_code == 200
            assert r.headers["x-flywheel-adapter-version"] == "support@1"
            fb = {
                "completion_id": r.json()["id"],
                "edited_output": GOOD.format(topic=topic),
                "id": f"fb-{i}",
            }
            assert (await client.post("/v1/feedback", json=fb, headers=key)).status_code in (
                200,
                201,
            )
        assert await state.completions.flush()

        prepared = await prepare(state.db, settings, tenant=tenant.name, adapter="support", seed=1)
        assert prepared.plan.method == "dpo", prepared.describe()
        assert len(prepared.heldout) >= 2
        outcome = await run_round(state.db, settings, prepared, seed=1)
        assert outcome.candidate_version == 2
        assert outcome.gate_passed, outcome.gate_summary

        # The round's record: lineage, data, hyperparameters, metrics, library versions; the
        # candidate is a passed (gated) version whose parent is the serving one, signed.
        from gateway.core.db.models import AdapterVersion, GateReport, TrainingRound

        async with state.db.session() as session:
            row = await session.get(TrainingRound, outcome.round_id)
            assert row is not None and row.state == "succeeded" and row.error is None
            candidate = await session.get(AdapterVersion, row.candidate_version_id)
            parent = await session.get(AdapterVersion, row.parent_version_id)
            report = await session.scalar(
                select(GateReport).where(GateReport.round_id == outcome.round_id)
            )
        assert row.method == "dpo" and row.method_reason
        assert row.counts["edit pairs"] >= 10 and row.counts["heldout_rows"] == len(
            prepared.heldout
        )
        assert row.counts["train_rows"] + row.counts["heldout_rows"] == row.counts["edit pairs"]
        assert len(row.dataset_hash or "") == 64 and len(row.heldout) == len(prepared.heldout)
        assert row.hyperparams["seed"] == 1 and row.hyperparams["learning_rate"] > 0
        assert "train_loss" in row.metrics and "rewards/margins" in row.metrics
        assert {"trl", "peft", "transformers", "torch"} <= set(row.library_versions)
        assert row.data_cutoff is not None and row.finished_at is not None
        assert candidate is not None and parent is not None
        assert candidate.version == 2 and parent.version == 1
        assert candidate.state == "passed" and candidate.parent_version_id == parent.id
        assert candidate.signature_path is not None
        assert report is not None and report.passed and report.candidate_version_id == candidate.id

        r = await client.post(
            "/admin/adapters/" + tenant.name + "/support/promote",
            json={"version": 2},
            headers=admin,
        )
        assert r.status_code == 200, r.text
        r = await client.post(
            "/v1/chat/completions",
            json={
                "model": "support",
                "messages": [{"role": "user", "content": "Tell me about refunds"}],
                "max_tokens": 4,
            },
            headers=key,
        )
        assert r.headers["x-flywheel-adapter-version"] == "support@2"
