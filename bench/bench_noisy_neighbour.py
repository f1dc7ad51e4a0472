"""Noisy neighbour: tenant B's latency while tenant A sends oversized prompts at its allowed rate.

One ``flywheel serve`` process (embedded engine, SQLite, the demo base unless ``--base``), two
tenants.  B sends one short chat completion at a time; A sends, at ``--a-rps`` (under
its request limit), chat requests whose prompt can never fit: either ~950 KB (refused before it
is encoded, by the prompt's length alone) or just short of that bound (encoded, on the encoder
thread, then refused).  Phases alternate (B alone, B with A huge, B with A long, ...) so drift
hits all of them alike; the table gives B's p50 and p95 per phase and the ratio to B alone.

    .venv/bin/python -m bench.bench_noisy_neighbour [--rounds 3] [--seconds 8]
    .venv/bin/python -m bench.bench_noisy_neighbour --base .flywheel/models/smollm2-135m-instruct \
        --long-chars 140000     # SmolLM2 (`make base` and one `flywheel serve` convert it)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from adapters.demo import build_demo_base
from tools.harness import free_port, start_serve, wait_until_up

ROOT = Path(__file__).resolve().parent.parent


async def b_loop(http: httpx.AsyncClient, key: str, until: float) -> list[float]:
    body = {
        "model": "demo-base",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 4,
        "temperature": 0,
    }
    times = []
    while time.perf_counter() < until:
        started = time.perf_counter()
        r = await http.post("/v1/chat/completions", json=body, headers=auth(key))
        times.append(time.perf_counter() - started)
        assert r.status_code == 200, r.text
    return times


async def a_loop(http: httpx.AsyncClient, key: str, until: float, rps: float, chars: int) -> int:
    body = {"model": "demo-base", "messages": [{"role": "user", "content": "x" * chars}]}
    sent = 0
    statuses: dict[int, int] = {}
    next_at = time.perf_counter()
    while time.perf_counter() < until:
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))  # pacing A's send rate
        next_at += 1 / rps
        r = await http.post("/v1/chat/completions", json=body, headers=auth(key))
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        sent += 1
    assert set(statuses) <= {400, 429}, statuses
    return sent


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def run(url: str, keys: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    phases: dict[str, list[float]] = {"alone": [], "A huge": [], "A long": []}
    a_sent = {"A huge": 0, "A long": 0}
    # The longest prompt the engine's O(1) bound lets through to the encoder (the demo base's
    # longest token is short, SmolLM2's ~ 16 characters): just under it, to be encoded.
    long_chars = int(args.long_chars)
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for _ in range(3):  # warm-up
            await b_loop(http, keys["b"], time.perf_counter() + 0.5)
        for _ in range(args.rounds):
            for phase in phases:
                until = time.perf_counter() + args.seconds
                jobs: list[Any] = [b_loop(http, keys["b"], until)]
                if phase != "alone":
                    chars = 950_000 if phase == "A huge" else long_chars
                    jobs.append(a_loop(http, keys["a"], until, args.a_rps, chars))
                results = await asyncio.gather(*jobs)
                phases[phase].extend(results[0])
                if phase != "alone":
                    a_sent[phase] += results[1]
    out: dict[str, Any] = {}
    for phase, times in phases.items():
        times.sort()
        out[phase] = {
            "p50": statistics.median(times) * 1000,
            "p95": times[int(len(times) * 0.95)] * 1000,
            "n": len(times),
            "a_sent": a_sent.get(phase, 0),
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--a-rps", type=float, default=112 / 60, help="A's rate (112/min)")
    parser.add_argument("--long-chars", type=int, default=22_000)
    parser.add_argument("--base", default="", help="a base model directory (default: demo)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = Path(args.base) if args.base else build_demo_base(root / "base")
        port = free_port()
        env = {
            **os.environ,
            "FLYWHEEL_DATA_DIR": str(root / "data"),
            "FLYWHEEL_BASE_MODEL": str(base),
            "FLYWHEEL_BASE_MODEL_NAME": "demo-base",
            "FLYWHEEL_PORT": str(port),
            "FLYWHEEL_LOG_LEVEL": "WARNING",
            "FLYWHEEL_DEMO_BOOTSTRAP": "false",  # two plain tenants, made below
        }
        for name in ("FLYWHEEL_DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR"):
            env.pop(name, None)
        log = root / "serve.log"
        proc = start_serve(env, log)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_up(f"{url}/readyz", proc, log, timeout=600, interval=0.5)
            cli = [sys.executable, "-m", "gateway.cli.main", "tenants", "create"]
            # B is measured, not limited; A keeps the default 600/min, above its send rate.
            keys = {
                name: subprocess.run(
                    [*cli, name, *limits], env=env, cwd=ROOT, check=True, capture_output=True,
                    text=True,
                ).stdout.strip()
                for name, limits in (("a", []), ("b", ["--rpm", "1000000", "--tpm", "100000000"]))
            }  # fmt: skip
            r = asyncio.run(run(url, keys, args))
        finally:
            proc.terminate()
            proc.wait(60)
    alone = r["alone"]["p50"]
    print(
        f"### Noisy neighbour: B's latency while A sends unservable prompts at "
        f"{args.a_rps * 60:.0f}/min\n"
    )
    print("| phase | B p50 (ms) | B p95 (ms) | B p50 / alone | B requests | A requests |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for phase, v in r.items():
        print(
            f"| {phase} | {v['p50']:.1f} | {v['p95']:.1f} | {v['p50'] / alone:.2f}x "
            f"| {v['n']} | {v['a_sent']} |"
        )
    print(
        f"\n'A huge': 950,000-character prompts, refused by length alone before encoding. "
        f"'A long': {args.long_chars:,} characters, encoded on the encoder thread, then refused. "
        "Target: B's p50 within 2x of alone."
    )
    return r


if __name__ == "__main__":
    main()
