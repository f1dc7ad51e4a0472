"""Many adapters, few slots: residency and routing under Zipf-distributed tenant traffic.

1,000 adapters (engine names all different; their directories are symlinks to a handful of
demo adapters, so the weights repeat but every load is a real load from disk) are served by
3 ``flywheel engine local`` processes with a budget of 8 adapters each, through VLLMEngine.
Requests pick their adapter from a Zipf distribution (tenant k has weight 1/k^s) and run with
a small max_tokens from a fixed number of concurrent clients.  Reports the residency hit rate
(requests that found their adapter resident, i.e. 1 - loads/requests), loads per second,
evictions, p50/p99 routing-decision time (the synchronous placement step), request latency,
and failed requests.  Prints a markdown table; ``main()`` returns the numbers.

    .venv/bin/python -m bench.bench_many_adapters [--requests 2000] [--adapters 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.core.config import Settings
from gateway.engine.base import AdapterRef, GenerationRequest, SamplingParams
from gateway.engine.vllm import VLLMEngine
from tools.harness import free_port, wait_until_up

REPLICAS = 3
BUDGET = 8
DISTINCT_WEIGHTS = 4


def build(root: Path, adapters: int) -> tuple[Path, list[AdapterRef]]:
    from adapters.demo import build_demo_adapter, build_demo_base

    base = build_demo_base(root / "demo-base")
    sources = [
        build_demo_adapter(base, root / f"src{i}", seed=500 + i) for i in range(DISTINCT_WEIGHTS)
    ]
    refs = []
    for i in range(adapters):
        link = root / "adapters" / f"v{i:04d}"
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(sources[i % DISTINCT_WEIGHTS], target_is_directory=True)
        refs.append(AdapterRef(f"fw-bench-{i:04d}", link, f"av{i:04d}"))
    return base, refs


def start_replicas(base: Path, root: Path) -> tuple[list[str], list[subprocess.Popen[bytes]]]:
    urls, procs = [], []
    for i in range(REPLICAS):
        port = free_port()
        log = (root / f"engine{i}.log").open("wb")
        cmd = [
            sys.executable,
            "-m",
            "gateway.cli.engine",
            "local",
            "--port",
            str(port),
            "--base",
            str(base),
        ]
        cmd += ["--served-model-name", "demo-base", "--max-loras", str(BUDGET)]
        env = {**os.environ, "FLYWHEEL_DATA_DIR": str(root / "data")}
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        urls.append(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 180
    for i, (url, proc) in enumerate(zip(urls, procs, strict=True)):
        left = max(0.0, deadline - time.monotonic())
        wait_until_up(f"{url}/health", proc, root / f"engine{i}.log", timeout=left)
    return urls, procs


def zipf_picks(n: int, count: int, s: float, seed: int) -> list[int]:
    weights = [1.0 / (k**s) for k in range(1, n + 1)]
    return random.Random(seed).choices(range(n), weights=weights, k=count)


async def drive(
    engine: VLLMEngine, refs: list[AdapterRef], picks: list[int], clients: int, max_tokens: int
) -> tuple[list[float], int, float, int]:
    latencies: list[float] = []
    failures = 0
    peak = 0
    queue = list(reversed(picks))
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0)

    async def client() -> None:
        nonlocal failures, peak
        while queue:
            ref = refs[queue.pop()]
            request = GenerationRequest(
                "b", ref, sampling, messages=[{"role": "user", "content": "hi"}]
            )
            started = time.perf_counter()
            try:
                chunks = [c async for c in engine.generate(request)]
                failures += chunks[-1].finish_reason is None
            except Exception:
                failures += 1
            latencies.append(time.perf_counter() - started)
            peak = max(peak, *(len(r.residency) for r in engine.replicas))

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, failures, time.perf_counter() - started, peak


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run(
    requests: int, adapters: int, clients: int, zipf_s: float, max_tokens: int
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="fw-bench-many-"))
    base, refs = build(root, adapters)
    urls, procs = start_replicas(base, root)
    try:
        settings = Settings(
            data_dir=root,
            engine="vllm",
            vllm_urls=",".join(urls),
            vllm_max_adapters_per_replica=BUDGET,
            vllm_health_interval_s=5,
            base_model_name="demo-base",
        )
        engine = VLLMEngine(settings)
        await engine.start()
        picks = zipf_picks(adapters, requests, zipf_s, seed=7)
        try:
            latencies, failures, elapsed, peak = await drive(
                engine, refs, picks, clients, max_tokens
            )
        finally:
            await engine.stop()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
    decisions = list(engine.decision_seconds)
    return {
        "requests": requests,
        "adapters": adapters,
        "distinct_adapters_requested": len(set(picks)),
        "replicas": REPLICAS,
        "budget_per_replica": BUDGET,
        "clients": clients,
        "zipf_s": zipf_s,
        "max_tokens": max_tokens,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(requests / elapsed, 1),
        "loads": engine.loads,
        "evictions": engine.evictions,
        "hit_rate": round(1 - engine.loads / requests, 4),
        "loads_per_s": round(engine.loads / elapsed, 1),
        "decision_p50_us": round(_pct(decisions, 0.5) * 1000, 1),
        "decision_p99_us": round(_pct(decisions, 0.99) * 1000, 1),
        "latency_p50_ms": round(_pct(latencies, 0.5), 1),
        "latency_p99_ms": round(_pct(latencies, 0.99), 1),
        "peak_adapters_on_a_replica": peak,
        "failed_requests": failures,
        "mean_latency_ms": round(statistics.fmean(latencies) * 1000, 1),
    }


def table(r: dict[str, Any]) -> str:
    rows = [
        (
            "requests / adapters (distinct requested)",
            f"{r['requests']} / {r['adapters']} ({r['distinct_adapters_requested']})",
        ),
        ("replicas x budget", f"{r['replicas']} x {r['budget_per_replica']}"),
        ("clients, Zipf s, max_tokens", f"{r['clients']}, {r['zipf_s']}, {r['max_tokens']}"),
        ("residency hit rate", f"{r['hit_rate'] * 100:.1f}%"),
        ("loads (loads/s)", f"{r['loads']} ({r['loads_per_s']}/s)"),
        ("evictions", str(r["evictions"])),
        ("routing decision p50 / p99", f"{r['decision_p50_us']} us / {r['decision_p99_us']} us"),
        ("request latency p50 / p99", f"{r['latency_p50_ms']} ms / {r['latency_p99_ms']} ms"),
        ("throughput", f"{r['requests_per_s']} req/s over {r['seconds']} s"),
        ("peak adapters on one replica", str(r["peak_adapters_on_a_replica"])),
        ("failed requests", str(r["failed_requests"])),
    ]
    return "\n".join(["| metric | value |", "| --- | ---: |", *(f"| {k} | {v} |" for k, v in rows)])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--max-tokens", type=int, default=4)
    args = parser.parse_args(argv)
    results = asyncio.run(
        run(args.requests, args.adapters, args.clients, args.zipf_s, args.max_tokens)
    )
    print(table(results))
    return results


if __name__ == "__main__":
    main()
