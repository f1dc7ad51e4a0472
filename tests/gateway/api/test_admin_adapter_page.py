"""``GET /admin/adapters/{tenant}/{name}``: one adapter's lineage, gate tables and new feedback,
on SQLite and PostgreSQL.

Completions and feedback are real (the OpenAI API on the tiny demo base, ``/v1/feedback``), and
so are promote and rollback.  The training round and its gate report are inserted as rows, the
way a finished round and ``retrain.gate`` leave them (the verdict comes from the gate's own
``decide``): training one takes minutes, and what is tested here is how they are read back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import select

from gateway.api.admin.serving import gate_metrics
from gateway.app import create_app
from gateway.core.admin_tokens import local_admin_token
from gateway.core.db.models import AdapterVersion, GateReport, TrainingRound
from gateway.services.adapters import add_adapter
from retrain.gate_rules import DEFAULT_THRESHOLDS, Improvement, SideMetrics, decide
from tools.harness import SeededTenant, make_settings, running_app, seed_tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")

SERVING = SideMetrics(
    preference_accuracy=0.4444,
    mean_margin=0.01,
    check_pass_rate=1.0,
    hard_checks_passed=[True, True],
    reference_nll=2.0,
    mean_length=40.0,
    fluency_nll=3.0,
)
CANDIDATE = SideMetrics(
    preference_accuracy=0.7778,
    mean_margin=0.4,
    check_pass_rate=1.0,
    hard_checks_passed=[True, True],
    reference_nll=2.1,
    mean_length=44.0,
    fluency_nll=3.1,
)
IMPROVEMENT = Improvement(test="sign", p_value=0.0195, rows=9, wins=8, trials=9)


def stored_report(serving: SideMetrics, candidate: SideMetrics, imp: Improvement | None) -> Any:
    """What retrain.gate stores for a verdict: (passed, reasons, report)."""
    verdict = decide(serving, candidate, dict(DEFAULT_THRESHOLDS), imp)
    report = {
        "thresholds": verdict.thresholds,
        "serving": verdict.serving,
        "candidate": verdict.candidate,
        "improvement": verdict.improvement,
        "heldout_rows": 9,
        "signed": verdict.passed,
    }
    return verdict.passed, verdict.reasons, report


@dataclass
class Env:
    app: FastAPI
    client: httpx.AsyncClient
    tenant: SeededTenant
    admin: dict[str, str]
    round_id: str
    gate_id: str
    cutoff: datetime
    completions: list[dict[str, Any]]


async def chat(env_client: httpx.AsyncClient, key: str, text: str) -> dict[str, Any]:
    r = await env_client.post(
        "/v1/chat/completions",
        json={"model": "support", "messages": [{"role": "user", "content": text}], "max_tokens": 4},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def feedback(client: httpx.AsyncClient, key: str, **item: Any) -> None:
    r = await client.post("/v1/feedback", json=item, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code in (200, 201), r.text


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(
    fresh_database_url: str,
    demo_base: Path,
    demo_adapters: list[Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Env]:
    # Rounds from a handful of rows, so that the next round's plan is ready here.
    settings = make_settings(
        tmp_path_factory.mktemp("page"),
        fresh_database_url,
        demo_base,
        retrain_min_rows=2,
        retrain_min_pairs=1,
    )
    app = create_app(settings)
    async with running_app(app) as client:
        state = app.state.flywheel
        db = state.db
        t = await seed_tenant(db, settings, "acme", {"support": demo_adapters[0]})
        async with db.transaction() as session:
            await add_adapter(
                session,
                settings,
                tenant_name="acme",
                name="support",
                path=demo_adapters[1],
                sign=True,
            )
        # Before the round's data cut-off: one thumb up on v1.
        first = await chat(client, t.key, "Where is my parcel?")
        await feedback(client, t.key, completion_id=first["id"], rating="up")
        assert await state.completions.flush()
        cutoff = datetime.now(UTC)
        # After it: a thumb down and an edit, both on v1 (serving).
        second = await chat(client, t.key, "Can I get a refund?")
        third = await chat(client, t.key, "How long does delivery take?")
        await feedback(client, t.key, completion_id=second["id"], rating="down")
        await feedback(
            client, t.key, completion_id=third["id"], edited_output="Three to five days."
        )
        assert await state.completions.flush()

        passed, reasons, report = stored_report(SERVING, CANDIDATE, IMPROVEMENT)
        assert passed
        async with db.transaction() as session:
            versions = {
                v.version: v
                for v in await session.scalars(
                    select(AdapterVersion).where(AdapterVersion.tenant_id == t.id)
                )
            }
            v1, v2 = versions[1], versions[2]
            v2.parent_version_id, v2.state = v1.id, "passed"  # as a round and the gate leave it
            session.add(
                TrainingRound(
                    id="round_page",
                    tenant_id=t.id,
                    adapter_id=v1.adapter_id,
                    state="succeeded",
                    method="dpo",
                    parent_version_id=v1.id,
                    candidate_version_id=v2.id,
                    data_cutoff=cutoff,
                    counts={"edit pairs": 40},
                    metrics={"train_loss": 0.61},
                    attempts=1,
                )
            )
            session.add(
                GateReport(
                    id="gate_page",
                    tenant_id=t.id,
                    adapter_id=v1.adapter_id,
                    candidate_version_id=v2.id,
                    serving_version_id=v1.id,
                    round_id="round_page",
                    passed=passed,
                    reasons=reasons,
                    report=report,
                    summary="gate: PASSED",
                )
            )
        yield Env(
            app=app,
            client=client,
            tenant=t,
            admin={"Authorization": f"Bearer {local_admin_token(settings)}"},
            round_id="round_page",
            gate_id="gate_page",
            cutoff=cutoff,
            completions=[first, second, third],
        )


async def page(env: Env) -> dict[str, Any]:
    r = await env.client.get("/admin/adapters/acme/support", headers=env.admin)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_versions_form_a_lineage_linked_to_their_round_and_gate_report(env: Env) -> None:
    detail = await page(env)
    assert (detail["tenant"], detail["adapter"], detail["serving_version"]) == (
        "acme",
        "support",
        1,
    )
    v1, v2 = detail["versions"]
    assert (v1["version"], v1["parent_version"], v1["round_id"], v1["verdict"]) == (
        1,
        None,
        None,
        None,
    )
    assert v1["active"] and v1["first_served_at"] is not None
    assert (v2["version"], v2["parent_version"], v2["state"]) == (2, 1, "passed")
    assert (v2["round_id"], v2["gate_report_id"], v2["verdict"]) == (
        env.round_id,
        env.gate_id,
        "passed",
    )
    assert not v2["active"] and v2["first_served_at"] is None
    assert [r["id"] for r in detail["rounds"]] == [env.round_id]
    (gate,) = detail["gate_reports"]
    assert (gate["candidate_version"], gate["serving_version"], gate["round_id"]) == (
        2,
        1,
        env.round_id,
    )
    assert detail["rollback_to"] is None  # v1 is the first version it ever served: a 409
    r = await env.client.post(
        "/admin/adapters/acme/support/rollback", json={"reason": "x"}, headers=env.admin
    )
    assert r.status_code == 409


async def test_the_gate_table_agrees_with_the_gate(env: Env) -> None:
    (gate,) = (await page(env))["gate_reports"]
    rows = {m["metric"]: m for m in gate["metrics"]}
    assert list(rows) == [
        "improvement",
        "fluency_nll",
        "preference_accuracy",
        "mean_margin",
        "check_pass_rate",
        "reference_nll",
        "mean_length",
    ]
    assert all(m["outcome"] == "pass" and m["reason"] is None for m in rows.values())
    assert rows["preference_accuracy"] == {
        "metric": "preference_accuracy",
        "label": "preference accuracy",
        "serving": 0.4444,
        "candidate": 0.7778,
        "rule": "at least serving - 0",
        "limit": 0.4444,
        "outcome": "pass",
        "reason": None,
    }
    assert rows["improvement"]["candidate"] == 0.0195 and rows["improvement"]["rule"] == "p < 0.05"
    assert rows["mean_length"]["limit"] == pytest.approx(60.0)  # 40 tokens x 1.5


@pytest.mark.parametrize(
    ("changes", "improvement", "failing"),
    [
        ({"mean_length": 90.0}, IMPROVEMENT, {"mean_length"}),
        ({"hard_checks_passed": [True, False]}, IMPROVEMENT, {"check_pass_rate"}),
        ({"check_pass_rate": 0.5, "reference_nll": 9.0}, None, None),
        ({"fluency_nll": 9.0, "mean_margin": -1.0}, IMPROVEMENT, {"fluency_nll", "mean_margin"}),
    ],
)
def test_each_failing_row_carries_the_gates_own_reason(
    changes: dict[str, Any], improvement: Improvement | None, failing: set[str] | None
) -> None:
    """The rows that fail are exactly the gate's reasons, each under its metric, in its words."""
    candidate = SideMetrics(**{**asdict(CANDIDATE), **changes})
    passed, reasons, report = stored_report(SERVING, candidate, improvement)
    assert not passed
    rows = gate_metrics(report)
    failed = [m for m in rows if m.outcome == "fail"]
    assert sorted(r for m in failed for r in (m.reason or "").split("; ")) == sorted(reasons)
    expected = failing if failing is not None else {"improvement", *changes}
    assert {m.metric for m in failed} == expected
    skipped = gate_metrics({"thresholds": {}, "serving": {}, "candidate": {}})
    assert {m.outcome for m in skipped} == {"skipped"}


async def test_feedback_since_the_last_round_counts_and_shows_edits_side_by_side(
    env: Env,
) -> None:
    detail = await page(env)
    since = detail["feedback_since_last_round"]
    assert abs((datetime.fromisoformat(since["since"]) - env.cutoff).total_seconds()) < 1e-3
    assert (since["completions"], since["up"], since["down"], since["edits"]) == (2, 0, 1, 1)
    assert (since["down_per_100"], since["edits_per_100"], since["up_per_100"]) == (50.0, 50.0, 0.0)
    (edit,) = since["recent_edits"]
    third = env.completions[2]
    assert edit["completion_id"] == third["id"] and edit["version"] == 1
    assert edit["prompt"] == "How long does delivery take?"
    assert edit["original"] == third["choices"][0]["message"]["content"]
    assert edit["edited"] == "Three to five days."
    # Per version, every feedback row: v1 answered all three.
    v1, v2 = detail["versions"]
    assert v1["feedback"] == {"completions": 3, "up": 1, "down": 1, "edits": 1}
    assert v2["feedback"] == {"completions": 0, "up": 0, "down": 0, "edits": 0}


async def test_promote_and_rollback_move_the_serving_version_and_the_rollback_target(
    env: Env,
) -> None:
    c, h = env.client, env.admin
    r = await c.post(
        "/admin/adapters/acme/support/promote", json={"version": 2, "reason": "ok"}, headers=h
    )
    assert r.status_code == 200, r.text
    detail = await page(env)
    assert (detail["serving_version"], detail["rollback_to"]) == (2, 1)
    assert detail["versions"][1]["first_served_at"] is not None
    r = await c.post("/admin/adapters/acme/support/rollback", json={"reason": "no"}, headers=h)
    assert (r.json()["from_version"], r.json()["to_version"]) == (2, 1)
    detail = await page(env)
    # After a rollback the gateway would go forward again to 2: the page says the same.
    assert (detail["serving_version"], detail["rollback_to"]) == (1, 2)
    r = await c.post("/admin/adapters/acme/support/rollback", json={"reason": "again"}, headers=h)
    assert r.json()["to_version"] == 2
    r = await c.post("/admin/adapters/acme/support/rollback", json={"reason": "back"}, headers=h)
    assert r.json()["to_version"] == 1


async def test_golden_sets_the_next_rounds_plan_and_unknown_names(env: Env) -> None:
    c, h = env.client, env.admin
    # The next round's plan, as a dry run: not before a golden set exists, and it says so.
    before = (await c.get("/admin/adapters/acme/support/next-round", headers=h)).json()
    assert before["ready"] is False and "no golden set" in before["why_not"]
    assert before["retrain_enabled"] is False and before["lines"] == []
    items = [
        {"prompt": "Refund policy?", "reference": "Five business days."},
        {"prompt": "Hours?", "checks": [{"type": "contains", "value": "9"}]},
    ]
    r = await c.post(
        "/admin/golden", json={"tenant": "acme", "adapter": "support", "items": items}, headers=h
    )
    assert r.status_code == 201, r.text
    (golden,) = (await page(env))["golden_sets"]
    plan = (await c.get("/admin/adapters/acme/support/next-round", headers=h)).json()
    assert plan["ready"] is True and plan["why_not"] is None
    assert (plan["method"], plan["golden_set_version"]) == ("dpo", 1)
    assert plan["counts"]["edit pairs"] == 1 and plan["counts"]["thumbs down"] == 1
    assert plan["train_rows"] + plan["heldout_rows"] == 1
    assert datetime.fromisoformat(plan["since"]) == datetime.fromisoformat(
        (await page(env))["feedback_since_last_round"]["since"]
    )
    assert plan["lines"][0] == "tenant acme, adapter support, parent v1"
    assert (golden["version"], golden["items"]) == (1, 2)
    for path in (
        "/admin/adapters/acme/nope",
        "/admin/adapters/nobody/support",
        "/admin/adapters/acme/nope/next-round",
    ):
        r = await c.get(path, headers=h)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert (await c.get("/admin/adapters/acme/support")).status_code == 401
