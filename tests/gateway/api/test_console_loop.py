"""The loop in the console, in a real browser (Debian's Chromium through Playwright, at 1280x800
and 390x844), against a live gateway (uvicorn, the tiny demo base, SQLite).

From the console: sign in, create a tenant, add an adapter and a second version (directories on
the gateway host), freeze a golden set from an uploaded JSONL file, follow the adapter's page
(lineage, gate tables, feedback since the last round), promote and roll back with reasons, set
the tenant's limits and retraining, add and revoke a key.  Each result is checked outside the
page: the route through the OpenAI API's ``x-flywheel-adapter-version`` header, settings and
reasons through the admin API, a revoked key by its 401.

Only the training round and its gate reports are inserted as rows, shaped as a finished round
and ``retrain.gate`` leave them (the verdicts come from the gate's own ``decide``): training takes
minutes, and what is tested here is how the console shows them.  Completions and feedback are
real requests.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select

from gateway.app import create_app
from gateway.core.admin_tokens import local_admin_token
from gateway.core.config import Settings
from gateway.core.db.models import AdapterVersion, GateReport, GoldenSet, TrainingRound
from retrain.gate_rules import DEFAULT_THRESHOLDS, Improvement, SideMetrics, decide
from tests.gateway.api import test_console_browser as console
from tools.harness import make_settings, serve_on_socket

pytestmark = pytest.mark.asyncio(loop_scope="session")

# The browser and the page-error check are the other browser tests' fixtures.
browser = console.browser
_no_page_errors = console._no_page_errors
DESKTOP, PHONE = console.DESKTOP, console.PHONE

SERVING = SideMetrics(
    preference_accuracy=0.4444,
    mean_margin=0.01,
    check_pass_rate=1.0,
    hard_checks_passed=[True],
    reference_nll=2.0,
    mean_length=40.0,
    fluency_nll=3.0,
)
GOOD = SideMetrics(**{**SERVING.__dict__, "preference_accuracy": 0.7778, "mean_margin": 0.4})
LONG = SideMetrics(**{**GOOD.__dict__, "mean_length": 90.0})  # learned only to be longer
BETTER = Improvement(test="sign", p_value=0.0195, rows=9, wins=8, trials=9)
GOLDEN = [
    {"prompt": "Refund policy?", "reference": "Refunds take five business days."},
    {
        "messages": [{"role": "user", "content": "Opening hours?"}],
        "checks": [{"type": "contains", "value": "9"}],
    },
]
# What retrain.train.step_log keeps of a DPO round: step, loss, reward margins and accuracies.
TRAIN_LOG = [
    {"step": 1.0, "loss": 0.6931, "rewards/margins": 0.0, "rewards/accuracies": 0.0},
    {"step": 2.0, "loss": 0.61, "rewards/margins": 0.21, "rewards/accuracies": 0.5},
    {"step": 3.0, "loss": 0.52, "rewards/margins": 0.39, "rewards/accuracies": 0.75},
    {"step": 4.0, "loss": 0.45, "rewards/margins": 0.6, "rewards/accuracies": 1.0},
]
ORIGINAL_PROMPT = "How long does delivery take?"
EDITED = "Delivery takes three to five business days."


@dataclass
class Gateway:
    url: str
    token: str
    settings: Settings
    app: Any
    adapters: list[Path]
    page_errors: list[str] = field(default_factory=list)

    def admin(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"authorization": f"Bearer {self.token}"}
        )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(
    tmp_path_factory: pytest.TempPathFactory, demo_base: Path, demo_adapters: list[Path]
) -> AsyncIterator[Gateway]:
    """A gateway with no tenant at all: the console makes everything."""
    tmp = tmp_path_factory.mktemp("console-loop")
    settings = make_settings(tmp, f"sqlite+aiosqlite:///{tmp / 'console.db'}", demo_base)
    app = create_app(settings)
    async with serve_on_socket(app) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/healthz")).status_code == 200  # the lifespan has run
        token = local_admin_token(settings)
        assert token
        yield Gateway(url, token, settings, app, demo_adapters)


async def _judge(gateway: Gateway, tenant: str) -> dict[str, str]:
    """What a round and the gate leave for @2 (passed) and @3 (rejected: answers too long)."""
    from adapters.registry import get_adapter
    from gateway.core.tenants import get_tenant
    from gateway.services.adapters import add_adapter

    db = gateway.app.state.flywheel.db
    async with db.transaction() as session:
        await add_adapter(
            session,
            gateway.settings,
            tenant_name=tenant,
            name="support",
            path=gateway.adapters[2],
            sign=True,
        )
    now = datetime.now(UTC)
    ids = {"round": f"round_{tenant}_a", "gate": f"gate_{tenant}_a"}
    ids |= {"round3": f"round_{tenant}_b", "gate3": f"gate_{tenant}_b"}
    async with db.transaction() as session:
        t = await get_tenant(session, tenant)
        a = await get_adapter(session, t.id, "support")
        rows = await session.scalars(
            select(AdapterVersion).where(AdapterVersion.adapter_id == a.id)
        )
        versions = {v.version: v for v in rows}
        v1, v2, v3 = versions[1], versions[2], versions[3]
        golden = await session.scalar(
            select(GoldenSet).where(GoldenSet.adapter_id == v1.adapter_id)
        )
        assert golden is not None
        v2.parent_version_id, v2.state = v1.id, "passed"
        v3.parent_version_id, v3.state = v1.id, "rejected"
        for round_id, candidate, hours in ((ids["round"], v2, 3), (ids["round3"], v3, 2)):
            session.add(
                TrainingRound(
                    id=round_id,
                    tenant_id=v1.tenant_id,
                    adapter_id=v1.adapter_id,
                    state="succeeded",
                    method="dpo",
                    method_reason="40 edit pairs",
                    parent_version_id=v1.id,
                    candidate_version_id=candidate.id,
                    data_cutoff=now - timedelta(hours=hours),
                    counts={"edit pairs": 40, "heldout_rows": 9},
                    metrics={"train_loss": 0.61, "eval_rewards/margins": 0.39},
                    train_log=TRAIN_LOG if round_id == ids["round"] else [],
                    attempts=1,
                    created_at=now - timedelta(hours=hours),
                )
            )
        for gate_id, round_id, candidate, side in (
            (ids["gate"], ids["round"], v2, GOOD),
            (ids["gate3"], ids["round3"], v3, LONG),
        ):
            verdict = decide(SERVING, side, dict(DEFAULT_THRESHOLDS), BETTER)
            session.add(
                GateReport(
                    id=gate_id,
                    tenant_id=v1.tenant_id,
                    adapter_id=v1.adapter_id,
                    candidate_version_id=candidate.id,
                    serving_version_id=v1.id,
                    golden_set_id=golden.id,
                    round_id=round_id,
                    passed=verdict.passed,
                    reasons=verdict.reasons,
                    report={
                        "thresholds": verdict.thresholds,
                        "serving": verdict.serving,
                        "candidate": verdict.candidate,
                        "improvement": verdict.improvement,
                    },
                    summary="gate: PASSED" if verdict.passed else "gate: REJECTED",
                )
            )
    return ids


async def _chat(gateway: Gateway, key: str, text: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        return await client.post(
            "/v1/chat/completions",
            json={
                "model": "support",
                "messages": [{"role": "user", "content": text}],
                "max_tokens": 4,
            },
            headers={"Authorization": f"Bearer {key}"},
        )


async def _served(gateway: Gateway, key: str) -> str:
    r = await _chat(gateway, key, "Which version are you?")
    assert r.status_code == 200, r.text
    return r.headers["x-flywheel-adapter-version"]


async def _overflow(page: Any) -> dict[str, Any]:
    """The page's width and every table box's right edge, against the viewport's width."""
    result: dict[str, Any] = await page.evaluate(
        """() => ({
            viewport: window.innerWidth,
            page: document.documentElement.scrollWidth,
            boxes: [...document.querySelectorAll('.table-wrap')].map((w) => ({
                name: w.getAttribute('aria-label'),
                right: Math.round(w.getBoundingClientRect().right),
                table: Math.round(w.querySelector('table').scrollWidth),
            })),
        })"""
    )
    return result


def _fits(layout: dict[str, Any]) -> None:
    assert layout["page"] <= layout["viewport"], layout
    for box in layout["boxes"]:
        assert box["right"] <= layout["viewport"], box


UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea')]
    .filter((e) => e.offsetParent !== null && e.labels.length === 0)
    .map((e) => e.outerHTML)"""
SMALL_TARGETS = """() => [...document.querySelectorAll('button, input, select, textarea, summary')]
    .filter((e) => e.offsetParent !== null)
    .map((e) => [e.id || e.getAttribute('aria-label') || e.textContent.trim(),
                 e.getBoundingClientRect()])
    .filter(([, r]) => r.width < 44 || r.height < 44)
    .map(([name, r]) => `${name}: ${Math.round(r.width)}x${Math.round(r.height)}`)"""
# axe-core 4.14.1 (MPL-2.0, Deque Systems), vendored unchanged from npm for the tests only: it
# is evaluated through the DevTools protocol, so the page's CSP needs no exception for it.
AXE = Path(__file__).parent / "js" / "axe.min.js"
AXE_RUN = """() => axe.run(document, {
        runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']},
    }).then((r) => r.violations
        .filter((v) => v.impact === 'serious' || v.impact === 'critical')
        .map((v) => `${v.id} (${v.impact}): ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`))"""


async def _axe(page: Any) -> list[str]:
    """Serious and critical accessibility violations axe-core finds on the page as it is."""
    if not await page.evaluate("() => typeof axe !== 'undefined'"):
        await page.evaluate(AXE.read_text())
    found: list[str] = await page.evaluate(AXE_RUN)
    return found


async def _signed_in(browser: Any, gateway: Any, viewport: dict[str, int]) -> tuple[Any, list[str]]:
    """A signed-in page at this size, and the Content Security Policy reports it will collect
    (the strict CSP must hold: nothing inline, nothing from elsewhere)."""
    page = await console._page(browser, gateway, viewport)
    blocked: list[str] = []
    page.on(
        "console",
        lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None,
    )
    await console._sign_in(page, gateway)
    return page, blocked


LAYOUTS: dict[str, dict[str, Any]] = {}  # measured widths, printed with -s (docs/console.md)


@pytest.mark.parametrize("size", ["desktop", "phone"])
async def test_the_loop_from_the_console(browser: Any, gateway: Gateway, size: str) -> None:
    from playwright.async_api import expect

    viewport = DESKTOP if size == "desktop" else PHONE
    tenant = f"shop-{size}"
    name = f"{tenant}/support"
    page, blocked = await _signed_in(browser, gateway, viewport)
    message = page.locator("#message")
    view = page.locator("#view")
    dialog = page.locator("dialog")

    # A tenant, made here; its first key is shown once.
    await page.locator("nav button[data-view=tenants]").click()
    await page.get_by_label("New tenant name").fill(tenant)
    await page.get_by_role("button", name="Create tenant").click()
    secret = page.locator(".secret code")
    await expect(secret).to_have_text(re.compile(r"^fw-"))
    key = await secret.inner_text()

    # An adapter: a directory on the gateway host, signed; the console opens its page.
    await page.locator("nav button[data-view=adapters]").click()
    await page.get_by_text("Add an adapter version").click()
    await page.locator("#add-tenant").select_option(tenant)
    await page.get_by_label("Adapter name").fill("support")
    await page.get_by_label("PEFT directory on the gateway host").fill(str(gateway.adapters[0]))
    await page.get_by_label("Sign it").check()
    await page.get_by_role("button", name="Add adapter version").click()
    title = page.locator("#page-title")
    await expect(title).to_have_text(f"{tenant} / support")
    await expect(title).to_be_focused()
    await expect(message).to_have_text(f"add {name}: done, version @1, signed")
    await expect(_nav(page, "Adapters")).to_have_attribute("aria-current", "true")
    await expect(page.locator("#version-1")).to_contain_text("serving now")
    await expect(page.get_by_role("button", name=re.compile("^Roll back"))).to_have_count(0)
    assert await _served(gateway, key) == "support@1"

    # A second version, from the adapter's page.
    await page.get_by_label("PEFT directory on the gateway host").fill(str(gateway.adapters[1]))
    await page.get_by_label("Sign it with the gateway's signing key").check()
    await page.get_by_role("button", name="Add a version of support").click()
    await expect(message).to_have_text(f"add a version of {name}: done")
    await expect(page.locator("#version-2")).to_contain_text("never served")

    # A golden set: the format is shown; a broken file is refused by line, a good one frozen.
    await expect(page.locator("#golden-format")).to_contain_text('"reference"')
    upload = page.get_by_label("Golden set file (JSONL)")
    await upload.set_input_files(
        files=[
            {"name": "bad.jsonl", "mimeType": "text/plain", "buffer": b'{"prompt": "a"}\n{oops\n'}
        ]
    )
    await page.get_by_role("button", name="Freeze golden set").click()
    await expect(message).to_contain_text("line 2 is not JSON")
    jsonl = "\n".join(json.dumps(item) for item in GOLDEN).encode()
    await upload.set_input_files(
        files=[{"name": "golden.jsonl", "mimeType": "application/jsonl", "buffer": jsonl}]
    )
    await page.get_by_role("button", name="Freeze golden set").click()
    await expect(message).to_have_text(f"freeze golden set for {name} (2 items): done")
    golden = page.locator("[aria-label='Golden sets of support'] tbody tr")
    await expect(golden).to_have_count(1)
    await expect(golden.locator("[data-col=items]")).to_have_text("2")

    # A round and the gate judged @2 (passed) and @3 (rejected); users gave feedback since.
    ids = await _judge(gateway, tenant)
    asked = await _chat(gateway, key, ORIGINAL_PROMPT)
    assert asked.status_code == 200
    original = asked.json()["choices"][0]["message"]["content"]
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        for item in (
            {"completion_id": asked.json()["id"], "edited_output": EDITED},
            {"completion_id": asked.json()["id"], "rating": "down", "end_user": "u2"},
        ):
            r = await client.post(
                "/v1/feedback", json=item, headers={"Authorization": f"Bearer {key}"}
            )
            assert r.status_code in (200, 201), r.text
    assert await gateway.app.state.flywheel.completions.flush()
    await page.reload()  # the tab keeps its token and the page its address
    await expect(title).to_have_text(f"{tenant} / support")

    # The lineage: each version from its parent, through its round and gate, to serving.
    v2, v3 = page.locator("#version-2"), page.locator("#version-3")
    await expect(v2.locator(".flow")).to_contain_text("from @1")
    await expect(
        v2.get_by_role("link", name=f"round {ids['round']}, which produced @2")
    ).to_be_visible()
    await expect(v3.locator(".flow")).to_contain_text("gate rejected")
    await expect(v3.get_by_role("button", name=re.compile("^Promote"))).to_have_count(0)
    await v2.get_by_role("link", name="gate passed: the report on @2").click()
    report = page.locator(f"#gate-{ids['gate']}")
    await expect(report).to_be_focused()
    await expect(report.locator("h4")).to_have_text("support@2 against support@1: passed")
    await expect(report).to_contain_text(ids["round"])
    await expect(report).to_contain_text("golden set v1")
    rows = report.locator("tbody tr")
    await expect(rows).to_have_count(7)
    accuracy = rows.filter(has_text="preference accuracy")
    for col, text in (
        ("serving", "0.4444"),
        ("candidate", "0.7778"),
        ("threshold", "at least serving - 0"),
        ("outcome", "pass"),
    ):
        await expect(accuracy.locator(f"[data-col={col}]")).to_contain_text(text)
    rejected = page.locator(f"#gate-{ids['gate3']}")
    await expect(rejected.locator("h4")).to_have_text("support@3 against support@1: rejected")
    longer = rejected.locator("tbody tr.fail")
    await expect(longer).to_have_count(1)
    await expect(longer).to_contain_text("mean length")
    await expect(longer.locator("[data-col=outcome]")).to_contain_text("answers got 2.25x longer")
    await expect(rejected.locator("li")).to_have_text(re.compile("^answers got 2.25x longer"))
    assert "\\n" not in await view.inner_text()
    await page.locator(f"#version-2 a[href$='/round/{ids['round']}']").click()
    await expect(page.locator(f"#round-{ids['round']}")).to_be_focused()

    # Feedback since the last round: counts, rates and the edit beside the answer it replaced.
    since = page.locator("[aria-labelledby=h-feedback]")
    # Two completions since the cut-off (the version check above, and the one edited).
    await expect(since.locator(".kv")).to_contain_text("completions2")
    await expect(since.locator(".kv")).to_contain_text("edits1 (50 per 100 completions)")
    await expect(since.locator(".kv")).to_contain_text("thumbs down1 (50 per 100")
    edit = since.locator("figure.edit")
    await expect(edit.locator("figcaption")).to_contain_text(ORIGINAL_PROMPT)
    await expect(edit.locator(".sides > div").first).to_contain_text(original.strip()[:10])
    await expect(edit.locator(".sides > div").nth(1)).to_have_text("Edited" + EDITED)
    await expect(edit.locator("ins").first).to_be_visible()
    # The next round, as a dry run: not yet (too little feedback), and retraining is off.
    plan = page.locator("#next-round")
    await expect(plan).to_contain_text("No round could start now: too little feedback")
    await expect(plan).to_contain_text("Retraining is off for this tenant")

    # Charts (uPlot, vendored): feedback rates and a gate metric across versions, each with its
    # numbers in a table.
    rates = page.locator("#chart-feedback")
    await expect(rates.locator("canvas")).to_be_visible()
    await expect(rates.locator(".u-legend")).to_contain_text("thumbs down")
    await rates.get_by_text("The numbers").click()
    v1_rates = rates.locator(".table-wrap tbody tr", has_text="@1")
    for col, text in (("completions", "2"), ("up", "0"), ("down", "50"), ("edits", "50")):
        await expect(v1_rates.locator(f"[data-col={col}]")).to_have_text(text)
    gates = page.locator("#chart-gate")
    await expect(gates.locator("canvas")).to_be_visible()
    await gates.get_by_label("Gate metric").select_option(label="mean length (tokens)")
    await gates.get_by_text("The numbers").click()
    judged = gates.locator(".table-wrap tbody tr")
    await expect(judged).to_have_count(2)
    await expect(judged.nth(0)).to_contain_text("@2")
    await expect(judged.nth(1).locator("[data-col=candidate]")).to_have_text("90")
    await expect(judged.nth(1).locator("[data-col=bound]")).to_have_text("60")
    await expect(judged.nth(1).locator("[data-col=outcome]")).to_have_text("fail")
    # The training curves of the round that produced @2 (the other round has no log).
    curves = page.locator("#chart-training")
    await expect(curves.get_by_label("Round").locator("option")).to_have_text(
        [f"{ids['round']} (produced @2)"]
    )
    await expect(curves.locator("canvas")).to_be_visible()
    await expect(curves.locator(".u-legend")).to_contain_text("reward margin")
    await expect(curves.locator(".chart-canvas")).to_have_attribute(
        "aria-label", re.compile("loss 0.6931 at step 1, 0.45 at step 4")
    )
    await curves.get_by_text("The numbers").click()
    logged = curves.locator(".table-wrap tbody tr")
    await expect(logged).to_have_count(4)
    for col, text in (("step", "3"), ("loss", "0.52"), ("margins", "0.39"), ("accuracies", "0.75")):
        await expect(logged.nth(2).locator(f"[data-col={col}]")).to_have_text(text)
    assert await page.evaluate(UNLABELLED) == []
    assert await _axe(page) == []
    if size == "phone":
        assert await page.evaluate(SMALL_TARGETS) == []
    LAYOUTS[f"{size} adapter page"] = await _overflow(page)
    _fits(LAYOUTS[f"{size} adapter page"])
    await console._screenshot(page, f"{size}-adapter-page")

    # Promote @2 from the page: both versions named, a reason required; the route follows.
    promote = page.get_by_role("button", name=f"Promote {name}@2")
    await promote.click()
    await expect(dialog).to_contain_text(f"{name}@1 serves now; serve {name}@2 instead")
    await dialog.get_by_role("button", name="Promote").click()
    await expect(dialog).to_be_visible()  # no reason, no promotion
    await dialog.get_by_label("Reason").fill("gate passed, reviewed")
    await dialog.get_by_role("button", name="Promote").click()
    await expect(message).to_have_text(f"promote {name}@2: done")
    await expect(page.locator("#version-2")).to_contain_text("serving now")
    assert await _served(gateway, key) == "support@2"

    rollback = page.get_by_role("button", name=f"Roll back to @1: {name}")
    await rollback.click()
    await expect(dialog).to_contain_text(f"{name}@2 serves now; roll back to @1")
    await dialog.get_by_label("Reason").fill("too terse in review")
    await dialog.get_by_role("button", name="Roll back").click()
    await expect(message).to_have_text(f"roll back {name} to @1: done")
    await expect(page.locator("#version-1")).to_contain_text("serving now")
    assert await _served(gateway, key) == "support@1"
    # The gateway would now go forward again to @2, and the page offers exactly that.
    await expect(page.get_by_role("button", name=f"Roll back to @2: {name}")).to_have_count(1)
    async with gateway.admin() as admin:
        events = (await admin.get("/admin/audit", params={"limit": 50})).json()
    reasons = [e["detail"].get("reason") for e in events if e["target"].startswith("support@")]
    assert "gate passed, reviewed" in reasons and "too terse in review" in reasons

    # The tenant's page: limits and retraining, then its keys.
    await page.locator("nav button[data-view=tenants]").click()
    await page.get_by_role("link", name=f"Settings and keys of {tenant}").click()
    await expect(title).to_have_text(f"Tenant {tenant}")
    await expect(title).to_be_focused()
    await page.get_by_label("Requests per minute").fill("120")
    await page.get_by_label("Retrain from feedback").check()
    await page.get_by_label("Feedback rows that start a round").fill("25")
    await page.get_by_role("button", name=f"Save settings for {tenant}").click()
    await expect(message).to_have_text(
        f"save rpm_limit, retrain_enabled, retrain_min_feedback for {tenant}: done"
    )
    async with gateway.admin() as admin:
        (saved,) = [t for t in (await admin.get("/admin/tenants")).json() if t["name"] == tenant]
    assert (saved["rpm_limit"], saved["retrain_enabled"], saved["retrain_min_feedback"]) == (
        120,
        True,
        25,
    )
    await expect(page.get_by_label("Requests per minute")).to_have_value("120")

    await page.get_by_role("button", name=f"Add a key for {tenant}").click()
    await expect(secret).to_have_text(re.compile(r"^fw-"))
    second = await secret.inner_text()
    keys = page.locator(f"[aria-label='Keys of {tenant}'] tbody tr")
    await expect(keys).to_have_count(2)
    prefix = second[: len(await keys.nth(1).locator("[data-col=prefix]").inner_text()) - 1]
    revoke = page.get_by_role("button", name=f"Revoke key {prefix}… of {tenant}")
    await revoke.click()
    await expect(dialog).to_contain_text(f"{tenant}'s other keys keep working")
    await dialog.get_by_role("button", name="Revoke key").click()
    await expect(message).to_have_text(f"revoke key {prefix}… of {tenant}: done")
    await expect(keys.filter(has_text=prefix).locator("[data-col=status]")).to_contain_text(
        "revoked"
    )
    assert (await _chat(gateway, second, "hello")).status_code == 401
    assert await _served(gateway, key) == "support@1"
    assert await page.evaluate(UNLABELLED) == []
    assert await _axe(page) == []
    if size == "phone":
        assert await page.evaluate(SMALL_TARGETS) == []
    LAYOUTS[f"{size} tenant page"] = await _overflow(page)
    _fits(LAYOUTS[f"{size} tenant page"])
    await console._screenshot(page, f"{size}-tenant-page")

    # Every view at this size: nothing wider than the screen; tables scroll in their boxes.
    for nav, caption in console.CAPTIONS.items():
        await page.locator(f"nav button[data-view={nav}]").click()
        await expect(page.locator(f"nav button[data-view={nav}]")).to_have_attribute(
            "aria-current", "page"
        )
        await expect(view.get_by_role("region", name=caption)).to_be_visible()  # drawn
        assert await _axe(page) == [], nav
        LAYOUTS[f"{size} {nav}"] = await _overflow(page)
        _fits(LAYOUTS[f"{size} {nav}"])
    assert blocked == []
    print(json.dumps({k: v for k, v in LAYOUTS.items() if k.startswith(size)}, indent=1))
    await page.context.close()


def _nav(page: Any, view: str) -> Any:
    return page.locator("nav button[data-view]", has_text=view)
