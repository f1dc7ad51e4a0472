"""``make bench``: run every benchmark, print its table, and write docs/benchmarks.md.

Each benchmark runs in its own process (they build models and servers of their own) and
prints markdown; ratios are always measured side by side within one benchmark run, because the
machine is shared and noisy.  Select some with ``python -m bench.run engine promote``: they
refresh their own sections of docs/benchmarks.md and keep the others.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES = {
    "engine": ("bench.bench_engine", "Embedded engine: batched vs one-at-a-time (issue: serving)"),
    "logging": (
        "bench.bench_logging",
        "Completion rows into PostgreSQL: batched vs per-row (issue: feedback)",
    ),
    "log_overhead": (
        "bench.bench_log_overhead",
        "Gateway p50 with logging on vs off (issue: feedback)",
    ),
    "retrain": (
        "bench.bench_retrain",
        "Round time: one whole round on SmolLM2, 120 and 1,000 edits (issue 12)",
    ),
    "learning": (
        "bench.bench_learning",
        "Learning: one round teaches SmolLM2-135M an end-user rule (issue: retrain)",
    ),
    "promote": (
        "bench.bench_promote",
        "Promote latency and failures under load (issue: gate and hot-swap)",
    ),
    "overhead": (
        "bench.bench_gateway_overhead",
        "Gateway overhead vs direct vs LiteLLM (issue: vLLM and scale)",
    ),
    "relay": (
        "bench.bench_relay",
        "Relay: streamed tokens/s and gateway CPU per token, instant and paced upstream (issue 17)",
    ),
    "many_adapters": (
        "bench.bench_many_adapters",
        "1,000 adapters over 3 replicas (issue: vLLM and scale)",
    ),
    "noisy_neighbour": (
        "bench.bench_noisy_neighbour",
        "Noisy neighbour: B's latency while A sends unservable prompts (issue: security)",
    ),
    "real_engines": (
        "bench.bench_real_engines",
        "Real engines on SmolLM2: embedded vs vLLM's CPU build, the gateway vs direct vs LiteLLM",
    ),
    "first_start": (
        "bench.bench_first_start",
        "Start-up on SmolLM2: first `flywheel serve`, a vLLM CPU replica",
    ),
    "http_client": (
        "bench.bench_http_client",
        "HTTP client and JSON on the relay path (issue 17)",
    ),
    "structured": (
        "bench.bench_structured",
        "Structured output on the embedded engine: tokens/s with and without a JSON schema (issue 13)",
    ),
}


def run_one(module: str) -> tuple[str, float, int]:
    started = time.perf_counter()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TQDM_DISABLE": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", module], cwd=ROOT, env=env, capture_output=True, text=True
    )
    output = done.stdout.strip() or done.stderr.strip()[-3000:]
    return output, time.perf_counter() - started, done.returncode


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s): {unknown}; known: {list(BENCHES)}", file=sys.stderr)
        return 2
    sections: dict[str, str] = {}
    failed = 0
    for name in names:
        module, title = BENCHES[name]
        if not (ROOT / (module.replace(".", "/") + ".py")).exists():
            continue
        print(f"== {title}", flush=True)
        output, seconds, rc = run_one(module)
        print(output, flush=True)
        failed += rc != 0
        status = "" if rc == 0 else f"\n\n**The benchmark exited with code {rc}.**"
        when = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        sections[title] = (
            f"## {title}\n\n`.venv/bin/python -m {module}` ({seconds:.0f} s, {when})\n\n"
            f"{output}{status}\n"
        )
    header = (
        "# Benchmarks\n\n"
        f"Written by `make bench` (`python -m bench.run`) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, no GPU. "
        "The machine is shared with other work, so absolute numbers move between runs; each "
        "ratio is measured side by side in one run.\n\n"
    )
    doc = ROOT / "docs" / "benchmarks.md"
    if doc.exists():
        # Refresh the sections run now; keep the others as they were measured (a subset's
        # other benchmarks, and sections written by hand, e.g. runs on another machine).
        old = _sections(doc.read_text())
        sections = {title: sections.get(title, old.get(title, "")) for _, title in _ordered(old)}
        if names != list(BENCHES):
            header = doc.read_text().split("\n## ", 1)[0].rstrip("\n") + "\n\n"
    doc.write_text(header + "\n".join(s for s in sections.values() if s))
    return 1 if failed else 0


def _sections(text: str) -> dict[str, str]:
    parts = text.split("\n## ")[1:]
    return {part.split("\n", 1)[0]: "## " + part.rstrip("\n") + "\n" for part in parts}


def _ordered(old: dict[str, str]) -> list[tuple[str, str]]:
    """Every benchmark in the run order, then sections of benchmarks no longer listed."""
    known = [(name, title) for name, (_, title) in BENCHES.items()]
    return known + [("", title) for title in old if title not in dict(known).values()]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
