"""The whole loop on the embedded engine, in process: completions -> feedback (public API) ->
a real TRL round -> candidate -> gate -> signed -> promoted -> served, shown by the header."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.services.admin_tokens import local_admin_token
from retrain.rounds import prepare, run_round
from tests.helpers import make_settings, running_app, seed_tenant

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
