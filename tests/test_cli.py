"""The ``flywheel`` CLI: keys on stdout only, clean one-line errors, every action audited."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.config import get_settings


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "flywheel.db"
    monkeypatch.setenv("FLYWHEEL_DATABASE_URL", f"sqlite+aiosqlite:///{db}")
    monkeypatch.setenv("FLYWHEEL_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield db
    get_settings.cache_clear()


def test_tenant_and_key_commands_print_keys_only_and_are_audited(cli_env: Path) -> None:
    runner = CliRunner()
    created = runner.invoke(app, ["tenants", "create", "acme", "--rpm", "30"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("fw-") and "\n" not in key  # scripts can capture it
    rotated = runner.invoke(app, ["keys", "rotate", "acme"])
    assert rotated.exit_code == 0 and rotated.stdout.strip().startswith("fw-")
    assert rotated.stdout.strip() != key
    assert runner.invoke(app, ["tenants", "update", "acme", "--tpm", "5000"]).exit_code == 0

    too_big = runner.invoke(app, ["tenants", "update", "acme", "--tpm", str(10**12)])
    assert too_big.exit_code == 1
    assert "tpm_limit must be between 1 and 2147483647" in too_big.output
    assert "Traceback" not in too_big.output

    with sqlite3.connect(cli_env) as conn:
        rows = conn.execute("SELECT actor, action, target FROM audit_log").fetchall()
        stored = [r[0] for r in conn.execute("SELECT key_hash FROM api_keys")]
    actions = [action for _, action, _ in rows]
    assert actions.count("tenant.create") == 1 and actions.count("key.rotate") == 1
    assert "key.create" in actions and "tenant.update" in actions
    assert all(actor.startswith("cli:") for actor, _, _ in rows)
    assert key not in stored and all(len(h) == 64 for h in stored)  # hashes, never the key
