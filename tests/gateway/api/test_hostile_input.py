"""What a security review's fuzzing found answering 500, and refusals that cost nothing.

Each case here answered 500 (or stored something every later read failed on) before it was
fixed; now each is a 400 that names what is wrong, and refused requests count against the
sender's own limits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from feedback.spool import Record
from gateway.app import create_app
from gateway.core.admin_tokens import local_admin_token
from tools.harness import SeededTenant, make_settings, running_app, seed_tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Env:
    client: httpx.AsyncClient
    tenant: SeededTenant
    other: SeededTenant
    key: dict[str, str]
    admin: dict[str, str]
    state: Any


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(
    fresh_database_url: str, demo_base: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Env]:
    settings = make_settings(
        tmp_path_factory.mktemp("hostile"), fresh_database_url, demo_base, feedback_rpm_limit=30
    )
    app = create_app(settings)
    async with running_app(app) as client:
        db = app.state.flywheel.db
        tenant = await seed_tenant(db, settings, "target", {})
        other = await seed_tenant(db, settings, "bystander", {})
        yield Env(
            client,
            tenant,
            other,
            {"Authorization": f"Bearer {tenant.key}"},
            {"Authorization": f"Bearer {local_admin_token(settings)}"},
            app.state.flywheel,
        )


CHAT = "/v1/chat/completions"


def chat(content: str) -> bytes:
    # Built by hand: json.dumps would escape what the test needs to send raw.
    return (
        b'{"model":"demo-base","max_tokens":2,"messages":[{"role":"user","content":"'
        + content.encode()
        + b'"}]}'
    )


async def post_raw(env: Env, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await env.client.post(
        path, content=body, headers={**headers, "content-type": "application/json"}
    )


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (b'{"model":"demo-base","messages":' + b"[" * 1000 + b"]" * 1000 + b"}", "nested"),
        (b'{"model":"demo-base","messages":' + b"[" * 70 + b"]" * 70 + b"}", "nested"),
        (chat("\\ud800"), "surrogate"),
        (chat("a\\udfffb"), "surrogate"),
        (b'{"model":"demo-base","temperature":NaN,"messages":[]}', "NaN"),
        (b'{"model":"demo-base","temperature":Infinity,"messages":[]}', "Infinity"),
    ],
)
async def test_bodies_that_answered_500_are_400(env: Env, body: bytes, what: str) -> None:
    r = await post_raw(env, CHAT, body, env.key)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_json"
    assert what in r.json()["error"]["message"] or what == "surrogate"


async def test_a_surrogate_pair_is_text(env: Env) -> None:
    r = await post_raw(env, CHAT, chat("\\ud83d\\ude00"), env.key)
    assert r.status_code == 200, r.text


async def test_feedback_metadata_cannot_hold_nan(env: Env) -> None:
    made = await env.client.post(
        CHAT,
        json={
            "model": "demo-base",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1,
        },
        headers=env.key,
    )
    cid = made.json()["id"]
    body = b'{"completion_id":"' + cid.encode() + b'","rating":"up","metadata":{"x":NaN}}'
    r = await post_raw(env, "/v1/feedback", body, env.key)
    assert r.status_code == 400, r.text
    # ...so every later read of this completion's feedback still works.
    listed = await env.client.get("/v1/feedback", params={"completion_id": cid}, headers=env.key)
    assert listed.status_code == 200, listed.text


@pytest.mark.parametrize(
    "field",
    [
        "store_content",
        "cors_origins",
        "auto_promote",
        "retrain_enabled",
        "retrain_min_feedback",
        "retrain_max_age_hours",
        "gate_thresholds",
        "retrain_recipe",
        "disabled",
    ],
)
async def test_admin_patch_with_null_names_the_field(env: Env, field: str) -> None:
    r = await env.client.patch(
        f"/admin/tenants/{env.tenant.name}", json={field: None}, headers=env.admin
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field


async def test_admin_patch_null_limit_resets_to_default(env: Env) -> None:
    r = await env.client.patch(
        f"/admin/tenants/{env.other.name}", json={"rpm_limit": None}, headers=env.admin
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path", ["/admin/rounds", "/admin/gate-reports", "/admin/audit"])
@pytest.mark.parametrize("limit", ["-1", "0", "99999999999999999999999", "1e3"])
async def test_admin_page_sizes_are_bounded(env: Env, path: str, limit: str) -> None:
    r = await env.client.get(path, params={"limit": limit}, headers=env.admin)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "limit"


async def test_admin_bodies_are_checked_like_tenant_bodies(env: Env) -> None:
    body = b'{"gate_thresholds":{"min_win_rate":NaN}}'
    r = await post_raw(env, f"/admin/tenants/{env.tenant.name}", body, env.admin)
    assert r.status_code in (400, 405), r.text  # PATCH is the route; POST is not allowed
    r = await env.client.request(
        "PATCH",
        f"/admin/tenants/{env.tenant.name}",
        content=body,
        headers={**env.admin, "content-type": "application/json"},
    )
    assert r.status_code == 400, r.text
    deep = b'{"retrain_recipe":' + b'{"a":' * 200 + b"1" + b"}" * 200 + b"}"
    r = await env.client.request(
        "PATCH",
        f"/admin/tenants/{env.tenant.name}",
        content=deep,
        headers={**env.admin, "content-type": "application/json"},
    )
    assert r.status_code == 400, r.text


async def test_feedback_is_rate_limited_and_refusals_count(env: Env) -> None:
    """30 feedback posts per minute (this gateway's setting): refused ones (404: no such
    completion) count too, and the 31st is a 429 whatever it carries."""
    statuses = []
    for i in range(31):
        r = await env.client.post(
            "/v1/feedback",
            json={"completion_id": f"chatcmpl-missing-{i}", "rating": "up"},
            headers={"Authorization": f"Bearer {env.other.key}"},
        )
        statuses.append(r.status_code)
    assert statuses[:30] == [404] * 30 and statuses[30] == 429, statuses


async def test_refused_completions_count_against_the_senders_limit(env: Env) -> None:
    from gateway.core.tenants import update_tenant

    async with env.state.db.transaction() as session:
        await update_tenant(session, env.other.name, rpm_limit=5)
    auth = {"Authorization": f"Bearer {env.other.key}"}
    bad = [
        {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
        {"model": "demo-base", "messages": [{"role": "user", "content": "hi"}], "n": "many"},
        {"model": "demo-base", "messages": [{"role": "user", "content": "x" * 1_000}], "top_k": -5},
    ]
    statuses = [(await env.client.post(CHAT, json=b, headers=auth)).status_code for b in bad]
    assert statuses == [404, 400, 400], statuses
    ok = {"model": "demo-base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    statuses = [(await env.client.post(CHAT, json=ok, headers=auth)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429], statuses  # 5 per minute: three were spent on refusals


async def test_data_files_are_readable_by_their_owner_only(env: Env) -> None:
    """The SQLite file (and its WAL) and the spool hold prompts and answers: 0600 / 0700."""
    import stat

    await env.client.post(
        CHAT,
        json={
            "model": "demo-base",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1,
        },
        headers=env.key,
    )
    spool = env.state.completions._spool
    spool.reject(Record("completion", {"id": "x", "tenant_id": "t"}), "test")
    spool.append([("feedback", {"id": "y", "tenant_id": "t"})])
    paths = [spool.directory, *spool.directory.iterdir()]
    url = env.state.db.url
    if url.startswith("sqlite"):
        db_file = Path(url.split(":///", 1)[1])
        paths += [p for p in db_file.parent.iterdir() if p.name.startswith(db_file.name)]
    assert len(paths) >= 4
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
    for segment in spool.seal():  # what this test spooled must not replay into the database
        spool.remove(spool.read(segment))
