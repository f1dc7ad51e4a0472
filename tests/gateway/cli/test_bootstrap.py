"""First start on an empty database: two demo tenants, keys printed once, adapters that differ."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.app import create_app
from tools.harness import make_settings, running_app

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_demo_tenants_are_created_once_with_different_adapters(
    fresh_database_url: str,
    demo_base: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(tmp_path, fresh_database_url, demo_base, demo_bootstrap=True)
    body = {
        "model": "support",
        "messages": [{"role": "user", "content": "Hello! How can I help you today?"}],
        "max_tokens": 12,
        "temperature": 0,
    }
    app = create_app(settings)
    async with running_app(app) as client:
        keys = re.findall(r"^\s+(demo-\w+)\s+(fw-\S+)", capsys.readouterr().out, re.MULTILINE)
        assert [name for name, _ in keys] == ["demo-acme", "demo-globex"]
        answers = []
        for _, key in keys:
            auth = {"Authorization": f"Bearer {key}"}
            r = await client.post("/v1/chat/completions", json=body, headers=auth)
            assert r.status_code == 200, r.text
            assert r.headers["x-flywheel-adapter-version"] == "support@1"
            answers.append(r.json()["choices"][0]["message"]["content"])
        assert answers[0] != answers[1]  # each tenant is served its own adapter
    async with running_app(create_app(settings)):  # the next start finds tenants: no new keys
        assert "fw-" not in capsys.readouterr().out


async def test_production_never_creates_keys_by_itself(
    demo_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path / 'flywheel.db'}",
        demo_base,
        demo_bootstrap=True,
        environment="production",
        feedback_token_secret="x" * 40,
    )
    async with running_app(create_app(settings)):
        assert "fw-" not in capsys.readouterr().out
