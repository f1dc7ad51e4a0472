"""Signing before load, the gate's effect on promotion, and hot-swaps under load."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select

from gateway.app import create_app
from gateway.core.admin_tokens import local_admin_token
from gateway.core.config import Settings
from gateway.core.db.models import AuditEvent, RouteEvent
from gateway.core.db.session import Database
from tools.harness import SeededTenant, make_settings, running_app, seed_tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")
PROMPT = {
    "messages": [{"role": "user", "content": "which plan?"}],
    "max_tokens": 6,
    "temperature": 0,
}


@dataclass
class Env:
    client: httpx.AsyncClient
    settings: Settings
    db: Database
    tenant: SeededTenant
    admin: dict[str, str]
    app: object


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(
    fresh_database_url: str,
    demo_base: Path,
    demo_adapters: list[Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Env]:
    settings = make_settings(tmp_path_factory.mktemp("swap"), fresh_database_url, demo_base)
    app = create_app(settings)
    async with running_app(app) as client:
        db = app.state.flywheel.db
        t = await seed_tenant(db, settings, "swapco", {"bot": demo_adapters[0]})
        from gateway.services.adapters import add_adapter

        async with db.transaction() as session:
            for path in demo_adapters[1:3]:  # versions 2 and 3, signed
                await add_adapter(
                    session, settings, tenant_name="swapco", name="bot", path=path, sign=True
                )
        token = local_admin_token(settings)
        assert token
        yield Env(client, settings, db, t, {"Authorization": f"Bearer {token}"}, app)


async def ask(env: Env, stream: bool = False) -> tuple[str, str]:
    body = {"model": "bot", **PROMPT, "stream": stream}
    r = await env.client.post(
        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {env.tenant.key}"}
    )
    assert r.status_code == 200, r.text
    version = r.headers["x-flywheel-adapter-version"]
    if not stream:
        return version, r.json()["choices"][0]["message"]["content"]
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", r.text
    chunks = [json.loads(e) for e in events[:-1]]
    return version, "".join(
        c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]
    )


async def promote(env: Env, version: int) -> httpx.Response:
    return await env.client.post(
        "/admin/adapters/swapco/bot/promote",
        json={"version": version, "reason": "test"},
        headers=env.admin,
    )


async def route_events(env: Env) -> list[RouteEvent]:
    async with env.db.session() as s:
        return list(
            await s.scalars(
                select(RouteEvent)
                .where(RouteEvent.tenant_id == env.tenant.id)
                .order_by(RouteEvent.id)
            )
        )


def assert_no_lost_update(events: list[RouteEvent]) -> None:
    """Each swap starts from where the previous one ended."""
    for prev, nxt in itertools.pairwise(events):
        assert nxt.from_version_id == prev.to_version_id


async def test_promote_and_rollback_recorded(env: Env) -> None:
    assert (await ask(env))[0] == "bot@1"
    r = await promote(env, 2)
    assert r.status_code == 200, r.text
    assert r.json()["from_version"] == 1 and r.json()["to_version"] == 2
    assert (await ask(env))[0] == "bot@2"
    r = await env.client.post(
        "/admin/adapters/swapco/bot/rollback", json={"reason": "bad"}, headers=env.admin
    )
    assert r.status_code == 200 and r.json()["to_version"] == 1
    assert (await ask(env))[0] == "bot@1"
    events = await route_events(env)
    async with env.db.session() as s:
        assert [e.action for e in events] == ["initial", "promote", "rollback"]
        assert all(e.actor.startswith("admin:") for e in events[1:])
        actions = set(
            await s.scalars(select(AuditEvent.action).where(AuditEvent.tenant_id == env.tenant.id))
        )
        assert {"adapter.promote", "adapter.rollback"} <= actions
        where = list(
            await s.scalars(
                select(AuditEvent.remote_addr).where(
                    AuditEvent.tenant_id == env.tenant.id,
                    AuditEvent.action.in_(["adapter.promote", "adapter.rollback"]),
                )
            )
        )
        assert where and all(where)  # "from where": the admin client's address


async def test_rejected_and_candidate_never_served(env: Env) -> None:
    from adapters.registry import get_adapter, get_version

    async with env.db.transaction() as s:
        a = await get_adapter(s, env.tenant.id, "bot")
        v3 = await get_version(s, a, 3)
        v3.state = "rejected"
    r = await promote(env, 3)
    assert r.status_code == 409 and "rejected" in r.json()["error"]["message"]
    pinned = await env.client.post(
        "/v1/chat/completions",
        json={"model": "bot@3", **PROMPT},
        headers={"Authorization": f"Bearer {env.tenant.key}"},
    )
    assert pinned.status_code == 404
    async with env.db.transaction() as s:
        a = await get_adapter(s, env.tenant.id, "bot")
        (await get_version(s, a, 3)).state = "ready"


async def _tampered_version(env: Env, src: Path, tmp: Path, how: str) -> int:
    """Register a signed copy of ``src``, then break its signature in the way ``how`` says."""
    from adapters.signing import generate_keypair, sign_adapter, signature_path_for
    from gateway.services.adapters import add_adapter

    copy = tmp / f"copy-{how}"
    shutil.copytree(src, copy)
    (copy / "README.md").write_text(f"variant {how}\n")  # distinct digest, same weights
    # a different weight byte so the content address is new
    async with env.db.transaction() as s:
        added = await add_adapter(
            s, env.settings, tenant_name="swapco", name="bot", path=copy, sign=True
        )
    stored = Path(added.version.path)
    sig = signature_path_for(stored)
    if how == "flipped":
        weights = stored / "adapter_model.safetensors"
        weights.chmod(0o644)
        data = bytearray(weights.read_bytes())
        data[-10] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif how == "wrong-key":
        other_private, _ = generate_keypair(tmp / "other-keys")
        sign_adapter(stored, other_private, sig)
    elif how == "missing":
        sig.unlink()
    return added.version.version


@pytest.mark.parametrize("how", ["flipped", "wrong-key", "missing"])
async def test_unverified_adapter_is_refused_and_old_keeps_serving(
    env: Env, demo_adapters: list[Path], tmp_path: Path, how: str
) -> None:
    before = await ask(env)
    version = await _tampered_version(env, demo_adapters[4], tmp_path, how)
    r = await promote(env, version)
    assert r.status_code == 500 and r.json()["error"]["code"] == "adapter_load_refused", r.text
    assert await ask(env) == before
    # pinning the bad version is refused at load as well
    pinned = await env.client.post(
        "/v1/chat/completions",
        json={"model": f"bot@{version}", **PROMPT},
        headers={"Authorization": f"Bearer {env.tenant.key}"},
    )
    assert pinned.status_code == 500 and pinned.json()["error"]["code"] == "adapter_load_refused"
    async with env.db.session() as s:
        refused = list(
            await s.scalars(select(AuditEvent).where(AuditEvent.action == "adapter.load_refused"))
        )
    assert refused


async def test_failed_probe_leaves_old_version(env: Env) -> None:
    before = await ask(env)
    promoter = env.app.state.flywheel.promoter  # type: ignore[attr-defined]
    promoter.probe_timeout_s = 1e-9  # the probe cannot finish in time
    try:
        r = await promote(env, 3 if before[0] != "bot@3" else 2)
        assert r.status_code == 500
    finally:
        promoter.probe_timeout_s = 60.0
    assert await ask(env) == before


async def test_concurrent_promotes_are_serialized(env: Env) -> None:
    r2, r3 = await asyncio.gather(promote(env, 2), promote(env, 3))
    assert r2.status_code == 200 and r3.status_code == 200
    assert_no_lost_update(await route_events(env))


async def test_promoters_of_separate_processes_are_serialized_by_the_database(env: Env) -> None:
    """Promoters with their own connection pools and locks (as in separate gateway processes):
    only the adapter row lock (PostgreSQL) or the write lock (SQLite) orders their flips."""
    from adapters.promotion import Promoter

    state = env.app.state.flywheel  # type: ignore[attr-defined]
    dbs = [Database(env.settings.database_url) for _ in range(2)]
    try:
        promoters = [Promoter(db, state.engine) for db in dbs]
        for _ in range(3):
            await asyncio.gather(
                promoters[0].promote("swapco", "bot", 2, actor="p0"),
                promoters[1].promote("swapco", "bot", 3, actor="p1"),
            )
        for p in promoters:
            await p.wait_drained()
    finally:
        for db in dbs:
            await db.close()
    assert_no_lost_update(await route_events(env))


async def test_swap_under_load_no_failures_one_version_per_response(env: Env) -> None:
    expected: dict[str, str] = {}
    for v in (1, 2):
        assert (await promote(env, v)).status_code == 200
        label, text = await ask(env)
        expected[label] = text
    assert expected["bot@1"] != expected["bot@2"]
    stop = asyncio.Event()
    results: list[tuple[str, str]] = []
    failures: list[str] = []

    async def client_loop(stream: bool) -> None:
        while not stop.is_set():
            try:
                results.append(await ask(env, stream))
            except AssertionError as exc:
                failures.append(str(exc))

    clients = [asyncio.create_task(client_loop(i % 2 == 0)) for i in range(8)]
    for cycle in range(20):
        r = (
            await promote(env, 1 if cycle % 2 else 2)
            if cycle % 4
            else await env.client.post(
                "/admin/adapters/swapco/bot/rollback", json={}, headers=env.admin
            )
        )
        assert r.status_code == 200, r.text
    stop.set()
    await asyncio.gather(*clients)
    assert failures == []
    assert len(results) > 20
    for label, text in results:
        assert expected[label] == text, (label, text)


async def test_another_gateway_serves_the_new_route_at_once(env: Env, tmp_path: Path) -> None:
    """A second replica on the same database serves a promotion made on the first from its
    next request: routes are read per request (FLYWHEEL_ROUTE_CACHE_TTL_S=0), so no restart
    and no notification is needed."""
    other = make_settings(
        tmp_path,
        env.settings.database_url,
        Path(env.settings.base_model),
        signing_public_key=env.settings.data_dir / "signing" / "signing.pub",
    )
    async with running_app(create_app(other)) as replica:

        async def ask_replica() -> str:
            body = {"model": "bot", **PROMPT}
            r = await replica.post(
                "/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {env.tenant.key}"},
            )
            assert r.status_code == 200, r.text
            return r.headers["x-flywheel-adapter-version"]

        current = await ask_replica()
        target = 2 if current != "bot@2" else 1
        assert (await promote(env, target)).status_code == 200
        assert await ask_replica() == f"bot@{target}"
        assert (
            await env.client.post("/admin/adapters/swapco/bot/rollback", json={}, headers=env.admin)
        ).status_code == 200
        assert await ask_replica() == current


async def test_a_dora_adapter_is_refused_for_an_engine_that_cannot_serve_it(
    env: Env, demo_adapters: list[Path], tmp_path: Path
) -> None:
    """Registration asks the engine's capabilities (vLLM: no DoRA), not settings.engine."""
    from gateway.core.errors import AdapterInvalid
    from gateway.services.adapters import add_adapter

    dora = tmp_path / "dora"
    shutil.copytree(demo_adapters[0], dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    on_vllm = env.settings.model_copy(update={"engine": "vllm"})
    with pytest.raises(AdapterInvalid, match="DoRA"):
        async with env.db.transaction() as s:
            await add_adapter(s, on_vllm, tenant_name="swapco", name="dora-bot", path=dora)
