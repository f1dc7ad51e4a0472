"""The web console: its files are served safely, every admin call it makes exists, and its
admin client (the same JavaScript module the page uses) works against a live gateway in Node."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.api.console import FILES, STATIC
from gateway.app import create_app
from gateway.core.admin_tokens import local_admin_token
from tools.harness import make_settings, running_app, seed_tenant, serve_on_socket

pytestmark = pytest.mark.asyncio(loop_scope="session")

API_JS = STATIC / "console-api.js"


def _settings(tmp_path: Path, demo_base: Path, **overrides: Any) -> Any:
    url = f"sqlite+aiosqlite:///{tmp_path / 'console.db'}"
    return make_settings(tmp_path, url, demo_base, **overrides)


async def test_console_files_are_served_with_a_strict_policy(
    tmp_path: Path, demo_base: Path
) -> None:
    async with running_app(create_app(_settings(tmp_path, demo_base))) as client:
        page = await client.get("/console")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        for name in FILES:
            asset = await client.get(f"/console/{name}")
            assert asset.status_code == 200 and asset.headers["x-content-type-options"] == "nosniff"
        for name in ("console.js", "console.css", "uplot.min.css"):  # scripts: imported below
            assert f"/console/{name}" in page.text
        # Every script is reached from console.js's imports (directly or through a module).
        imported: set[str] = set()
        todo = ["console.js"]
        while todo:
            script = (STATIC / todo.pop()).read_text()
            found = set(re.findall(r'from "/console/([^"]+)"', script)) - imported
            imported |= found
            todo += sorted(found)
        assert imported == {name for name in FILES if name.endswith(".js")} - {"console.js"}
        missing = await client.get("/console/..%2Fconsole.py")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert "/console" not in (await client.get("/openapi.json")).json()["paths"]


async def test_console_can_be_switched_off(tmp_path: Path, demo_base: Path) -> None:
    async with running_app(create_app(_settings(tmp_path, demo_base, console=False))) as client:
        assert (await client.get("/console")).status_code == 404


async def test_every_admin_call_the_console_makes_exists(tmp_path: Path, demo_base: Path) -> None:
    # Each this.request("METHOD", `/admin/...`) in the client, against the OpenAPI schema
    # (query strings are built in a `query` variable, left out here).
    source = API_JS.read_text().replace("${query}", "")
    calls = re.findall(r'request\(\s*"(GET|POST|PATCH|DELETE)",\s*[`"](/admin/[^`"?]*)', source)
    assert len(calls) >= 12
    paths = create_app(_settings(tmp_path, demo_base)).openapi()["paths"]
    documented = [
        (method, re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"))
        for path, ops in paths.items()
        for method in ops
    ]
    for method, template in calls:
        concrete = re.sub(r"\$\{[^}]+\}", "x", template)
        assert any(m == method.lower() and pattern.match(concrete) for m, pattern in documented), (
            f"console calls {method} {template}, which the admin API does not have"
        )


async def test_console_client_drives_the_admin_api(
    tmp_path: Path, demo_base: Path, demo_adapters: list[Path]
) -> None:
    from gateway.services.adapters import add_adapter

    if shutil.which("node") is None:  # like PostgreSQL: optional on a laptop, required in CI
        if os.environ.get("CI") == "true":
            pytest.fail("Node.js is required in CI for the console's client test")
        pytest.skip("Node.js is not installed")

    settings = _settings(tmp_path, demo_base)
    app = create_app(settings)
    async with serve_on_socket(app) as url:
        import httpx

        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/healthz")).status_code == 200  # the lifespan has run
        state = app.state.flywheel
        await seed_tenant(state.db, settings, "acme", {"support": demo_adapters[0]})
        async with state.db.transaction() as session:
            await add_adapter(
                session,
                settings,
                tenant_name="acme",
                name="support",
                path=demo_adapters[1],
                sign=True,
            )
        for script in [name for name in FILES if name.endswith(".js")]:
            check = await asyncio.create_subprocess_exec("node", "--check", str(STATIC / script))
            assert await check.wait() == 0, script  # the page's own scripts parse
        token = local_admin_token(settings)
        assert token
        node = await asyncio.create_subprocess_exec(
            "node",
            str(Path(__file__).parent / "js" / "console_client.mjs"),
            str(API_JS),
            url,
            token,
            "acme",
            "support",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(node.communicate(), timeout=120)
    assert node.returncode == 0, err.decode()
    report = json.loads(out)

    def active(versions: list[dict[str, Any]]) -> list[int]:
        return [v["version"] for v in versions if v["active"]]

    assert "acme" in report["tenants"]
    assert active(report["before"]) == [1]
    assert report["verify"]["ok"]["verified"] is True
    assert "ok" in report["promote"] and active(report["afterPromote"]) == [2]
    assert "ok" in report["rollback"] and active(report["afterRollback"]) == [1]
    assert report["promoteMissing"]["error"]["status"] == 404
    assert report["stats"]["tenant"] == "acme"
    assert report["rounds"] == [] and report["gates"] == []
    assert {"adapter.verify", "adapter.promote", "adapter.rollback"} <= set(report["audit"])
    assert report["badToken"]["error"]["status"] == 401
    assert report["unknownTenant"]["error"]["status"] == 404
    assert report["unreachable"]["error"]["code"] == "network_error"


async def test_console_names_ids_and_knows_where_a_rollback_goes() -> None:
    """console-names.js in Node: ids from rounds and gate reports become names, and a rollback
    target is worked out from the audit log as adapters/promotion.py works it out from routes."""
    if shutil.which("node") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Node.js is required in CI for the console's name resolution test")
        pytest.skip("Node.js is not installed")
    node = await asyncio.create_subprocess_exec(
        "node",
        str(Path(__file__).parent / "js" / "console_names.mjs"),
        str(STATIC / "console-names.js"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(node.communicate(), timeout=60)
    assert node.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["tenant"] == "globex" and report["unknownTenant"] == "unknown tenant"
    assert report["version"] == "support@2" and report["noVersion"] is None
    assert report["adapter"] == "support"
    assert report["targets"] == {
        "acme/support": 1,  # promoted 1 -> 2; 3 was rejected and is never a target
        "acme/solo": None,  # one version: the gateway would answer 409
        "globex/support": None,  # its other version is a candidate, not servable
    }
    # With the audit window full and the swap not in it, the console cannot name the target.
    assert report["windowFull"]["acme/support"] == "previous"


async def test_an_edit_is_shown_as_a_word_diff() -> None:
    """console-diff.js in Node: the words an edit removed and added, whitespace never marked."""
    if shutil.which("node") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Node.js is required in CI for the console's diff test")
        pytest.skip("Node.js is not installed")
    script = (
        "const { wordDiff } = await import(process.argv[1]);"
        "const cases = JSON.parse(process.argv[2]);"
        "console.log(JSON.stringify(cases.map(([a, b]) => wordDiff(a, b))));"
    )
    cases = [
        ["Refunds take ten days.", "Refunds take five business days."],
        ["same  text", "same  text"],
        ["", "all new"],
        ["word " * 2000, "word"],  # too long to mark: shown as it is
    ]
    node = await asyncio.create_subprocess_exec(
        "node",
        "--input-type=module",
        "-e",
        script,
        (STATIC / "console-diff.js").as_uri(),
        json.dumps(cases),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(node.communicate(), timeout=60)
    assert node.returncode == 0, err.decode()
    changed, same, new, long = json.loads(out)
    assert changed["original"] == [["Refunds take ", False], ["ten", True], [" days.", False]]
    assert changed["edited"] == [
        ["Refunds take ", False],
        ["five", True],
        [" ", False],
        ["business", True],
        [" days.", False],
    ]
    assert same["original"] == same["edited"] == [["same  text", False]]
    assert new["original"] == [] and new["edited"] == [["all", True], [" ", False], ["new", True]]
    assert long["marked"] is False and long["original"] == [["word " * 2000, False]]
