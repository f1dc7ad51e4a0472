"""Every setting is documented: docs/configuration.md is generated from Settings."""

from __future__ import annotations

from pathlib import Path

from gateway.core.config import Settings, render_docs


def test_configuration_doc_is_current() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
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
