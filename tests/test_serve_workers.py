"""``flywheel serve --workers 2``: one port, two processes, metrics summed over both, a spool
each, migrations and the demo bootstrap run once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _requests_ok(text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("flywheel_requests_total{") and 'status="ok"' in line
    )


def test_two_workers_share_the_port_and_their_metrics(demo_base: Path, tmp_path: Path) -> None:
    port, data = free_port(), tmp_path / "data"
    env = {
        **os.environ,
        "FLYWHEEL_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'flywheel.db'}",
        "FLYWHEEL_DATA_DIR": str(data),
        "FLYWHEEL_BASE_MODEL": str(demo_base),
        "FLYWHEEL_BASE_MODEL_NAME": "demo-base",
        "FLYWHEEL_PORT": str(port),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli.main", "serve", "--workers", "2"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:  # polling readiness until both workers serve
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        # The demo bootstrap ran once, in the parent: two tenants, keys printed once.
        keys = re.findall(r"^\s+demo-\w+\s+(fw-\S+)", log.read_text(), re.MULTILINE)
        assert len(keys) == 2, log.read_text()[-3000:]
        body = {
            "model": "support",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
        }
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(6):
                # A connection each, so the kernel spreads them over the workers.
                r = httpx.post(
                    f"{url}/v1/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {keys[0]}"},
                    timeout=60,
                )
                assert r.status_code == 200, r.text
            # Whichever worker answers the scrape, the counters are the sum of both.
            scrapes = [
                client.get("/metrics", headers={"Connection": "close"}).text for _ in range(4)
            ]
        assert all(_requests_ok(text) == 6 for text in scrapes), [_requests_ok(t) for t in scrapes]
        assert (data / "prometheus").is_dir()
        assert (data / "spool" / ".lock").exists() and (data / "spool" / "w1" / ".lock").exists()
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
