"""Every setting is documented: docs/configuration.md is generated from Settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.config import Settings, render_docs
from tools.harness import REPO


def test_configuration_doc_is_current() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    assert doc == render_docs(), "run: python -m gateway.core.config > docs/configuration.md"


def test_every_setting_has_a_description() -> None:
    missing = [n for n, f in Settings.model_fields.items() if not f.description]
    assert missing == []


def test_env_vars_are_read(monkeypatch: object) -> None:
    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    monkeypatch.setenv("FLYWHEEL_PORT", "9123")
    monkeypatch.setenv("FLYWHEEL_ENGINE", "vllm")
    s = Settings()
    assert s.port == 9123 and s.engine == "vllm"


def test_every_entry_point_refuses_development_secrets_in_production(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks run when Settings is built, so the CLI and the worker refuse like the app."""
    from pydantic import ValidationError
    from typer.testing import CliRunner

    from gateway.cli.main import app
    from gateway.core.config import get_settings

    with pytest.raises(ValidationError, match="FLYWHEEL_FEEDBACK_TOKEN_SECRET"):
        Settings(data_dir=tmp_path, environment="production")
    with pytest.raises(ValidationError, match="at least 32"):
        Settings(data_dir=tmp_path, admin_token="short")
    monkeypatch.setenv("FLYWHEEL_ENVIRONMENT", "production")
    monkeypatch.setenv("FLYWHEEL_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'f.db'}")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["tenants", "list"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert "invalid settings" in result.output and "Traceback" not in result.output
