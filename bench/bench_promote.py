"""Promote latency and failed requests across promote/rollback cycles under load.

In one process: the gateway (embedded engine, demo base, SQLite) in-process behind httpx, one
tenant with two signed versions, 32 concurrent clients (half streaming) sending requests the
whole time, and 20 cycles alternating promote and rollback.  Promote latency is measured from
the admin command being issued to the first request answered by the new version.

    .venv/bin/python -m bench.bench_promote [--cycles 20] [--clients 32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from adapters.demo import build_demo_adapter, build_demo_base
from gateway.app import create_app
from gateway.core.admin_tokens import local_admin_token
from tools.harness import make_settings, running_app, seed_tenant

BODY = {
    "model": "bot",
    "messages": [{"role": "user", "content": "status?"}],
    "max_tokens": 8,
    "temperature": 0,
}


async def run(cycles: int, clients: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = build_demo_base(root / "base")
        a1 = build_demo_adapter(base, root / "a1", seed=1)
        a2 = build_demo_adapter(base, root / "a2", seed=2)
        settings = make_settings(root / "data", f"sqlite+aiosqlite:///{root / 'fw.db'}", base)
        app = create_app(settings)
        async with running_app(app) as client:
            db = app.state.flywheel.db
            tenant = await seed_tenant(db, settings, "bench", {"bot": a1})
            from gateway.core.tenants import update_tenant
            from gateway.services.adapters import add_adapter

            async with db.transaction() as session:
                await add_adapter(
                    session, settings, tenant_name="bench", name="bot", path=a2, sign=True
                )
                # The default 600 requests/min would turn the load into 429s.
                await update_tenant(session, "bench", rpm_limit=2**31 - 1, tpm_limit=2**31 - 1)
            key = {"Authorization": f"Bearer {tenant.key}"}
            admin = {"Authorization": f"Bearer {local_admin_token(settings)}"}
            ok = failed = 0
            errors: dict[int, int] = {}
            stop = asyncio.Event()

            async def load(stream: bool) -> None:
                nonlocal ok, failed
                while not stop.is_set():
                    r = await client.post(
                        "/v1/chat/completions", json={**BODY, "stream": stream}, headers=key
                    )
                    good = r.status_code == 200 and (
                        not stream or r.text.rstrip().endswith("data: [DONE]")
                    )
                    ok, failed = (ok + 1, failed) if good else (ok, failed + 1)
                    if not good:
                        errors[r.status_code] = errors.get(r.status_code, 0) + 1

            workers = [asyncio.create_task(load(i % 2 == 0)) for i in range(clients)]
            latencies: list[float] = []
            for cycle in range(cycles):
                target = 2 if cycle % 2 == 0 else 1
                started = time.perf_counter()
                r = await client.post(
                    "/admin/adapters/bench/bot/promote", json={"version": target}, headers=admin
                )
                assert r.status_code == 200, r.text
                while True:  # first request answered by the new version
                    probe = await client.post("/v1/chat/completions", json=BODY, headers=key)
                    if probe.headers.get("x-flywheel-adapter-version") == f"bot@{target}":
                        break
                latencies.append(time.perf_counter() - started)
            stop.set()
            await asyncio.gather(*workers)
    return {
        "cycles": cycles,
        "clients": clients,
        "promote_p50_s": statistics.median(latencies),
        "promote_max_s": max(latencies),
        "requests_ok": ok,
        "requests_failed": failed,
        "failures_by_status": errors,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.cycles, args.clients))
    print(
        f"### Promote under load ({result['clients']} clients, {result['cycles']} promote/rollback cycles)\n"
    )
    print("| promote p50 (s) | promote max (s) | requests ok | requests failed |")
    print("| ---: | ---: | ---: | ---: |")
    print(
        f"| {result['promote_p50_s']:.3f} | {result['promote_max_s']:.3f} | {result['requests_ok']} | {result['requests_failed']} |"
    )
    if result["failures_by_status"]:
        print(f"\nfailures by status: {result['failures_by_status']}")
    print("\nTargets: promote under 1 s on the demo base; zero failed requests.")
    return result


if __name__ == "__main__":
    main()
