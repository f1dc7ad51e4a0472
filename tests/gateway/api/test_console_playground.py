"""The console's playground in a real browser (Debian's Chromium through Playwright, at 1280x800
and 390x844), against a live gateway (uvicorn, the tiny demo base, SQLite).

A tenant with two servable versions (@1 serving, @2 passed the gate: the candidate) is made
through the admin API; then, in the page: pick the tenant, adapter and @2, chat (streamed through the OpenAI API with a playground key, which is
revoked once the reply has streamed), give a thumb on one reply and an edit of another (through
/v1/feedback with each reply's browser token), and find both on the adapter's page; outside the
page, both through ``feedback.export`` and the keys through the admin API.  Nothing is faked.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest
from sqlalchemy import select

from feedback.export import export
from gateway.core.db.models import AdapterVersion
from tests.gateway.api import test_console_browser as console
from tests.gateway.api import test_console_loop as loop

pytestmark = pytest.mark.asyncio(loop_scope="session")

browser = console.browser
gateway = loop.gateway
_no_page_errors = console._no_page_errors
EDITED = "Your parcel arrives on Thursday."


async def _tenant_with_a_candidate(gw: loop.Gateway, tenant: str) -> None:
    """@1 serves; @2 is ready and then marked passed, as the gate leaves a candidate."""
    async with gw.admin() as admin:
        assert (await admin.post("/admin/tenants", json={"name": tenant})).status_code == 201
        for path in gw.adapters[:2]:
            r = await admin.post(
                "/admin/adapters",
                json={"tenant": tenant, "name": "support", "path": str(path), "sign": True},
            )
            assert r.status_code == 201, r.text
    async with gw.admin() as admin:
        (tenant_id,) = [
            t["id"] for t in (await admin.get("/admin/tenants")).json() if t["name"] == tenant
        ]
    async with gw.app.state.flywheel.db.transaction() as session:
        v2 = await session.scalar(
            select(AdapterVersion).where(
                AdapterVersion.tenant_id == tenant_id, AdapterVersion.version == 2
            )
        )
        assert v2 is not None
        v2.state = "passed"


@pytest.mark.parametrize("size", ["desktop", "phone"])
async def test_chat_in_the_playground_and_give_feedback_as_a_user_would(
    browser: Any, gateway: loop.Gateway, size: str
) -> None:
    from playwright.async_api import expect

    viewport = console.DESKTOP if size == "desktop" else console.PHONE
    tenant = f"play-{size}"
    await _tenant_with_a_candidate(gateway, tenant)
    page, blocked = await loop._signed_in(browser, gateway, viewport)
    message = page.locator("#message")

    await page.locator("nav button[data-view=playground]").click()
    await expect(page.locator("#page-title")).to_have_text("Playground")
    await page.get_by_label("Tenant", exact=True).select_option(tenant)
    await expect(page.get_by_label("Adapter", exact=True)).to_have_value("support")
    version = page.get_by_label("Version", exact=True)
    await expect(version).to_have_value("1")  # what serves, by default
    await expect(version.locator("option")).to_have_text(
        [
            "@1 · ready · serving",
            "@2 · passed · the candidate",
            "@2 (the candidate) beside @1 (serving)",
        ]
    )
    await version.select_option("2")
    await page.get_by_label("Max tokens").fill("6")

    # Feedback leaves this page with its origin, the gateway's own, which the feedback API
    # accepts without the tenant listing it: nothing to allow, and the tenant is left as it is.
    await expect(page.locator("#play-origin")).to_contain_text("from its own origin")
    await expect(page.get_by_role("button", name=re.compile("Allow feedback"))).to_have_count(0)

    async def ask(text: str, n: int) -> tuple[Any, Any]:
        await page.get_by_label("Message", exact=True).fill(text)
        async with page.expect_response("**/v1/chat/completions") as answered:
            await page.get_by_role("button", name="Send", exact=True).click()
        response = await answered.value
        reply = page.locator(f"#reply-{n}")
        await expect(message).to_contain_text("streamed pieces")
        await expect(reply).not_to_have_attribute("aria-busy", "true")
        return response, reply

    response, first = await ask("Where is my parcel?", 1)
    sent = response.request.post_data_json
    assert (sent["model"], sent["stream"], sent["max_tokens"]) == ("support@2", True, 6)
    assert response.request.headers["authorization"].startswith("Bearer fw-play-")
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-flywheel-adapter-version"] == "support@2"
    assert int(await first.get_attribute("data-chunks") or 0) >= 1
    assert (await first.inner_text()).strip()
    await expect(page.locator("#play-chat li.assistant h4").first).to_have_text(
        "Reply 1 · support@2"
    )
    await page.get_by_role("button", name="Thumbs up: reply 1").click()
    await expect(page.locator("#reply-1-status")).to_have_text("Thumbs up sent for reply 1.")

    _, second = await ask("Can I get a refund?", 2)
    await page.get_by_role("button", name="Edit this answer: reply 2").click()
    edit = page.get_by_label("Edited answer for reply 2")
    await expect(edit).to_be_focused()
    await expect(edit).to_have_value(await second.inner_text())
    await edit.fill(EDITED)
    await page.get_by_role("button", name="Send edit of reply 2").click()
    await expect(page.locator("#reply-2-status")).to_have_text("Edit sent for reply 2.")
    completions = [await r.get_attribute("data-completion") for r in (first, second)]
    assert all(c and c.startswith("chatcmpl-") for c in completions)

    # Each reply's key was revoked once it had streamed; the tenant's first key still works.
    async with gateway.admin() as admin:
        keys = (await admin.get(f"/admin/tenants/{tenant}/keys")).json()
    playground = [k for k in keys if k["prefix"].startswith("fw-play-")]
    assert len(playground) == 2 and all(k["revoked_at"] for k in playground)
    assert [k["revoked_at"] for k in keys if k not in playground] == [None]
    assert await page.evaluate(loop.UNLABELLED) == []
    assert await loop._axe(page) == []
    if size == "phone":
        assert await page.evaluate(loop.SMALL_TARGETS) == []
    loop._fits(await loop._overflow(page))
    await console._screenshot(page, f"{size}-playground")

    # Both on the adapter's page: the thumb and the edit, on @2.
    assert await gateway.app.state.flywheel.completions.flush()
    await page.get_by_role("link", name=f"{tenant}/support's page").click()
    await expect(page.locator("#page-title")).to_have_text(f"{tenant} / support")
    since = page.locator("[aria-labelledby=h-feedback]")
    await expect(since.locator(".kv")).to_contain_text("completions2")
    await expect(since.locator(".kv")).to_contain_text("thumbs up1 (50 per 100 completions)")
    await expect(since.locator(".kv")).to_contain_text("edits1 (50 per 100 completions)")
    edited = since.locator("figure.edit")
    await expect(edited.locator("figcaption")).to_contain_text("@2")
    await expect(edited.locator("figcaption")).to_contain_text("Can I get a refund?")
    await expect(edited.locator(".sides > div").nth(1)).to_have_text("Edited" + EDITED)
    await expect(page.locator("#version-2 .note")).to_have_text(
        "2 completions · 1 up · 0 down · 1 edits"
    )
    await expect(page.locator("#try-playground")).to_have_attribute(
        "href", f"#playground/{tenant}/support"
    )
    assert await loop._axe(page) == []
    assert blocked == []

    # And through the export a round trains from (KTO): the thumb, the edit and its original.
    out = io.StringIO()
    assert await export(gateway.app.state.flywheel.db, tenant, "support", None, "kto", out) == 3
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    signals = {(r["meta"]["completion_id"], r["meta"]["signal"], r["label"]) for r in rows}
    assert signals == {
        (completions[0], "rating", True),
        (completions[1], "edit", True),
        (completions[1], "edit_original", False),
    }
    # Taken from the gateway's own origin, not because the tenant was made to list it.
    async with gateway.admin() as admin:
        (saved,) = [t for t in (await admin.get("/admin/tenants")).json() if t["name"] == tenant]
    assert saved["cors_origins"] == []
    (edit_row,) = [r for r in rows if r["meta"]["signal"] == "edit"]
    assert edit_row["completion"] == [{"role": "assistant", "content": EDITED}]
    assert edit_row["prompt"][-1]["content"] == "Can I get a refund?"

    # Back from the adapter's page: the candidate beside the serving version, one message to
    # both, each streamed with its own key and answered by its own version.
    await page.locator("#try-playground").click()
    await expect(page.locator("#page-title")).to_have_text("Playground")
    await expect(page.get_by_label("Tenant", exact=True)).to_have_value(tenant)
    await version.select_option(label="@2 (the candidate) beside @1 (serving)")
    models: list[str] = []
    page.on(
        "request",
        lambda r: (
            models.append(r.post_data_json["model"])
            if r.url.endswith("/v1/chat/completions")
            else None
        ),
    )
    await page.get_by_label("Message", exact=True).fill("Do you ship abroad?")
    await page.get_by_role("button", name="Send", exact=True).click()
    await expect(message).to_have_text(
        re.compile(
            f"^{tenant}: support@2 answered in \\d+ streamed pieces; "
            "support@1 answered in \\d+ streamed pieces\\.$"
        )
    )
    assert sorted(models) == ["support@1", "support@2"]
    sides = page.locator(".play-sides h4")
    await expect(sides).to_have_text(["Reply 1 · support@2", "Reply 2 · support@1"])
    await page.get_by_role("button", name="Thumbs down: reply 2").click()
    await expect(page.locator("#reply-2-status")).to_have_text("Thumbs down sent for reply 2.")
    assert await loop._axe(page) == []
    if size == "phone":
        assert await page.evaluate(loop.SMALL_TARGETS) == []
    loop._fits(await loop._overflow(page))
    await console._screenshot(page, f"{size}-playground-side-by-side")
    async with gateway.admin() as admin:
        keys = (await admin.get(f"/admin/tenants/{tenant}/keys")).json()
    assert all(k["revoked_at"] for k in keys if k["prefix"].startswith("fw-play-"))
    assert len([k for k in keys if k["prefix"].startswith("fw-play-")]) == 4
    await page.context.close()
