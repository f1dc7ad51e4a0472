"""``flywheel serve`` as a process: several workers on one port, two replicas sharing Redis,
and ``flywheel demo loop`` closing the loop against it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tools.harness import METRICS_AUTH, METRICS_TOKEN, REPO, free_port, wait_until_up

pytestmark = pytest.mark.slow


def _requests_ok(text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("flywheel_requests_total{") and 'status="ok"' in line
    )


def _start(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli.main", "serve", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    wait_until_up(f"{url}/readyz", proc, log, timeout=180, interval=0.3, request_timeout=5)


def _env(tmp_path: Path, demo_base: Path, port: int, **extra: str) -> dict[str, str]:
    """A gateway process's environment: SQLite in ``tmp_path``, the demo base, ``port``."""
    env = {
        **os.environ,
        "FLYWHEEL_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'flywheel.db'}",
        "FLYWHEEL_DATA_DIR": str(tmp_path / "data"),
        "FLYWHEEL_BASE_MODEL": str(demo_base),
        "FLYWHEEL_BASE_MODEL_NAME": "demo-base",
        "FLYWHEEL_PORT": str(port),
        "FLYWHEEL_METRICS_TOKEN": METRICS_TOKEN,
        **extra,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def _stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_two_workers_share_the_port_and_their_metrics(demo_base: Path, tmp_path: Path) -> None:
    port, data = free_port(), tmp_path / "data"
    log = tmp_path / "serve.log"
    proc = _start(_env(tmp_path, demo_base, port), log, "--workers", "2")
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc, log)
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
                client.get("/metrics", headers={"Connection": "close", **METRICS_AUTH}).text
                for _ in range(4)
            ]
        assert all(_requests_ok(text) == 6 for text in scrapes), [_requests_ok(t) for t in scrapes]
        assert (data / "prometheus").is_dir()
        assert (data / "spool" / ".lock").exists() and (data / "spool" / "w1" / ".lock").exists()
    finally:
        _stop(proc)


def test_two_gateway_processes_share_a_tenants_limit_through_redis(
    demo_base: Path, tmp_path: Path
) -> None:
    """Two ``flywheel serve`` processes (two replicas), one database, one Redis: alternating
    requests get the tenant's limit once, not once per replica."""
    redis_url = os.environ.get("FLYWHEEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    ports = [free_port(), free_port()]
    envs = [
        _env(
            tmp_path,
            demo_base,
            port,
            FLYWHEEL_DATA_DIR=str(tmp_path / f"data{i}"),
            FLYWHEEL_REDIS_URL=redis_url,
            FLYWHEEL_RATE_LIMIT_FAIL_OPEN="false",  # no Redis must fail, not pass silently
        )
        for i, port in enumerate(ports)
    ]
    envs[1]["FLYWHEEL_DEMO_BOOTSTRAP"] = "false"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_start(envs[0], logs[0])]
    try:
        _wait_ready(f"http://127.0.0.1:{ports[0]}", procs[0], logs[0])
        procs.append(_start(envs[1], logs[1]))
        _wait_ready(f"http://127.0.0.1:{ports[1]}", procs[1], logs[1])
        key = re.findall(r"^\s+demo-acme\s+(fw-\S+)", logs[0].read_text(), re.MULTILINE)[0]
        update = [sys.executable, "-m", "gateway.cli.main", "tenants", "update", "demo-acme"]
        done = subprocess.run(
            [*update, "--rpm", "4"], env=envs[0], cwd=REPO, capture_output=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        body = {
            "model": "demo-base",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1,
        }
        statuses = [
            httpx.post(
                f"http://127.0.0.1:{ports[i % 2]}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
                timeout=60,
            ).status_code
            for i in range(8)
        ]
        assert statuses.count(200) == 4 and statuses.count(429) == 4, statuses
    finally:
        _stop(*procs)


def test_demo_loop_against_a_running_gateway(demo_base: Path, tmp_path: Path) -> None:
    """``flywheel demo loop --url``: feedback through the public API, a real round, the gate,
    the signature, the promotion, and the next answer from the new version; exit 0."""
    port = free_port()
    env = _env(tmp_path, demo_base, port, FLYWHEEL_DEMO_BOOTSTRAP="false")
    log = tmp_path / "serve.log"
    proc = _start(env, log)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc, log)
        loop = subprocess.run(
            [sys.executable, "-m", "gateway.cli.main", "demo", "loop", "--url", url],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert loop.returncode == 0, loop.stdout[-3000:] + loop.stderr[-3000:]
        assert "promoted v1 -> v2" in loop.stdout, loop.stdout[-3000:]
        assert "[10] held-out prompts following the rule" in loop.stdout
        assert "served by support@2: the loop is closed" in loop.stdout
    finally:
        _stop(proc)


def test_worker_auto_promotes_a_passing_candidate_through_the_gateway(
    demo_base: Path, tmp_path: Path
) -> None:
    """A tenant with ``retrain_enabled`` and ``auto_promote``: ``flywheel retrain worker
    --once`` trains on its edits, gates and signs the candidate, and promotes it through the
    running gateway's admin API; the next answer comes from v2."""
    from adapters.demo import build_demo_adapter
    from gateway.core.admin_tokens import local_admin_token
    from gateway.core.config import Settings

    port, data = free_port(), tmp_path / "data"
    url = f"http://127.0.0.1:{port}"
    env = _env(tmp_path, demo_base, port, FLYWHEEL_DEMO_BOOTSTRAP="false", FLYWHEEL_GATEWAY_URL=url)
    log = tmp_path / "serve.log"
    proc = _start(env, log)
    try:
        _wait_ready(url, proc, log)
        token = local_admin_token(Settings(data_dir=data))
        admin = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, timeout=120) as http:
            created = http.post("/admin/tenants", json={"name": "auto"}, headers=admin)
            assert created.status_code == 201, created.text
            key = {"Authorization": f"Bearer {created.json()['api_key']}"}
            opt_in = {"retrain_enabled": True, "auto_promote": True, "retrain_min_feedback": 16}
            assert http.patch("/admin/tenants/auto", json=opt_in, headers=admin).status_code == 200
            adapter = build_demo_adapter(demo_base, tmp_path / "adapter", seed=7)
            registered = http.post(
                "/admin/adapters",
                json={"tenant": "auto", "name": "support", "path": str(adapter), "sign": True},
                headers=admin,
            )
            assert registered.status_code in (200, 201), registered.text
            golden = [
                {"messages": [{"role": "user", "content": f"Tell me about {t}"}],
                 "reference": f"Thank you for asking about {t}.",
                 "checks": [{"type": "max_length", "value": 5000, "hard": True}]}
                for t in ("prices", "hours", "stock")
            ]  # fmt: skip
            g = http.post(
                "/admin/golden",
                json={"tenant": "auto", "adapter": "support", "items": golden},
                headers=admin,
            )
            assert g.status_code == 201, g.text
            for i in range(24):
                body = {
                    "model": "support",
                    "max_tokens": 8,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": f"Tell me about topic {i}"}],
                }
                r = http.post("/v1/chat/completions", json=body, headers=key)
                assert r.headers["x-flywheel-adapter-version"] == "support@1"
                edit = {
                    "completion_id": r.json()["id"],
                    "edited_output": f"Thank you for asking about topic {i}.",
                }
                assert http.post("/v1/feedback", json=edit, headers=key).status_code == 200
            worker = subprocess.run(
                [sys.executable, "-m", "gateway.cli.main", "retrain", "worker", "--once"],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert worker.returncode == 0, worker.stderr[-3000:]
            r = http.post("/v1/chat/completions", json=body, headers=key)
            assert r.headers["x-flywheel-adapter-version"] == "support@2", worker.stderr[-3000:]
    finally:
        _stop(proc)
