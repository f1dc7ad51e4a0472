"""The ``flywheel`` CLI: keys on stdout only, clean one-line errors, every action audited."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.core.config import get_settings


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


def test_feedback_forget_from_the_cli_is_audited(cli_env: Path) -> None:
    """An erasure leaves an audit row whether the admin API or the CLI asked for it."""
    runner = CliRunner()
    assert runner.invoke(app, ["tenants", "create", "acme"]).exit_code == 0
    gone = runner.invoke(app, ["feedback", "forget", "--tenant", "acme", "--end-user", "alice"])
    assert gone.exit_code == 0, gone.output
    with sqlite3.connect(cli_env) as conn:
        rows = conn.execute(
            "SELECT actor, target, detail FROM audit_log WHERE action = 'feedback.forget'"
        ).fetchall()
    assert len(rows) == 1, rows
    actor, target, detail = rows[0]
    assert actor.startswith("cli:") and target == "alice" and '"feedback": 0' in detail


def test_adapters_add_list_and_a_clear_refusal(
    cli_env: Path,
    demo_base: Path,
    demo_adapters: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLYWHEEL_BASE_MODEL", str(demo_base))
    monkeypatch.setenv("FLYWHEEL_BASE_MODEL_NAME", "demo-base")
    get_settings.cache_clear()
    runner = CliRunner()
    assert runner.invoke(app, ["tenants", "create", "acme"]).exit_code == 0
    add = ["adapters", "add", "--tenant", "acme", "--sign"]
    first = runner.invoke(app, [*add, "--name", "support", str(demo_adapters[0])])
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("support@1 ") and "signed" in first.stdout
    second = runner.invoke(app, [*add, "--name", "support", str(demo_adapters[1])])
    assert second.stdout.startswith("support@2 ")
    again = runner.invoke(app, [*add, "--name", "sales", str(demo_adapters[0])])
    assert again.stdout.startswith("sales@1 ")  # several named adapters per tenant

    listed = runner.invoke(app, ["adapters", "list", "--tenant", "acme"]).stdout.splitlines()
    rows = [line.split() for line in listed[1:]]
    inactive = [r for r in rows if r[0] != "*"]
    assert [(r[1], r[2]) for r in inactive] == [("support", "2")]  # added, not active
    active = {(r[2], r[3]) for r in rows if r[0] == "*"}
    assert active == {("support", "1"), ("sales", "1")}
    with sqlite3.connect(cli_env) as conn:
        paths = dict(conn.execute("SELECT version, path FROM adapter_versions").fetchall())
    # Content-addressed: the same files are stored once, under their digest.
    assert len({p for p in paths.values()}) == 2 and all("/sha256/" in p for p in paths.values())

    monkeypatch.setenv("FLYWHEEL_MAX_LORA_RANK", "4")
    get_settings.cache_clear()
    refused = runner.invoke(app, [*add, "--name", "broken", str(demo_adapters[2])])
    assert refused.exit_code == 1 and "rank 8 is outside 1..4" in refused.output
    assert "Traceback" not in refused.output
