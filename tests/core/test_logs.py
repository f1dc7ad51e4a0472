"""Structured logs: request fields on every line of a request, no prompt text unless asked."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.core.logs import make_handler
from tools.harness import make_settings, running_app, seed_tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")
SECRET_PROMPT = "my card number is 4111"


async def _completion_lines(
    tmp_path: Path, url: str, base: Path, adapter: Path, debug: bool
) -> list[dict[str, object]]:
    settings = make_settings(tmp_path, url, base, log_debug_content=debug)
    stream = io.StringIO()
    handler = make_handler(settings, stream)
    logger = logging.getLogger("flywheel")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        app = create_app(settings)
        async with running_app(app) as client:
            t = await seed_tenant(app.state.flywheel.db, settings, "logco", {"bot": adapter})
            body = {
                "model": "bot",
                "messages": [{"role": "user", "content": SECRET_PROMPT}],
                "max_tokens": 4,
            }
            r = await client.post(
                "/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {t.key}", "x-request-id": "trace-7"},
            )
            assert r.status_code == 200, r.text
            tenant_id = t.id
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    done = [line for line in lines if line.get("completion_id")]
    assert len(done) == 1, lines
    assert done[0]["request_id"] == "trace-7"
    assert done[0]["tenant_id"] == tenant_id
    assert done[0]["adapter_version"] == "bot@1"
    assert done[0]["status"] == "ok" and done[0]["completion_tokens"] >= 1
    return lines


async def test_completion_line_has_the_request_fields_and_no_text(
    fresh_database_url: str, demo_base: Path, demo_adapters: list[Path], tmp_path: Path
) -> None:
    lines = await _completion_lines(
        tmp_path, fresh_database_url, demo_base, demo_adapters[0], False
    )
    assert SECRET_PROMPT not in json.dumps(lines)


async def test_debug_content_setting_adds_the_text(
    demo_base: Path, demo_adapters: list[Path], tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'flywheel.db'}"
    lines = await _completion_lines(tmp_path, url, demo_base, demo_adapters[0], True)
    assert SECRET_PROMPT in json.dumps(lines)
