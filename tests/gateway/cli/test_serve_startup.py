"""The start-up log of `flywheel serve` says where the console is (at the address it binds,
`--port` included) and where the admin token is, never the token itself."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.core.admin_tokens import admin_token_location, dev_token_path
from tools.harness import free_port, make_settings, running_app, start_serve, wait_until_up

ADMIN_SECRET = "fwadm-" + "s" * 40  # what an operator would put in FLYWHEEL_ADMIN_TOKEN


@pytest.mark.slow
def test_serve_logs_the_console_url_and_where_the_admin_token_is(
    fresh_database_url: str, demo_base: Path, tmp_path: Path
) -> None:
    port = free_port()
    data = tmp_path / "data"
    env = {
        **os.environ,
        "FLYWHEEL_DATABASE_URL": fresh_database_url,
        "FLYWHEEL_DATA_DIR": str(data),
        "FLYWHEEL_BASE_MODEL": str(demo_base),
        "FLYWHEEL_DEMO_BOOTSTRAP": "false",
        "FLYWHEEL_LOG_JSON": "false",
    }
    for inherited in ("FLYWHEEL_PORT", "FLYWHEEL_HOST", "FLYWHEEL_GATEWAY_URL"):
        env.pop(inherited, None)
    log = tmp_path / "serve.log"
    proc = start_serve(env, log, "--port", str(port))  # the flag, not FLYWHEEL_PORT
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz", proc, log, timeout=180)
    finally:
        proc.terminate()
        proc.wait(60)
    printed = log.read_text()
    expected = (
        f"console: http://127.0.0.1:{port}/console; admin token: the file {data / 'admin-token'}"
    )
    assert expected in printed, printed[-3000:]
    token = (data / "admin-token").read_text().strip()
    assert token.startswith("fwadm-") and token not in printed


@pytest.mark.asyncio(loop_scope="session")
async def test_the_log_line_names_the_environment_variable_and_never_the_token(
    database_url: str, demo_base: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        tmp_path,
        database_url,
        demo_base,
        environment="production",
        feedback_token_secret="f" * 40,
        admin_token=ADMIN_SECRET,
    )
    caplog.set_level(logging.INFO, logger="flywheel")
    async with running_app(create_app(settings)):
        pass
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("console: ")]
    assert lines == ["console: http://127.0.0.1:8000/console; admin token: FLYWHEEL_ADMIN_TOKEN"]
    assert not any(ADMIN_SECRET in r.getMessage() for r in caplog.records)
    assert not dev_token_path(settings).exists()  # production keeps no token on disk


def test_where_the_admin_token_is_in_each_setup(demo_base: Path, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}"
    dev = make_settings(tmp_path, url, demo_base)
    assert admin_token_location(dev) == f"the file {tmp_path / 'admin-token'}"
    both = make_settings(tmp_path, url, demo_base, admin_token=ADMIN_SECRET)
    assert admin_token_location(both) == f"FLYWHEEL_ADMIN_TOKEN or the file {tmp_path}/admin-token"
    bare = make_settings(
        tmp_path, url, demo_base, environment="production", feedback_token_secret="f" * 40
    )
    assert "flywheel admin token-create" in admin_token_location(bare)
    assert ADMIN_SECRET not in admin_token_location(both)
