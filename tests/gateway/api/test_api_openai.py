"""The OpenAI-compatible API in-process (httpx ASGITransport, lifespan running), on both DBs."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from gateway.app import create_app
from gateway.core.db.session import Database
from tools.harness import SeededTenant, make_settings, running_app, seed_tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Gateway:
    client: httpx.AsyncClient
    a: SeededTenant
    b: SeededTenant
    db: Database
    app: FastAPI


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gw(
    fresh_database_url: str,
    demo_base: Path,
    demo_adapters: list[Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Gateway]:
    settings = make_settings(
        tmp_path_factory.mktemp("gw"), fresh_database_url, demo_base, max_body_bytes=20_000
    )
    app = create_app(settings)
    async with running_app(app) as client:
        db = app.state.flywheel.db
        a = await seed_tenant(db, settings, "acme", {"support": demo_adapters[0]})
        b = await seed_tenant(
            db, settings, "globex", {"support": demo_adapters[1], "sales": demo_adapters[2]}
        )
        # a second version for acme's adapter, to pin
        from gateway.services.adapters import add_adapter

        async with db.transaction() as session:
            await add_adapter(
                session,
                settings,
                tenant_name="acme",
                name="support",
                path=demo_adapters[3],
                sign=True,
            )
        yield Gateway(client, a, b, db, app)


def auth(t: SeededTenant) -> dict[str, str]:
    return {"Authorization": f"Bearer {t.key}"}


CHAT = {
    "model": "support",
    "messages": [{"role": "user", "content": "hello there"}],
    "max_tokens": 8,
    "temperature": 0,
}


async def test_chat_completion(gw: Gateway) -> None:
    r = await gw.client.post("/v1/chat/completions", json=CHAT, headers=auth(gw.a))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == "support"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert body["usage"]["completion_tokens"] >= 1
    assert (
        body["usage"]["total_tokens"]
        == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    assert r.headers["x-flywheel-adapter-version"] == "support@1"
    assert r.headers["x-flywheel-completion-id"] == body["id"]
    assert r.headers["x-request-id"]


async def test_tenants_get_their_own_adapter(gw: Gateway) -> None:
    ra = await gw.client.post("/v1/chat/completions", json=CHAT, headers=auth(gw.a))
    rb = await gw.client.post("/v1/chat/completions", json=CHAT, headers=auth(gw.b))
    base = await gw.client.post(
        "/v1/chat/completions", json={**CHAT, "model": "demo-base"}, headers=auth(gw.a)
    )
    texts = {r.json()["choices"][0]["message"]["content"] for r in (ra, rb, base)}
    assert len(texts) == 3
    assert base.headers["x-flywheel-adapter-version"] == "base"


async def test_pinned_version(gw: Gateway) -> None:
    r1 = await gw.client.post(
        "/v1/chat/completions", json={**CHAT, "model": "support@1"}, headers=auth(gw.a)
    )
    r2 = await gw.client.post(
        "/v1/chat/completions", json={**CHAT, "model": "support@2"}, headers=auth(gw.a)
    )
    assert r1.headers["x-flywheel-adapter-version"] == "support@1"
    assert r2.headers["x-flywheel-adapter-version"] == "support@2"
    assert r2.json()["model"] == "support@2"
    missing = await gw.client.post(
        "/v1/chat/completions", json={**CHAT, "model": "support@9"}, headers=auth(gw.a)
    )
    assert missing.status_code == 404


async def test_text_completion(gw: Gateway) -> None:
    r = await gw.client.post(
        "/v1/completions",
        json={"model": "support", "prompt": "Once", "max_tokens": 5, "temperature": 0},
        headers=auth(gw.a),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert isinstance(body["choices"][0]["text"], str)


def sse_events(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


async def test_streaming_with_usage(gw: Gateway) -> None:
    req = {**CHAT, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 12}
    r = await gw.client.post("/v1/chat/completions", json=req, headers=auth(gw.a))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert (
        len({c["id"] for c in chunks}) == 1
        and chunks[0]["id"] == r.headers["x-flywheel-completion-id"]
    )
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    whole = await gw.client.post(
        "/v1/chat/completions", json={**CHAT, "max_tokens": 12}, headers=auth(gw.a)
    )
    assert streamed == whole.json()["choices"][0]["message"]["content"]


async def test_streaming_with_continuous_usage(gw: Gateway) -> None:
    """vLLM's ``continuous_usage_stats``: the running usage on every content chunk."""
    options = {"include_usage": True, "continuous_usage_stats": True}
    req = {**CHAT, "stream": True, "stream_options": options, "max_tokens": 12, "min_tokens": 12}
    r = await gw.client.post("/v1/chat/completions", json=req, headers=auth(gw.a))
    assert r.status_code == 200, r.text
    chunks = [json.loads(e) for e in sse_events(r.text)[:-1]]
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    counts = [c["usage"]["completion_tokens"] for c in content]
    assert len(counts) >= 2 and counts == sorted(counts) and counts[-1] <= 12
    assert all(c["usage"]["prompt_tokens"] > 0 for c in content)
    assert chunks[-1]["usage"]["completion_tokens"] == 12


async def test_streaming_without_usage(gw: Gateway) -> None:
    r = await gw.client.post(
        "/v1/completions",
        json={"model": "support", "prompt": "x", "stream": True, "max_tokens": 4},
        headers=auth(gw.a),
    )
    chunks = [json.loads(e) for e in sse_events(r.text)[:-1]]
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)


async def test_models_lists_only_own_adapters(gw: Gateway) -> None:
    r = await gw.client.get("/v1/models", headers=auth(gw.a))
    ids = [m["id"] for m in r.json()["data"]]
    assert ids == ["demo-base", "support"]
    rb = await gw.client.get("/v1/models", headers=auth(gw.b))
    assert sorted(m["id"] for m in rb.json()["data"]) == ["demo-base", "sales", "support"]


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Bearer fw-nope"}, "invalid_api_key"),
        ({"Authorization": "Basic abc"}, "missing_api_key"),
    ],
)
async def test_auth_errors(gw: Gateway, headers: dict[str, str], code: str) -> None:
    r = await gw.client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert r.status_code == 401
    err = r.json()["error"]
    assert err["type"] == "authentication_error" and err["code"] == code
    assert set(err) == {"message", "type", "param", "code"}


async def test_cross_tenant_is_not_found(gw: Gateway) -> None:
    """Every way of naming another tenant's adapter looks exactly like a nonexistent one."""
    async with gw.db.session() as session:
        from adapters.registry import get_adapter

        sales = await get_adapter(session, gw.b.id, "sales")
        version_id = sales.active_version_id
    unknown = await gw.client.post(
        "/v1/chat/completions", json={**CHAT, "model": "nope"}, headers=auth(gw.a)
    )
    assert unknown.status_code == 404
    for model in ("sales", "sales@1", f"fw-{version_id}", str(version_id), "globex/sales"):
        r = await gw.client.post(
            "/v1/chat/completions", json={**CHAT, "model": model}, headers=auth(gw.a)
        )
        assert r.status_code == 404, model
        assert r.json()["error"]["code"] == "model_not_found"
        assert r.json()["error"]["message"] == unknown.json()["error"]["message"].replace(
            "'nope'", repr(model)
        )
        text = await gw.client.post(
            "/v1/completions", json={"model": model, "prompt": "hi"}, headers=auth(gw.a)
        )
        assert text.status_code == 404 and text.json()["error"]["code"] == "model_not_found"
    # Pinning one's own adapter's version number cannot reach the other tenant's either.
    own = await gw.client.post(
        "/v1/chat/completions", json={**CHAT, "model": "support@1"}, headers=auth(gw.a)
    )
    assert own.status_code == 200
    assert own.headers["x-flywheel-adapter-version"] == "support@1"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "support"}, "messages"),
        ({**CHAT, "messages": []}, "messages"),
        ({**CHAT, "messages": "hi"}, "messages"),
        ({**CHAT, "max_tokens": "many"}, "max_tokens"),
        ({**CHAT, "max_tokens": 10**9}, "max_completion_tokens"),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
        ({**CHAT, "temperature": 7}, "temperature"),
        ({**CHAT, "seed": 2**64}, "seed"),
        ({**CHAT, "seed": -(2**63) - 1}, "seed"),
        ({**CHAT, "best_of": 3}, "best_of"),
        ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ([1, 2], None),
    ],
)
async def test_invalid_bodies_are_400(gw: Gateway, body: object, param: str | None) -> None:
    r = await gw.client.post("/v1/chat/completions", json=body, headers=auth(gw.a))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    if param:
        assert err["param"] == param


async def test_vanishing_temperature_is_greedy(gw: Gateway) -> None:
    # 1e-38 overflowed the logits to inf and NaN-poisoned the whole batch before.
    greedy = await gw.client.post("/v1/chat/completions", json=CHAT, headers=auth(gw.a))
    tiny = await gw.client.post(
        "/v1/chat/completions", json={**CHAT, "temperature": 1e-38}, headers=auth(gw.a)
    )
    assert tiny.status_code == 200, tiny.text
    text = tiny.json()["choices"][0]["message"]["content"]
    assert text == greedy.json()["choices"][0]["message"]["content"]


async def test_unexpected_error_is_a_500_with_request_id_and_cleans_up(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = gw.app.state.flywheel

    def broken(_: object) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(state.engine, "generate", broken)
    r = await gw.client.post(
        "/v1/chat/completions", json=CHAT, headers={**auth(gw.a), "x-request-id": "trace-42"}
    )
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "trace-42"
    assert r.json()["error"]["type"] == "server_error"
    assert "secret" not in r.text
    assert not state.completions._inflight  # the call was finished, not leaked


async def test_nul_characters_are_served_and_logged(gw: Gateway) -> None:
    """U+0000 from a client (or a model) reaches the log on PostgreSQL too, as U+FFFD."""
    from sqlalchemy import select

    from gateway.core.db.models import Completion, Feedback

    body = {**CHAT, "messages": [{"role": "user", "content": "a\u0000b"}], "user": "nul\u0000user"}
    r = await gw.client.post("/v1/chat/completions", json=body, headers=auth(gw.a))
    assert r.status_code == 200, r.text
    cid = r.json()["id"]
    fb = await gw.client.post(
        "/v1/feedback",
        json={"completion_id": cid, "rating": "down", "edited_output": "better\u0000answer"},
        headers=auth(gw.a),
    )
    assert fb.status_code == 200, fb.text
    state = gw.app.state.flywheel
    assert await state.completions.flush()
    async with gw.db.session() as session:
        row = await session.get(Completion, cid)
        assert row is not None and row.end_user is not None and "user" in row.end_user
        edited = await session.scalar(
            select(Feedback.edited_output).where(Feedback.completion_id == cid)
        )
        assert edited is not None and edited.startswith("better")


async def test_malformed_json_and_oversized(gw: Gateway) -> None:
    r = await gw.client.post(
        "/v1/chat/completions",
        content=b"{not json",
        headers={**auth(gw.a), "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 30_000}]}
    r = await gw.client.post("/v1/chat/completions", json=big, headers=auth(gw.a))
    assert r.status_code == 413


async def test_unknown_fields_ignored(gw: Gateway) -> None:
    r = await gw.client.post(
        "/v1/chat/completions",
        json={**CHAT, "frequency_penalty": 0, "vendor_x": {"a": 1}},
        headers=auth(gw.a),
    )
    assert r.status_code == 200


async def test_rate_limit(gw: Gateway) -> None:
    from gateway.core.tenants import create_key, create_tenant

    async with gw.db.transaction() as session:
        tenant = await create_tenant(session, "limited", rpm_limit=2)
        _, key = await create_key(session, tenant)
    h = {"Authorization": f"Bearer {key}"}
    body = {**CHAT, "model": "demo-base"}
    codes = [
        (await gw.client.post("/v1/chat/completions", json=body, headers=h)).status_code
        for _ in range(2)
    ]
    assert codes == [200, 200]
    r = await gw.client.post("/v1/chat/completions", json=body, headers=h)
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["type"] == "rate_limit_error"


async def test_health(gw: Gateway) -> None:
    assert (await gw.client.get("/healthz")).json() == {"status": "ok"}
    r = await gw.client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"]["database"] == "ok"


async def test_unknown_route_is_openai_shaped(gw: Gateway) -> None:
    r = await gw.client.get("/v1/nothing", headers=auth(gw.a))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_rate_limit_headers_as_openai_sends_them(gw: Gateway) -> None:
    r = await gw.client.post(
        "/v1/chat/completions", json={**CHAT, "max_tokens": 4}, headers=auth(gw.b)
    )
    assert r.status_code == 200
    h = r.headers
    rpm, tpm = int(h["x-ratelimit-limit-requests"]), int(h["x-ratelimit-limit-tokens"])
    assert rpm > 0 and tpm > 0
    assert 0 <= int(h["x-ratelimit-remaining-requests"]) < rpm
    assert 0 <= int(h["x-ratelimit-remaining-tokens"]) < tpm
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        assert re.fullmatch(r"\d+ms|\d+s|\d+m\d+s", h[name]), h[name]
    again = await gw.client.post(
        "/v1/chat/completions", json={**CHAT, "max_tokens": 4}, headers=auth(gw.b)
    )
    assert int(again.headers["x-ratelimit-remaining-requests"]) <= int(
        h["x-ratelimit-remaining-requests"]
    )
