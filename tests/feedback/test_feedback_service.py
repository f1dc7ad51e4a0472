"""Feedback: service functions, tokens, and /v1/feedback over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import func, select

from feedback import tokens
from feedback.log import CompletionLog
from feedback.rows import write_records
from feedback.service import FeedbackInput, list_feedback, record_feedback
from feedback.spool import Record
from gateway.app import create_app
from gateway.core.db.models import Feedback, Tenant
from gateway.core.db.session import Database
from gateway.core.errors import AuthenticationError, Conflict, InvalidRequest, NotFound
from gateway.core.tenants import update_tenant
from tests.feedback.test_feedback_log import completion_row, make_log, new_tenant
from tools.harness import SeededTenant, make_settings, running_app, seed_tenant

SECRET = "test-secret"


@pytest.fixture
async def clog(db: Database, tmp_path: Path) -> AsyncIterator[CompletionLog]:
    log = make_log(db, tmp_path / "spool")
    await log.start()
    yield log
    await log.stop()


async def stored_completion(log: CompletionLog, tenant: Tenant, **kw: Any) -> dict[str, Any]:
    row = completion_row(tenant.id, **kw)
    log.submit(row)
    assert await log.flush(timeout=30)
    return row


async def feedback_rows(db: Database, tenant_id: str, completion_id: str) -> list[Feedback]:
    async with db.session() as session:
        return list(
            await session.scalars(
                select(Feedback).where(
                    Feedback.tenant_id == tenant_id, Feedback.completion_id == completion_id
                )
            )
        )


# --- service level ----------------------------------------------------------------------------


async def test_same_id_three_times_is_one_row_and_an_update_changes_it(
    db: Database, clog: CompletionLog
) -> None:
    tenant = await new_tenant(db)
    row = await stored_completion(clog, tenant)
    item = FeedbackInput(completion_id=row["id"], rating="down", comment="meh", id="fb-retry-1")
    for _ in range(3):
        (stored,) = await record_feedback(db, clog, tenant.id, [item])
        assert stored.status == "stored"
    first_created = stored.created_at
    update = FeedbackInput(completion_id=row["id"], rating="up", id="fb-retry-1")
    (stored,) = await record_feedback(db, clog, tenant.id, [update])
    rows = await feedback_rows(db, tenant.id, row["id"])
    assert len(rows) == 1
    assert rows[0].rating == "up" and rows[0].comment is None  # the item is replaced whole
    assert stored.created_at == first_created and stored.updated_at >= first_created


async def test_edit_stores_text_and_unified_diff(db: Database, clog: CompletionLog) -> None:
    tenant = await new_tenant(db)
    row = await stored_completion(clog, tenant, response_text="Open settings.\nPress reset.")
    edited = "Open settings.\nChoose security, then press reset."
    (stored,) = await record_feedback(
        db, clog, tenant.id, [FeedbackInput(completion_id=row["id"], edited_output=edited)]
    )
    assert stored.edited_output == edited
    assert stored.diff is not None
    assert "-Press reset." in stored.diff
    assert "+Choose security, then press reset." in stored.diff


async def test_feedback_while_streaming_or_queued_is_accepted(db: Database, tmp_path: Path) -> None:
    tenant = await new_tenant(db)
    log = make_log(db, tmp_path / "spool", flush_interval_s=3600, batch_size=10_000)
    await log.start()
    try:
        streaming = completion_row(tenant.id)
        log.begin(streaming["id"], tenant.id)  # generation under way, no row yet
        (fb1,) = await record_feedback(
            db, log, tenant.id, [FeedbackInput(completion_id=streaming["id"], edited_output="x")]
        )
        assert fb1.status == "stored" and fb1.diff is None  # text unknown yet: diffed at export
        queued = completion_row(tenant.id, response_text="queued answer")
        log.submit(queued)  # in the write queue, not in the database
        (fb2,) = await record_feedback(
            db,
            log,
            tenant.id,
            [FeedbackInput(completion_id=queued["id"], edited_output="better answer")],
        )
        assert fb2.diff is not None and "-queued answer" in fb2.diff
    finally:
        await log.stop()


async def test_other_tenants_completion_is_404_like_an_unknown_one(
    db: Database, clog: CompletionLog
) -> None:
    owner, other = await new_tenant(db), await new_tenant(db)
    row = await stored_completion(clog, owner)
    with pytest.raises(NotFound) as cross:
        await record_feedback(db, clog, other.id, [FeedbackInput(row["id"], rating="up")])
    with pytest.raises(NotFound) as unknown:
        await record_feedback(db, clog, other.id, [FeedbackInput("chatcmpl-nope", rating="up")])
    assert cross.value.message.replace(row["id"], "X") == unknown.value.message.replace(
        "chatcmpl-nope", "X"
    )
    with pytest.raises(NotFound):
        await list_feedback(db, clog, other.id, row["id"])
    assert await feedback_rows(db, other.id, row["id"]) == []


async def test_token_scope_allows_one_completion_only(db: Database, clog: CompletionLog) -> None:
    tenant = await new_tenant(db)
    mine, sibling = await stored_completion(clog, tenant), await stored_completion(clog, tenant)
    ok = await record_feedback(
        db,
        clog,
        tenant.id,
        [FeedbackInput(mine["id"], rating="up")],
        scope_completion_id=mine["id"],
    )
    assert ok[0].status == "stored"
    with pytest.raises(NotFound):
        await record_feedback(
            db,
            clog,
            tenant.id,
            [FeedbackInput(sibling["id"], rating="up")],
            scope_completion_id=mine["id"],
        )


async def test_an_id_cannot_be_moved_to_another_completion(
    db: Database, clog: CompletionLog
) -> None:
    tenant = await new_tenant(db)
    a, b = await stored_completion(clog, tenant), await stored_completion(clog, tenant)
    await record_feedback(db, clog, tenant.id, [FeedbackInput(a["id"], rating="up", id="fb-x")])
    with pytest.raises(Conflict):
        await record_feedback(
            db, clog, tenant.id, [FeedbackInput(b["id"], rating="down", id="fb-x")]
        )
    (kept,) = await feedback_rows(db, tenant.id, a["id"])
    assert kept.rating == "up"


async def test_validation(db: Database, clog: CompletionLog) -> None:
    tenant = await new_tenant(db)
    row = await stored_completion(clog, tenant)
    with pytest.raises(InvalidRequest):
        await record_feedback(db, clog, tenant.id, [FeedbackInput(row["id"])])
    with pytest.raises(InvalidRequest):
        await record_feedback(db, clog, tenant.id, [FeedbackInput(row["id"], rating="meh")])  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        await record_feedback(db, clog, tenant.id, [])
    # An edit or a comment alone is enough.
    await record_feedback(db, clog, tenant.id, [FeedbackInput(row["id"], comment="hm")])


def test_tokens_round_trip_and_reject_tampering() -> None:
    token = tokens.issue("chatcmpl-1", "ten_1", SECRET, 60)
    assert token.startswith("fbt.")
    assert tokens.verify(token, SECRET, 60) == ("chatcmpl-1", "ten_1")
    with pytest.raises(AuthenticationError):
        tokens.verify(token, "another-secret", 60)
    with pytest.raises(AuthenticationError):
        tokens.verify(token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), SECRET, 60)
    with pytest.raises(AuthenticationError):
        tokens.verify("fw-not-a-feedback-token", SECRET, 60)


def test_lowering_the_ttl_caps_tokens_already_issued(monkeypatch: pytest.MonkeyPatch) -> None:
    token = tokens.issue("chatcmpl-1", "ten_1", SECRET, 3600)
    later = time.time() + 120
    monkeypatch.setattr(time, "time", lambda: later)
    assert tokens.verify(token, SECRET, 3600) == ("chatcmpl-1", "ten_1")
    with pytest.raises(AuthenticationError) as err:
        tokens.verify(token, SECRET, 60)
    assert err.value.code == "expired_feedback_token"


def test_expired_token_is_401(monkeypatch: pytest.MonkeyPatch) -> None:
    token = tokens.issue("chatcmpl-1", "ten_1", SECRET, 60)
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(AuthenticationError) as err:
        tokens.verify(token, SECRET, 60)
    assert err.value.status_code == 401 and err.value.code == "expired_feedback_token"


# --- HTTP -------------------------------------------------------------------------------------

ORIGIN = "https://shop.example"
OTHER_ORIGIN = "https://elsewhere.example"


@dataclass
class Gateway:
    client: httpx.AsyncClient
    a: SeededTenant
    b: SeededTenant
    db: Database
    log: CompletionLog
    secret: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gw(
    fresh_database_url: str, demo_base: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    # A long flush interval keeps completions in the write queue, as under load.
    settings = make_settings(
        tmp_path_factory.mktemp("fbgw"), fresh_database_url, demo_base, log_flush_interval_s=30.0
    )
    app = create_app(settings)
    async with running_app(app) as client:
        state = app.state.flywheel
        a = await seed_tenant(state.db, settings, "fb-acme", {})
        b = await seed_tenant(state.db, settings, "fb-globex", {})
        async with state.db.transaction() as session:
            await update_tenant(session, "fb-acme", cors_origins=[ORIGIN])
            await update_tenant(session, "fb-globex", cors_origins=[OTHER_ORIGIN])
        yield Gateway(
            client,
            a,
            b,
            state.db,
            state.completions,
            settings.feedback_token_secret.get_secret_value(),
        )


def key(t: SeededTenant) -> dict[str, str]:
    return {"Authorization": f"Bearer {t.key}"}


async def chat(gw: Gateway, tenant: SeededTenant) -> httpx.Response:
    body = {
        "model": "demo-base",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 6,
        "temperature": 0,
    }
    r = await gw.client.post("/v1/chat/completions", json=body, headers=key(tenant))
    assert r.status_code == 200, r.text
    return r


async def test_http_feedback_on_a_queued_completion_with_key(gw: Gateway) -> None:
    r = await chat(gw, gw.a)
    cid = r.json()["id"]
    assert gw.log.is_pending(cid, gw.a.id)  # still in the write queue
    text = r.json()["choices"][0]["message"]["content"]
    fb = await gw.client.post(
        "/v1/feedback",
        json={"completion_id": cid, "rating": "down", "edited_output": text + " Thanks!"},
        headers=key(gw.a),
    )
    assert fb.status_code == 200, fb.text
    body = fb.json()
    assert body["object"] == "feedback" and body["status"] == "stored"
    assert body["diff"] and "+" in body["diff"]
    got = await gw.client.get("/v1/feedback", params={"completion_id": cid}, headers=key(gw.a))
    assert got.status_code == 200
    assert [f["id"] for f in got.json()["data"]] == [body["id"]]


async def test_http_idempotency_key_and_batch(gw: Gateway) -> None:
    cid = (await chat(gw, gw.a)).json()["id"]
    headers = {**key(gw.a), "Idempotency-Key": "retry-me"}
    for _ in range(3):
        r = await gw.client.post(
            "/v1/feedback", json={"completion_id": cid, "rating": "up"}, headers=headers
        )
        assert r.status_code == 200 and r.json()["id"] == "retry-me"
    batch = {
        "feedback": [
            {"completion_id": cid, "comment": "first", "id": "b1"},
            {"completion_id": cid, "rating": "down", "id": "b2"},
        ]
    }
    r = await gw.client.post("/v1/feedback", json=batch, headers=key(gw.a))
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "list" and [f["id"] for f in r.json()["data"]] == ["b1", "b2"]
    got = await gw.client.get("/v1/feedback", params={"completion_id": cid}, headers=key(gw.a))
    assert sorted(f["id"] for f in got.json()["data"]) == ["b1", "b2", "retry-me"]


async def test_http_errors_are_openai_envelopes(gw: Gateway) -> None:
    cid = (await chat(gw, gw.a)).json()["id"]
    r = await gw.client.post(
        "/v1/feedback", json={"completion_id": cid, "rating": "sideways"}, headers=key(gw.a)
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "rating"
    r = await gw.client.post("/v1/feedback", json={"completion_id": cid}, headers=key(gw.a))
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = await gw.client.post("/v1/feedback", json={"completion_id": cid, "rating": "up"})
    assert r.status_code == 401


async def test_http_cross_tenant_and_token_scope(gw: Gateway) -> None:
    ra, ra2 = await chat(gw, gw.a), await chat(gw, gw.a)
    cid, cid2 = ra.json()["id"], ra2.json()["id"]
    token = ra.headers["x-flywheel-feedback-token"]
    # Tenant b's key on a's completion, and an unknown id: the same 404.
    cross = await gw.client.post(
        "/v1/feedback", json={"completion_id": cid, "rating": "up"}, headers=key(gw.b)
    )
    unknown = await gw.client.post(
        "/v1/feedback", json={"completion_id": "chatcmpl-x", "rating": "up"}, headers=key(gw.b)
    )
    assert cross.status_code == unknown.status_code == 404
    assert cross.json()["error"]["message"].replace(cid, "?") == unknown.json()["error"][
        "message"
    ].replace("chatcmpl-x", "?")
    # The token works for its completion only.
    bearer = {"Authorization": f"Bearer {token}"}
    ok = await gw.client.post(
        "/v1/feedback", json={"completion_id": cid, "rating": "up"}, headers=bearer
    )
    assert ok.status_code == 200 and ok.json()["source"] == "browser"
    other = await gw.client.post(
        "/v1/feedback", json={"completion_id": cid2, "rating": "up"}, headers=bearer
    )
    assert other.status_code == 404
    assert (
        await gw.client.get("/v1/feedback", params={"completion_id": cid2}, headers=bearer)
    ).status_code == 404
    # b cannot read a's feedback either.
    got = await gw.client.get("/v1/feedback", params={"completion_id": cid}, headers=key(gw.b))
    assert got.status_code == 404


async def test_http_expired_token_is_401(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    cid = (await chat(gw, gw.a)).json()["id"]
    token = tokens.issue(cid, gw.a.id, gw.secret, 60)
    later = time.time() + 3600 * 24
    monkeypatch.setattr(time, "time", lambda: later)
    r = await gw.client.post(
        "/v1/feedback",
        json={"completion_id": cid, "rating": "up"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "expired_feedback_token"


async def test_http_cors(gw: Gateway) -> None:
    pre = await gw.client.options(
        "/v1/feedback",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in pre.headers["access-control-allow-headers"]
    denied = await gw.client.options("/v1/feedback", headers={"Origin": "https://evil.example"})
    assert denied.status_code == 403 and "access-control-allow-origin" not in denied.headers

    r = await chat(gw, gw.a)
    cid, token = r.json()["id"], r.headers["x-flywheel-feedback-token"]
    bearer = {"Authorization": f"Bearer {token}"}
    ok = await gw.client.post(
        "/v1/feedback",
        json={"completion_id": cid, "rating": "up"},
        headers={**bearer, "Origin": ORIGIN},
    )
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN
    # Another tenant's origin passes the preflight (union) but not a's token.
    wrong = await gw.client.post(
        "/v1/feedback",
        json={"completion_id": cid, "rating": "up"},
        headers={**bearer, "Origin": OTHER_ORIGIN},
    )
    assert wrong.status_code == 403
    # Error bodies are readable by an allowed origin (e.g. to show "token expired").
    bad = await gw.client.post(
        "/v1/feedback", json={"completion_id": cid}, headers={**bearer, "Origin": ORIGIN}
    )
    assert bad.status_code == 400 and bad.headers["access-control-allow-origin"] == ORIGIN


async def test_http_completions_logged_once_with_feedback(gw: Gateway) -> None:
    r = await chat(gw, gw.b)
    cid = r.json()["id"]
    await gw.client.post(
        "/v1/feedback", json={"completion_id": cid, "rating": "up"}, headers=key(gw.b)
    )
    assert await gw.log.flush(timeout=30)
    async with gw.db.session() as session:
        from gateway.core.db.models import Completion

        n = await session.scalar(
            select(func.count()).select_from(Completion).where(Completion.id == cid)
        )
    assert n == 1


# --- retention and erasure --------------------------------------------------------------------


async def test_retention_deletes_old_rows_in_batches(db: Database, clog: CompletionLog) -> None:
    from sqlalchemy import event

    from feedback.retention import enforce
    from gateway.core.db.models import Completion

    short = await new_tenant(db, retention_days=30)
    forever = await new_tenant(db)
    old = datetime.now(UTC) - timedelta(days=40)
    old_rows = [completion_row(short.id, created_at=old) for _ in range(7)]
    new_rows = [completion_row(short.id) for _ in range(2)]
    kept_rows = [completion_row(forever.id, created_at=old) for _ in range(2)]
    for row in old_rows + new_rows + kept_rows:
        clog.submit(row)
    assert await clog.flush(timeout=30)
    await record_feedback(db, clog, short.id, [FeedbackInput(old_rows[0]["id"], rating="up")])
    await record_feedback(db, clog, short.id, [FeedbackInput(new_rows[0]["id"], rating="up")])

    deletes: list[str] = []

    def _count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM COMPLETIONS"):
            deletes.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", _count)
    try:
        result = await enforce(db, batch_size=3)
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", _count)
    assert result.completions >= 7 and result.feedback >= 1
    assert len(deletes) >= 3  # 7 rows in batches of 3
    async with db.session() as session:
        left = set(
            await session.scalars(
                select(Completion.id).where(Completion.tenant_id.in_([short.id, forever.id]))
            )
        )
    assert left == {r["id"] for r in new_rows + kept_rows}
    assert len(await feedback_rows(db, short.id, new_rows[0]["id"])) == 1


async def test_forget_end_user(db: Database, clog: CompletionLog) -> None:
    from feedback.retention import forget_end_user
    from gateway.core.db.models import Completion

    tenant = await new_tenant(db)
    secret = {"messages": [{"role": "user", "content": "my account number is 1234"}]}
    mine = [await stored_completion(clog, tenant, end_user="u1", request=secret) for _ in range(2)]
    theirs = await stored_completion(clog, tenant, end_user="u2")
    # A finished round kept held-out copies for its gate: one of u1's, one of u2's.
    from gateway.core.db.models import TrainingRound

    held = [
        {"prompt": secret["messages"], "completion": [{"role": "assistant", "content": "x"}], "label": True},
        {"prompt": theirs["request"]["messages"], "completion": [{"role": "assistant", "content": "y"}], "label": False},
    ]  # fmt: skip
    async with db.transaction() as session:
        session.add(
            TrainingRound(
                id=f"round_{tenant.id[-8:]}",
                tenant_id=tenant.id,
                adapter_id="a",
                state="succeeded",
                heldout=held,
            )
        )
    await record_feedback(
        db,
        clog,
        tenant.id,
        [
            FeedbackInput(mine[0]["id"], rating="up", end_user="u2"),  # on u1's completion
            FeedbackInput(theirs["id"], rating="down", end_user="u1"),  # by u1
            FeedbackInput(theirs["id"], rating="up", end_user="u2"),
        ],
    )
    queued = completion_row(tenant.id, end_user="u1")
    clog.submit(queued)  # still queued: dropped when it reaches the database, never written
    counts = await forget_end_user(db, tenant.id, "u1", log=clog)
    assert counts.completions == 2 and counts.feedback == 2
    async with db.session() as session:
        left = set(
            await session.scalars(select(Completion.id).where(Completion.tenant_id == tenant.id))
        )
    assert left == {theirs["id"]}
    (remaining,) = await feedback_rows(db, tenant.id, theirs["id"])
    assert remaining.end_user == "u2"
    assert counts.heldout_rows == 1
    async with db.session() as session:
        kept = await session.get(TrainingRound, f"round_{tenant.id[-8:]}")
    assert kept is not None and kept.heldout == held[1:]


async def test_an_erasure_is_not_undone_by_another_gateways_queue(
    db: Database, clog: CompletionLog, tmp_path: Path
) -> None:
    """Rows of an erased end user still queued (or spooled) in another gateway are dropped when
    they land; rows the same end user makes after the erasure are kept."""
    from feedback.retention import forget_end_user
    from gateway.core.db.models import Completion

    tenant = await new_tenant(db)
    other = make_log(db, tmp_path / "other-spool", flush_interval_s=3600)  # holds its queue
    await other.start()
    try:
        before = completion_row(tenant.id, end_user="u1")
        other.submit(before)
        feedback_before = {
            "tenant_id": tenant.id,
            "id": "fb-before",
            "completion_id": before["id"],
            "rating": "down",
            "end_user": "u1",
            "created_at": datetime.now(UTC),
            "updated_at": datetime.now(UTC),
            "meta": {},
            "source": "api",
        }
        await forget_end_user(db, tenant.id, "u1")  # run from the CLI: no log to flush
        # The end user comes back: a request received after the erasure.
        after = completion_row(
            tenant.id, end_user="u1", received_at=datetime.now(UTC) + timedelta(seconds=1)
        )
        other.submit(after)
        await write_records(
            db,
            [Record("feedback", feedback_before)],  # a spooled feedback replayed late
        )
        assert await other.flush()
    finally:
        await other.stop()
    async with db.session() as session:
        left = set(
            await session.scalars(select(Completion.id).where(Completion.tenant_id == tenant.id))
        )
    assert left == {after["id"]}
    assert await feedback_rows(db, tenant.id, before["id"]) == []
