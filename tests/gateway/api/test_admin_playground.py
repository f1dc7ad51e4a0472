"""``POST /admin/tenants/{name}/playground-key``: the console playground's tenant key, on SQLite
and PostgreSQL.

The key is real: the OpenAI API answers it (streamed, pinned with ``name@N``), its completion's
browser feedback token works, ``DELETE /admin/keys/{id}`` ends it, and an expired one is refused
once past its ``expires_at`` (and revoked by the next issue).  Expiry is reached by moving the
key's ``created_at`` and ``expires_at`` back in the database rather than by waiting ten minutes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import select

from gateway.api.admin.serving import PLAYGROUND_KEY_PREFIX, PLAYGROUND_KEY_TTL_S
from gateway.app import create_app
from gateway.core.admin_tokens import local_admin_token
from gateway.core.db.models import ApiKey, Completion
from gateway.core.tenants import update_tenant
from gateway.core.time import as_utc
from tools.harness import SeededTenant, make_settings, running_app, seed_tenant

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
    settings = make_settings(tmp_path_factory.mktemp("playground"), fresh_database_url, demo_base)
    app = create_app(settings)
    async with running_app(app) as client:
        db = app.state.flywheel.db
        t = await seed_tenant(db, settings, "acme", {"support": demo_adapters[0]})
        await seed_tenant(db, settings, "off", {})
        async with db.transaction() as session:
            await update_tenant(session, "off", disabled=True)
        admin = {"Authorization": f"Bearer {local_admin_token(settings)}"}
        yield Env(app, client, t, admin)


async def issue(env: Env, tenant: str = "acme") -> httpx.Response:
    return await env.client.post(f"/admin/tenants/{tenant}/playground-key", headers=env.admin)


async def stream(env: Env, key: str, model: str) -> tuple[httpx.Response, str]:
    """A streamed chat as the tenant: the response (headers) and the text it streamed."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 4,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {key}"}
    text = ""
    async with env.client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        if r.status_code != 200:
            await r.aread()
            return r, ""
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for choice in json.loads(line[6:])["choices"]:
                    text += choice["delta"].get("content") or ""
    return r, text


async def test_a_playground_key_answers_as_the_tenant_and_its_feedback_token_works(
    env: Env,
) -> None:
    r = await issue(env)
    assert r.status_code == 201, r.text
    issued: dict[str, Any] = r.json()
    assert issued["tenant"] == "acme"
    assert issued["api_key"].startswith(PLAYGROUND_KEY_PREFIX)
    assert issued["prefix"] == issued["api_key"][:10]
    # Never one of the tenant's own keys: a new one, and only the new one is in the answer.
    assert issued["api_key"] != env.tenant.key and issued["key_id"] != env.tenant.key_id
    assert env.tenant.key not in r.text
    response, text = await stream(env, issued["api_key"], "support@1")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-flywheel-adapter-version"] == "support@1"
    assert text
    token = response.headers["x-flywheel-feedback-token"]
    audit = await env.client.get("/admin/audit", params={"limit": 20}, headers=env.admin)
    events = [e for e in audit.json() if e["action"] == "playground.key"]
    assert events and events[0]["target"] == issued["key_id"]
    assert events[0]["tenant_id"] == env.tenant.id and events[0]["detail"]["expires_at"]

    # Revoked by the console once the reply has streamed: the key stops working, the reply's
    # browser feedback token (scoped to that completion) keeps working.
    revoked = await env.client.delete(f"/admin/keys/{issued['key_id']}", headers=env.admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    again, _ = await stream(env, issued["api_key"], "support@1")
    assert again.status_code == 401
    assert await env.app.state.flywheel.completions.flush()
    keys = await env.client.get("/admin/tenants/acme/keys", headers=env.admin)
    listed = {k["id"]: k for k in keys.json()}
    assert listed[issued["key_id"]]["revoked_at"] and not listed[env.tenant.key_id]["revoked_at"]
    async with env.app.state.flywheel.db.session() as session:
        completion_id = await session.scalar(
            select(Completion.id).where(Completion.key_id == issued["key_id"])
        )
    assert completion_id
    fb = await env.client.post(
        "/v1/feedback",
        json={"completion_id": completion_id, "rating": "up"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert fb.status_code == 200, fb.text


async def test_an_expired_playground_key_stops_working_and_the_next_issue_revokes_it(
    env: Env,
) -> None:
    first = (await issue(env)).json()
    unexpired = (await issue(env)).json()
    async with env.app.state.flywheel.db.transaction() as session:
        row = await session.get(ApiKey, first["key_id"])
        assert row is not None and row.expires_at is not None
        lifetime = as_utc(row.expires_at) - as_utc(row.created_at)
        assert abs(lifetime.total_seconds() - PLAYGROUND_KEY_TTL_S) < 5
        back = timedelta(seconds=PLAYGROUND_KEY_TTL_S + 1)
        row.created_at = row.created_at - back
        row.expires_at = row.expires_at - back
    # Past its expiry it is refused at once, though nobody revoked it (no issue in between).
    refused, _ = await stream(env, first["api_key"], "support")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "revoked_api_key"
    assert "expired" in refused.json()["error"]["message"]
    assert (await stream(env, unexpired["api_key"], "support"))[0].status_code == 200
    keys = await env.client.get("/admin/tenants/acme/keys", headers=env.admin)
    listed = {k["id"]: k for k in keys.json()}
    assert listed[first["key_id"]]["expires_at"] and not listed[first["key_id"]]["revoked_at"]
    assert listed[env.tenant.key_id]["expires_at"] is None
    # The next issue marks it revoked too (the key list then says so); the unexpired one lives.
    second = (await issue(env)).json()
    assert second["revoked_expired"] == [first["key_id"]]
    assert (await stream(env, first["api_key"], "support"))[0].status_code == 401
    assert (await stream(env, second["api_key"], "support"))[0].status_code == 200
    assert (await stream(env, unexpired["api_key"], "support"))[0].status_code == 200
    # The tenant's own key is no playground key: it has no expiry and is never swept.
    assert (await stream(env, env.tenant.key, "support"))[0].status_code == 200


async def test_who_may_issue_one_and_for_whom(env: Env) -> None:
    assert (await issue(env, "nobody")).status_code == 404
    disabled = await issue(env, "off")
    assert disabled.status_code == 409 and "disabled" in disabled.json()["error"]["message"]
    bare = await env.client.post("/admin/tenants/acme/playground-key")
    assert bare.status_code == 401
    as_tenant = await env.client.post(
        "/admin/tenants/acme/playground-key",
        headers={"Authorization": f"Bearer {env.tenant.key}"},
    )
    assert as_tenant.status_code == 401
