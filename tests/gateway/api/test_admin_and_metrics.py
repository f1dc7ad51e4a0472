"""The admin API (its own credential, audited) and Prometheus metrics after real traffic."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import select

from gateway.app import create_app
from gateway.core.admin_tokens import local_admin_token
from gateway.core.db.models import AuditEvent, Completion
from tools.harness import METRICS_AUTH, REPO, SeededTenant, make_settings, running_app, seed_tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Env:
    app: FastAPI
    client: httpx.AsyncClient
    tenant: SeededTenant
    admin: dict[str, str]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(
    fresh_database_url: str,
    demo_base: Path,
    demo_adapters: list[Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Env]:
    settings = make_settings(tmp_path_factory.mktemp("admin"), fresh_database_url, demo_base)
    app = create_app(settings)
    async with running_app(app) as client:
        t = await seed_tenant(
            app.state.flywheel.db, settings, "metered", {"support": demo_adapters[0]}
        )
        yield Env(app, client, t, {"Authorization": f"Bearer {local_admin_token(settings)}"})


def admin_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every admin operation, from the OpenAPI schema (which documents them all)."""
    out = []
    for path, ops in app.openapi()["paths"].items():
        if path.startswith("/admin"):
            concrete = re.sub(r"\{[^}]+\}", "x", path).replace("/versions/x/", "/versions/1/")
            out += [(method.upper(), concrete) for method in ops]
    return out


async def test_admin_refuses_tenant_keys_and_bad_tokens(env: Env) -> None:
    routes = admin_routes(env.app)
    assert len(routes) >= 15
    for method, path in routes:
        for headers in (
            {},
            {"Authorization": f"Bearer {env.tenant.key}"},
            {"Authorization": "Bearer fwadm-nope"},
        ):
            r = await env.client.request(method, path, headers=headers, json={})
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.json()["error"]["type"] == "authentication_error"


async def test_admin_actions_are_audited(env: Env) -> None:
    c, h = env.client, env.admin
    r = await c.post("/admin/tenants", json={"name": "via-admin", "rpm_limit": 5}, headers=h)
    assert r.status_code == 201 and r.json()["api_key"].startswith("fw-")
    key_id = r.json()["key_id"]
    assert (await c.patch("/admin/tenants/via-admin", json={"tpm_limit": 1000}, headers=h)).json()[
        "tpm_limit"
    ] == 1000
    assert (await c.post("/admin/tenants/via-admin/keys/rotate", headers=h)).json()["revoked"] == [
        key_id
    ]
    new = (await c.post("/admin/tenants/via-admin/keys", headers=h)).json()
    assert (await c.delete(f"/admin/keys/{new['id']}", headers=h)).json()["revoked_at"]
    assert (await c.get("/admin/tenants", headers=h)).status_code == 200
    assert any(
        a["adapter"] == "support"
        for a in (await c.get("/admin/adapters?tenant=metered", headers=h)).json()
    )
    assert (await c.post("/admin/adapters/metered/support/versions/1/verify", headers=h)).json()[
        "verified"
    ]
    stats = (await c.get("/admin/feedback/stats?tenant=metered", headers=h)).json()
    assert set(stats) >= {"completions", "up", "down", "edits"}
    bad = await c.patch("/admin/tenants/via-admin", json={"rpm_limit": "lots"}, headers=h)
    assert bad.status_code == 400
    # Past the INTEGER column: a 400 naming the field, not a database error (a 500 before).
    huge = await c.patch("/admin/tenants/via-admin", json={"tpm_limit": 10**12}, headers=h)
    assert huge.status_code == 400 and huge.json()["error"]["param"] == "tpm_limit"
    # A tenant's retraining recipe: stored when a round could use it, else refused by field.
    recipe = {"retrain_recipe": {"learning_rate": 1e-4, "num_epochs": 2}}
    ok = await c.patch("/admin/tenants/via-admin", json=recipe, headers=h)
    assert ok.status_code == 200 and ok.json()["retrain_recipe"] == recipe["retrain_recipe"]
    for bad_recipe, param in (
        ({"learning_rat": 1e-4}, "retrain_recipe"),
        ({"learning_rate": 5.0}, "learning_rate"),
        ({"num_epochs": "many"}, "num_epochs"),
    ):
        r = await c.patch(
            "/admin/tenants/via-admin", json={"retrain_recipe": bad_recipe}, headers=h
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.json()
    async with env.app.state.flywheel.db.session() as s:
        actions = list(
            await s.scalars(select(AuditEvent.action).where(AuditEvent.actor.like("admin:%")))
        )
    assert {
        "tenant.create",
        "tenant.update",
        "key.rotate",
        "key.create",
        "key.revoke",
        "adapter.verify",
    } <= set(actions)
    audit = (await c.get("/admin/audit", headers=h)).json()
    assert all(a["remote_addr"] is not None for a in audit if a["actor"].startswith("admin:"))


async def test_openapi_documents_admin(env: Env) -> None:
    schema = (await env.client.get("/openapi.json")).json()
    assert "/admin/adapters/{tenant}/{name}/promote" in schema["paths"]
    # The completion routes skip FastAPI's request handler (DirectRoute) but stay documented.
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= schema["paths"].keys()


def sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_metrics_are_for_the_operator_only(env: Env) -> None:
    """/metrics names every tenant and adapter version: a tenant key, a wrong token or no
    token is a 401; the metrics token and admin tokens read it."""
    c = env.client
    tenant_key = {"Authorization": f"Bearer {env.tenant.key}"}
    for headers in ({}, tenant_key, {"Authorization": "Bearer not-the-token"}):
        r = await c.get("/metrics", headers=headers)
        assert r.status_code == 401, (headers, r.status_code)
        assert "flywheel_" not in r.text
    for headers in (METRICS_AUTH, env.admin):
        r = await c.get("/metrics", headers=headers)
        assert r.status_code == 200 and "flywheel_refused_loads_total" in r.text


async def test_metrics_move_with_openai_traffic(env: Env) -> None:
    before = (await env.client.get("/metrics", headers=METRICS_AUTH)).text
    transport = httpx.ASGITransport(app=env.app)
    oa = openai.AsyncOpenAI(
        base_url="http://flywheel/v1",
        api_key=env.tenant.key,
        http_client=httpx.AsyncClient(transport=transport),
    )
    for _ in range(3):
        await oa.chat.completions.create(
            model="support", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    stream = await oa.chat.completions.create(
        model="support", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
    )
    async for _ in stream:
        pass
    after = (await env.client.get("/metrics", headers=METRICS_AUTH)).text
    labels = {"tenant": env.tenant.id, "adapter": "support@1"}
    assert (
        sample(after, "flywheel_requests_total", status="ok", **labels)
        - sample(before, "flywheel_requests_total", status="ok", **labels)
        == 4
    )
    assert (
        sample(after, "flywheel_request_duration_seconds_count", **labels)
        - sample(before, "flywheel_request_duration_seconds_count", **labels)
        == 4
    )
    assert sample(after, "flywheel_tokens_total", direction="out", **labels) > sample(
        before, "flywheel_tokens_total", direction="out", **labels
    )
    assert sample(after, "flywheel_time_to_first_token_seconds_count", **labels) >= 4
    assert sample(after, "flywheel_gateway_overhead_seconds_count") >= 4
    assert sample(after, "flywheel_adapters_resident", replica="embedded") >= 1
    assert sample(after, "flywheel_adapter_loads_total", replica="embedded") >= 1
    assert "flywheel_completion_log_queue_depth" in after


def test_metric_names_match_deploy_list() -> None:
    """The dashboard references deploy/metrics.txt; the code exports exactly those names."""
    from prometheus_client import REGISTRY

    from gateway.core import metrics

    listed = set((REPO / "deploy" / "metrics.txt").read_text().split())
    live = metrics.LiveCollector(lambda: metrics.LiveState(0, 0, {}))
    families = [*REGISTRY.collect(), *live.collect()]
    exported = {
        f.name + "_total" if f.type == "counter" else f.name
        for f in families
        if f.name.startswith("flywheel_")
    }
    assert exported == listed


async def test_feedback_metric(env: Env) -> None:
    before = sample(
        (await env.client.get("/metrics", headers=METRICS_AUTH)).text,
        "flywheel_feedback_total",
        tenant=env.tenant.id,
        kind="up",
    )
    key = {"Authorization": f"Bearer {env.tenant.key}"}
    r = await env.client.post(
        "/v1/chat/completions",
        json={"model": "support", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
        headers=key,
    )
    fb = await env.client.post(
        "/v1/feedback", json={"completion_id": r.json()["id"], "rating": "up"}, headers=key
    )
    assert fb.status_code == 200
    after = sample(
        (await env.client.get("/metrics", headers=METRICS_AUTH)).text,
        "flywheel_feedback_total",
        tenant=env.tenant.id,
        kind="up",
    )
    assert after - before == 1


async def test_forget_end_user(env: Env) -> None:
    key = {"Authorization": f"Bearer {env.tenant.key}"}
    body = {
        "model": "support",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 2,
        "user": "alice",
    }
    r = await env.client.post("/v1/chat/completions", json=body, headers=key)
    await env.client.post(
        "/v1/feedback",
        json={"completion_id": r.json()["id"], "rating": "down", "end_user": "alice"},
        headers=key,
    )
    gone = await env.client.post(
        "/admin/feedback/forget", json={"tenant": "metered", "end_user": "alice"}, headers=env.admin
    )
    assert gone.status_code == 200, gone.text
    assert gone.json()["feedback"] >= 1
    # The completion was still queued: dropped when it reached the database, or deleted.
    state = env.app.state.flywheel
    assert await state.completions.flush()
    async with state.db.session() as s:
        assert await s.get(Completion, r.json()["id"]) is None
    left = await env.client.get(f"/v1/feedback?completion_id={r.json()['id']}", headers=key)
    assert left.status_code == 404 or left.json()["data"] == []


async def test_limits_feedback_and_the_tenant_label_switch(
    demo_base: Path, demo_adapters: list[Path], tmp_path: Path
) -> None:
    """Rate-limit refusals and feedback kinds per tenant; FLYWHEEL_METRICS_TENANT_LABEL=false
    collapses the tenant label (cardinality) to "all"."""
    from gateway.core import metrics
    from gateway.core.tenants import update_tenant

    url = f"sqlite+aiosqlite:///{tmp_path / 'flywheel.db'}"
    settings = make_settings(tmp_path, url, demo_base, metrics_tenant_label=False)
    app = create_app(settings)
    try:
        async with running_app(app) as client:
            db = app.state.flywheel.db
            t = await seed_tenant(db, settings, "unlabelled", {"bot": demo_adapters[0]})
            async with db.transaction() as session:
                await update_tenant(session, t.name, rpm_limit=1)
            key = {"Authorization": f"Bearer {t.key}"}
            body = {
                "model": "bot",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
            }
            before = (await client.get("/metrics", headers=METRICS_AUTH)).text
            ok = await client.post("/v1/chat/completions", json=body, headers=key)
            limited = await client.post("/v1/chat/completions", json=body, headers=key)
            assert (ok.status_code, limited.status_code) == (200, 429)
            fb = {"completion_id": ok.json()["id"], "rating": "down", "edited_output": "Better."}
            assert (await client.post("/v1/feedback", json=fb, headers=key)).status_code == 200
            after = (await client.get("/metrics", headers=METRICS_AUTH)).text
    finally:
        metrics.configure(True)  # the process-wide default for the other tests

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("flywheel_rate_limited_total", tenant="all") == 1
    assert moved("flywheel_requests_total", tenant="all", status="rate_limited") == 1
    assert moved("flywheel_requests_total", tenant="all", adapter="bot@1", status="ok") == 1
    assert moved("flywheel_feedback_total", tenant="all") >= 1
    assert t.id not in after  # no tenant id in any label
