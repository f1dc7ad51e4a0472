"""The web console in a real browser: Debian's Chromium driven by Playwright against a live
gateway (uvicorn on a socket, the tiny demo base, SQLite).

Rounds and gate reports are inserted as rows, shaped as a finished round and a gate run leave
them: training one takes minutes, and what is tested here is how the console shows them.
Everything else (sign-in, promote, roll back, verify) goes through the admin API for real.

Chromium is a system package (``tools/install-chromium.sh``); Playwright launches it by path and
never downloads a browser. In CI (``CI=true``) a missing Chromium or Playwright fails the tests.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from gateway.app import create_app
from gateway.core.admin_tokens import local_admin_token
from gateway.core.db.models import GateReport, TrainingRound
from tools.harness import make_settings, seed_tenant, serve_on_socket

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHROMIUM = os.environ.get("FLYWHEEL_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
VIEWS = ["Adapters", "Tenants", "Rounds", "Gate reports", "Audit"]
# Each view's table, by its caption (the name of the box it scrolls in): waiting for it waits
# for that view to be drawn, not for the one still shown while it loads.
CAPTIONS = {
    "adapters": "Adapter versions",
    "tenants": "Tenants",
    "rounds": "Training rounds",
    "gates": "Gate reports",
    "audit": "Audit log (last 200 events)",
}

GATE_SUMMARY = "\n".join(
    [
        "gate: PASSED",
        "  held-out edits           candidate better on 7 of 9 changed rows (sign test p = 0.09)",
        "  preference accuracy      serving=0.4444  candidate=0.7778",
        "  golden check pass rate   serving=1  candidate=1",
    ]
)
ROUND_METRICS: dict[str, Any] = {
    "train_loss": 0.6124,
    "train_runtime": 812.4,
    "train_samples_per_second": 0.118,
    "train_steps_per_second": 0.015,
    "eval_loss": 0.5931,
    "eval_rewards/chosen": 0.2103,
    "eval_rewards/rejected": -0.1877,
    "eval_rewards/accuracies": 0.7778,
    "eval_rewards/margins": 0.3980,
    "eval_logps/chosen": -41.27,
    "eval_logps/rejected": -52.93,
    "epoch": 3.0,
    "timings": {"prepare": 1.9, "train": 812.4, "merge": 0.4, "evaluate": 30.2},
}


def _require_browser() -> Any:
    """Playwright's async API, or a skip (a failure in CI) saying what is missing."""
    missing = []
    try:
        from playwright import async_api
    except ImportError:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if not Path(CHROMIUM).exists() and shutil.which(CHROMIUM) is None:
        missing.append(f"Chromium at {CHROMIUM} (tools/install-chromium.sh)")
    if missing:
        reason = "browser tests need " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI must run them")
        pytest.skip(reason)
    return async_api


@dataclass
class Gateway:
    url: str
    token: str
    round_id: str
    page_errors: list[str] = field(default_factory=list)

    def admin(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"authorization": f"Bearer {self.token}"}
        )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(
    tmp_path_factory: pytest.TempPathFactory, demo_base: Path, demo_adapters: list[Path]
) -> AsyncIterator[Gateway]:
    from gateway.services.adapters import add_adapter

    tmp = tmp_path_factory.mktemp("console-browser")
    settings = make_settings(tmp, f"sqlite+aiosqlite:///{tmp / 'console.db'}", demo_base)
    app = create_app(settings)
    async with serve_on_socket(app) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/healthz")).status_code == 200  # the lifespan has run
        db = app.state.flywheel.db
        acme = await seed_tenant(
            db, settings, "acme", {"support": demo_adapters[0], "solo": demo_adapters[1]}
        )
        globex = await seed_tenant(db, settings, "globex", {"support": demo_adapters[2]})
        await seed_tenant(db, settings, "initech", {"support": demo_adapters[3]})
        for tenant, path in (("acme", demo_adapters[4]), ("initech", demo_adapters[5])):
            async with db.transaction() as session:
                await add_adapter(
                    session, settings, tenant_name=tenant, name="support", path=path, sign=True
                )
        token = local_admin_token(settings)
        assert token
        gateway = Gateway(url=url, token=token, round_id="round_0a1b2c3d4e5f60718293")
        async with gateway.admin() as admin:
            versions = (await admin.get("/admin/adapters")).json()
        vid = {(v["tenant"], v["adapter"], v["version"]): v["version_id"] for v in versions}
        adapter_id = {
            tenant: await _adapter_id(db, vid[(tenant, "support", 1)])
            for tenant in ("acme", "globex")
        }
        now = datetime.now(UTC)
        round_id = gateway.round_id
        async with db.transaction() as session:
            session.add(
                TrainingRound(
                    id=round_id,
                    tenant_id=acme.id,
                    adapter_id=adapter_id["acme"],
                    state="succeeded",
                    method="dpo",
                    method_reason="96 edit pairs",
                    parent_version_id=vid[("acme", "support", 1)],
                    candidate_version_id=vid[("acme", "support", 2)],
                    counts={"edit pairs": 96, "thumbs up": 3, "train_rows": 86, "heldout_rows": 10},
                    metrics=ROUND_METRICS,
                    attempts=1,
                    created_at=now - timedelta(hours=2),
                    started_at=now - timedelta(hours=2),
                    finished_at=now - timedelta(hours=1),
                )
            )
            session.add(
                GateReport(
                    id="gate_acme",
                    tenant_id=acme.id,
                    adapter_id=adapter_id["acme"],
                    candidate_version_id=vid[("acme", "support", 2)],
                    serving_version_id=vid[("acme", "support", 1)],
                    round_id=round_id,
                    passed=True,
                    reasons=[],
                    report={"thresholds": {}, "signed": True},
                    summary=GATE_SUMMARY,
                    created_at=now - timedelta(minutes=50),
                )
            )
            session.add(
                GateReport(
                    id="gate_globex",
                    tenant_id=globex.id,
                    adapter_id=adapter_id["globex"],
                    candidate_version_id=vid[("globex", "support", 1)],
                    serving_version_id=None,
                    round_id=None,
                    passed=True,
                    reasons=[],
                    report={},
                    summary="gate: PASSED",
                    created_at=now - timedelta(minutes=40),
                )
            )
        yield gateway


async def _adapter_id(db: Any, version_id: str) -> str:
    from gateway.core.db.models import AdapterVersion

    async with db.session() as session:
        version = await session.get(AdapterVersion, version_id)
        assert version is not None
        return str(version.adapter_id)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def browser() -> AsyncIterator[Any]:
    api = _require_browser()
    async with api.async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        api.expect.set_options(timeout=15_000)  # two busy cores: generous, never a sleep
        yield launched
        await launched.close()


async def _page(browser: Any, gateway: Gateway, viewport: dict[str, int]) -> Any:
    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    page.on("pageerror", lambda err: gateway.page_errors.append(str(err)))
    await page.goto(f"{gateway.url}/console")
    return page


async def _sign_in(page: Any, gateway: Gateway) -> None:
    from playwright.async_api import expect

    await page.locator("#token").fill(gateway.token)
    await page.locator("#login button[type=submit]").click()
    await expect(page.locator("#nav")).to_be_visible()
    await expect(page.locator("#view table")).to_be_visible()


async def _screenshot(page: Any, name: str) -> None:
    """Kept as an artifact when FLYWHEEL_TEST_SCREENSHOTS names a folder (docs/console.md)."""
    folder = os.environ.get("FLYWHEEL_TEST_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def _nav(page: Any, name: str) -> Any:
    return page.locator("nav button[data-view]", has_text=name)


@pytest.fixture(autouse=True)
def _no_page_errors(request: pytest.FixtureRequest) -> Any:
    yield
    if "gateway" in request.fixturenames:
        gateway: Gateway = request.getfixturevalue("gateway")
        errors, gateway.page_errors[:] = list(gateway.page_errors), []
        assert errors == [], f"uncaught errors in the page: {errors}"


async def test_the_nav_shows_only_when_signed_in_and_sign_out_clears_the_token(
    browser: Any, gateway: Gateway
) -> None:
    from playwright.async_api import expect

    page = await _page(browser, gateway, DESKTOP)
    await expect(page.locator("#login")).to_be_visible()
    await expect(page.locator("#nav")).to_be_hidden()
    # A click that reaches a view while signed out (a stale button, a script) says so, rather
    # than "Cannot read properties of null".
    await _nav(page, "Rounds").dispatch_event("click")
    await expect(page.locator("#message")).to_have_text("Sign in first.")
    await expect(page.locator("#view")).to_be_empty()

    await _sign_in(page, gateway)
    await expect(page.locator("#login")).to_be_hidden()
    await expect(page.locator("#message")).to_have_text("")

    await page.locator("#logout").click()
    await expect(page.locator("#nav")).to_be_hidden()
    await expect(page.locator("#login")).to_be_visible()
    await expect(page.locator("#token")).to_have_value("")
    await expect(page.locator("#view")).to_be_empty()
    assert await page.evaluate("sessionStorage.getItem('flywheel-admin-token')") is None
    await page.context.close()


async def test_messages_clear_and_a_proxy_error_page_is_summarised(
    browser: Any, gateway: Gateway
) -> None:
    from playwright.async_api import expect

    page = await _page(browser, gateway, DESKTOP)
    await _sign_in(page, gateway)
    message = page.locator("#message")
    solo = page.locator("tbody tr", has_text="solo")
    await solo.get_by_role("button", name=re.compile("^Verify")).click()
    await expect(message).to_have_text("verify acme/solo@1: done")  # the outcome, not "verify…"
    await _nav(page, "Tenants").click()
    await expect(page.locator("#view table")).to_contain_text("globex")
    await expect(message).to_have_text("")  # a new view, a clean message line

    # A proxy between the browser and the gateway answers with its own HTML page.
    html = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad " + (
        "Gateway</h1></center><hr><center>nginx</center></body></html>"
    )
    await page.route(
        "**/admin/rounds*",
        lambda route: route.fulfill(status=502, content_type="text/html", body=html),
    )
    await _nav(page, "Rounds").click()
    await expect(message).to_contain_text("502")
    text = await message.text_content()
    assert "<" not in text and "nginx" not in text, text
    await page.context.close()


async def test_rounds_and_gate_reports_name_what_they_judged(
    browser: Any, gateway: Gateway
) -> None:
    from playwright.async_api import expect

    page = await _page(browser, gateway, DESKTOP)
    await _sign_in(page, gateway)
    view = page.locator("#view")

    await _nav(page, "Rounds").click()
    row = page.locator("tbody tr", has_text=gateway.round_id)
    await expect(row).to_contain_text("acme")
    await expect(row).to_contain_text("support@1")  # trained from
    await expect(row).to_contain_text("support@2")  # produced
    assert "ten_" not in await view.inner_text()
    metrics = row.locator("[data-col=metrics] .kv")  # one metric a line, not one JSON line
    await expect(metrics).to_contain_text("train_loss")
    lines = (await metrics.inner_text()).splitlines()
    assert any(line.startswith("eval_rewards/margins") for line in lines), lines
    assert await page.evaluate("document.documentElement.scrollWidth") <= DESKTOP["width"]
    await _screenshot(page, "desktop-rounds")

    await _nav(page, "Gate reports").click()
    acme = page.locator("tbody tr", has_text="acme")
    await expect(acme).to_have_count(1)
    await expect(acme.locator("[data-col=candidate]")).to_have_text("support@2")
    await expect(acme.locator("[data-col=serving]")).to_have_text("support@1")
    await expect(acme.locator("[data-col=round]")).to_contain_text(gateway.round_id)
    summary = await acme.locator("[data-col=summary]").inner_text()
    assert "\\n" not in summary and summary.splitlines()[:2] == GATE_SUMMARY.splitlines()[:2]
    globex = page.locator("tbody tr", has_text="globex")
    await expect(globex.locator("[data-col=serving]")).to_have_text("none")
    assert "ten_" not in await view.inner_text()
    await _screenshot(page, "desktop-gate-reports")

    # The filter takes names, and the rows it leaves are named the same way.
    await page.locator("#tenant-filter").select_option("globex")
    await expect(page.locator("tbody tr")).to_have_count(1)
    await expect(page.locator("tbody tr")).to_contain_text("globex")
    await page.context.close()


async def test_promote_and_roll_back_ask_for_a_reason_and_name_their_target(
    browser: Any, gateway: Gateway
) -> None:
    from playwright.async_api import expect

    page = await _page(browser, gateway, DESKTOP)
    swaps: list[str] = []
    page.on(
        "request",
        lambda r: swaps.append(r.url) if re.search(r"/(promote|rollback)$", r.url) else None,
    )
    await _sign_in(page, gateway)
    initech = page.locator("tbody tr", has_text="initech")
    await expect(initech).to_have_count(2)
    # One version (acme/solo) or no earlier serving version (initech/support): a rollback
    # would be a 409, so none is offered.
    await expect(page.get_by_role("button", name=re.compile("Roll back .*solo"))).to_have_count(0)
    await expect(initech.get_by_role("button", name=re.compile("^Roll back"))).to_have_count(0)

    dialog = page.locator("dialog")
    await page.get_by_role("button", name="Promote initech/support@2").click()
    await expect(dialog).to_be_visible()
    reason = dialog.get_by_label("Reason")
    await expect(reason).to_be_focused()
    await dialog.get_by_role("button", name="Promote").click()  # an empty reason
    await expect(dialog).to_be_visible()
    assert await reason.evaluate("el => el.validity.valueMissing") is True
    await reason.fill("   ")  # blanks are no reason either
    await dialog.get_by_role("button", name="Promote").click()
    await expect(dialog).to_be_visible()
    assert swaps == []
    await reason.fill("v2 passed review")
    await dialog.get_by_role("button", name="Promote").click()
    await expect(dialog).to_be_hidden()
    await _screenshot(page, "desktop-adapters")
    serving = page.locator("tbody tr.active", has_text="initech")
    await expect(serving.locator("[data-col=version]")).to_have_text("2")

    rollback = page.get_by_role("button", name="Roll back to @1: initech/support")
    await expect(rollback).to_have_count(1)
    await rollback.click()
    await expect(dialog).to_contain_text("initech/support@2")
    await expect(dialog).to_contain_text("@1")
    await dialog.get_by_label("Reason").fill("v2 answers too long")
    await dialog.get_by_role("button", name="Roll back").click()
    await expect(serving.locator("[data-col=version]")).to_have_text("1")
    assert len(swaps) == 2

    async with gateway.admin() as admin:
        events = (await admin.get("/admin/audit", params={"limit": 20})).json()
    swapped = ("adapter.promote", "adapter.rollback")
    reasons = [e["detail"]["reason"] for e in events if e["action"] in swapped]
    assert "v2 passed review" in reasons and "v2 answers too long" in reasons
    await page.context.close()


async def test_a_phone_screen_fits_and_every_control_is_big_enough_to_tap(
    browser: Any, gateway: Gateway
) -> None:
    from playwright.async_api import expect

    page = await _page(browser, gateway, PHONE)
    small_targets = """() => [...document.querySelectorAll('button, input, select, textarea')]
        .filter((e) => e.offsetParent !== null)
        .map((e) => [e.id || e.getAttribute('aria-label') || e.textContent.trim(),
                     e.getBoundingClientRect()])
        .filter(([, r]) => r.width < 44 || r.height < 44)
        .map(([name, r]) => `${name}: ${Math.round(r.width)}x${Math.round(r.height)}`)"""
    assert await page.evaluate(small_targets) == []
    await _sign_in(page, gateway)
    for name, caption in zip(VIEWS, CAPTIONS.values(), strict=True):
        await _nav(page, name).click()
        await expect(_nav(page, name)).to_have_attribute("aria-current", "page")
        await expect(page.get_by_role("region", name=caption)).to_be_visible()
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{name}: the page is {width} px wide"
        assert await page.evaluate(small_targets) == [], name
        await _screenshot(page, f"phone-{name.lower().replace(' ', '-')}")
    await page.context.close()


async def test_keyboard_and_screen_reader_users_know_where_they_are_and_what_a_button_does(
    browser: Any, gateway: Gateway
) -> None:
    from playwright.async_api import expect

    page = await _page(browser, gateway, DESKTOP)
    unlabelled = """() => [...document.querySelectorAll('input, select, textarea')]
        .filter((e) => e.offsetParent !== null && e.labels.length === 0)
        .map((e) => e.outerHTML)"""
    assert await page.evaluate(unlabelled) == []
    await page.get_by_label("Admin token").fill(gateway.token)
    await page.keyboard.press("Enter")
    await expect(page.locator("#view table")).to_be_visible()

    adapters = _nav(page, "Adapters")
    await expect(adapters).to_have_attribute("aria-current", "page")
    await expect(page.get_by_role("button", name="Promote acme/support@2")).to_have_count(1)
    await expect(page.get_by_role("button", name="Verify acme/solo@1")).to_have_count(1)
    await expect(page.get_by_role("button", name="Verify globex/support@1")).to_have_count(1)

    # The promote dialog: Escape closes it and gives focus back to the button that opened it.
    promote = page.get_by_role("button", name="Promote acme/support@2")
    await promote.click()
    await expect(page.locator("dialog").get_by_label("Reason")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(page.locator("dialog")).to_be_hidden()
    await expect(promote).to_be_focused()

    await _nav(page, "Tenants").click()
    await expect(_nav(page, "Tenants")).to_have_attribute("aria-current", "page")
    await expect(adapters).not_to_have_attribute("aria-current", "page")
    await expect(page.get_by_role("button", name="Rotate keys for acme")).to_have_count(1)
    await expect(page.get_by_role("button", name="Feedback stats for globex")).to_have_count(1)
    assert await page.evaluate(unlabelled) == []
    await page.context.close()
