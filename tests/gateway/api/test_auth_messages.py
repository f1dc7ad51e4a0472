"""A request without a credential is told which one its surface takes: the admin API an admin
token, /metrics the metrics token, the OpenAI API a tenant's API key, feedback either that key
or the completion's browser feedback token."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.app import create_app
from tools.harness import make_settings, running_app

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_each_surface_names_the_credential_it_wants(
    database_url: str, demo_base: Path, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, database_url, demo_base)
    async with running_app(create_app(settings)) as client:
        admin = await client.get("/admin/tenants")
        metrics = await client.get("/metrics")
        chat = await client.post("/v1/chat/completions", json={})
        feedback = await client.post("/v1/feedback", json={})

    for r in (admin, metrics, chat, feedback):
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
    errors = {
        name: r.json()["error"]
        for name, r in (("admin", admin), ("metrics", metrics), ("chat", chat), ("fb", feedback))
    }

    assert errors["admin"]["code"] == "missing_admin_token"
    assert errors["admin"]["message"].startswith(
        "Missing admin token: send 'Authorization: Bearer <admin token>', an admin token and "
        "not a tenant's API key"
    )
    assert "flywheel admin token-create" in errors["admin"]["message"]
    assert errors["metrics"]["code"] == "missing_metrics_token"
    assert "metrics token" in errors["metrics"]["message"]
    assert "FLYWHEEL_METRICS_TOKEN" in errors["metrics"]["message"]
    for surface in ("admin", "metrics"):  # the operator's surfaces never ask for a tenant key
        assert "Flywheel key" not in errors[surface]["message"]

    assert errors["chat"] == {
        "message": "Missing API key: send 'Authorization: Bearer <your Flywheel key>'.",
        "type": "authentication_error",
        "param": None,
        "code": "missing_api_key",
    }
    assert errors["fb"]["code"] == "missing_api_key"
    assert "your Flywheel key" in errors["fb"]["message"]
    assert "feedback token" in errors["fb"]["message"]
