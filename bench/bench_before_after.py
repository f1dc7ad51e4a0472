"""This checkout's gateway against another source tree's, request by request, in one run.

A refactor must not make the gateway slower, and on a shared 2-core machine two runs a minute
apart differ by 30% on their own: throughput says little.  So both gateways run at once, in
front of the same instant upstream (bench_gateway_overhead's), and every client alternates its
requests between them; whatever the machine does meanwhile hits both alike.  What is compared
is each gateway process's own CPU time per request (user + system, from /proc), per mode
(JSON and streamed), over several rounds; the ratio's spread across rounds is printed with it.

    git worktree add /tmp/fw-before <commit>
    .venv/bin/python -m bench.bench_before_after --before /tmp/fw-before [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench.bench_gateway_overhead import (
    _flywheel_env,
    _one,
    _process,
    _start_flywheel,
    cpu_seconds,
)
from tools.harness import REPO, free_port, wait_until_up

CLIENTS = 16
REQUESTS = 1500  # per gateway, per mode, per round


async def _alternating(targets: list[tuple[str, dict[str, str]]], stream: bool, total: int) -> int:
    """``total`` requests to each target, every client alternating between them."""
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    clients = [
        httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60)
        for url, headers in targets
    ]
    left, errors = total, 0

    async def worker() -> None:
        nonlocal left, errors
        while left > 0:
            left -= 1
            for client in clients:
                try:
                    errors += await _one(client, stream) is not None
                except httpx.HTTPError:
                    errors += 1

    try:
        for client in clients:  # warm the connections and the gateways' caches
            for _ in range(20):
                await _one(client, stream)
        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    finally:
        for client in clients:
            await client.aclose()
    return errors


def run(
    before: Path, rounds: int = 3, requests: int = REQUESTS, after: Path = REPO
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="fw-bench-before-after-"))
    up_port = free_port()
    up_url = f"http://127.0.0.1:{up_port}"
    env = {**os.environ}
    upstream = [sys.executable, "-m", "uvicorn", "bench.bench_gateway_overhead:fake_upstream"]
    upstream += ["--port", str(up_port), "--log-level", "warning", "--no-access-log"]
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        up = stack.enter_context(_process(upstream, env, root / "upstream.log", cwd=REPO))
        wait_until_up(f"{up_url}/health", up, root / "upstream.log")
        servers: dict[str, tuple[str, dict[str, str], int]] = {}
        for name, tree in (("after", after), ("before", before)):
            port = free_port()
            fw_env = _flywheel_env(env, root / name, up_url, port)
            servers[name] = _start_flywheel(stack, name, tree, fw_env, root, port)
        targets = [(url, auth) for url, auth, _ in servers.values()]
        for stream in (False, True):
            mode = "stream" if stream else "json"
            ratios: list[float] = []
            per_request: dict[str, list[float]] = {name: [] for name in servers}
            for _ in range(rounds):
                start = {name: cpu_seconds(pid) for name, (_, _, pid) in servers.items()}
                errors = asyncio.run(_alternating(targets, stream, requests))
                for name, (_, _, pid) in servers.items():
                    per_request[name].append((cpu_seconds(pid) - start[name]) / requests * 1000)
                ratios.append(per_request["after"][-1] / per_request["before"][-1])
                results[f"{mode}_errors"] = results.get(f"{mode}_errors", 0) + errors
            results[mode] = {
                "cpu_ms_per_request": {
                    k: [round(v, 3) for v in vs] for k, vs in per_request.items()
                },
                "after_over_before": [round(r, 3) for r in ratios],
                "median_ratio": round(statistics.median(ratios), 3),
            }
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the other source tree")
    parser.add_argument(
        "--after", type=Path, default=REPO, help="the tree compared (default: this checkout)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=REQUESTS)
    args = parser.parse_args(argv)
    results = run(args.before, args.rounds, args.requests, args.after)
    print("| mode | gateway | CPU ms per request, by round | after / before, by round | median |")
    print("| --- | --- | --- | --- | ---: |")
    for mode in ("json", "stream"):
        r = results[mode]
        for name in ("before", "after"):
            cpu = ", ".join(f"{v:.3f}" for v in r["cpu_ms_per_request"][name])
            ratio = ", ".join(f"{v:.3f}" for v in r["after_over_before"]) if name == "after" else ""
            median = f"{r['median_ratio']:.3f}" if name == "after" else ""
            print(f"| {mode} | {name} | {cpu} | {ratio} | {median} |")
    print(f"errors: json {results.get('json_errors', 0)}, stream {results.get('stream_errors', 0)}")
    return results


if __name__ == "__main__":
    main()
