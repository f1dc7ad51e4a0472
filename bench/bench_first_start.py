"""Start-up: ``flywheel serve`` on an empty data directory (what ``make serve`` does first), the
same data directory started again, and one vLLM CPU replica, in seconds until each answers its
health route (the gateway's ``/healthz``, vLLM's ``/health``).

The first start converts SmolLM2-135M-Instruct from the wheel ``make base`` fetched (it must be
in the cache already: nothing is downloaded here) and bootstraps the demo tenants, training
their house-style adapters on the real base (gateway/services/bootstrap.py). Its log lines are time-
stamped as they arrive, so the table splits the start into its phases. The machine is shared
with other work: seconds here are this run's, not a constant.

    .venv/bin/python -m bench.bench_first_start [--no-vllm]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import httpx

from tools.harness import free_port

ROOT = Path(__file__).resolve().parent.parent
# Log lines that open a phase of the first start (gateway/services/bootstrap.py, adapters/base_models.py).
PHASES = (
    ("converting", re.compile(r"converting .* \(first start only\)")),
    ("training", re.compile(r"training the demo .* house style")),
)


@dataclass
class Start:
    seconds: float  # until the health route answered 200
    marks: list[tuple[float, str]] = field(default_factory=list)  # (seconds, log line)

    def first(self, pattern: re.Pattern[str]) -> float | None:
        return next((t for t, line in self.marks if pattern.search(line)), None)


def timed_start(
    cmd: list[str], env: dict[str, str], health: str, log: Path, timeout: float
) -> Start:
    """Run ``cmd`` until ``health`` answers 200, stamping each output line; then stop it."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    marks: list[tuple[float, str]] = []

    def read() -> None:
        assert proc.stdout is not None
        with log.open("w") as out:
            for line in proc.stdout:
                marks.append((time.perf_counter() - started, line.rstrip()))
                out.write(line)
                out.flush()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while True:
            try:
                if httpx.get(health, timeout=1.0).status_code == 200:
                    return Start(time.perf_counter() - started, marks)
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.perf_counter() - started > timeout:
                tail = "\n".join(line for _, line in marks[-40:])
                raise RuntimeError(f"{cmd[2:5]} did not come up (see {log}):\n{tail}")
            time.sleep(0.1)  # polling a health route, not standing in for synchronisation
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=60)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        reader.join(timeout=10)


def serve_start(data_dir: Path, workdir: Path, name: str, timeout: float) -> Start:
    port = free_port()
    env = {
        **os.environ,
        "FLYWHEEL_DATA_DIR": str(data_dir),
        "FLYWHEEL_PORT": str(port),
        "FLYWHEEL_LOG_LEVEL": "INFO",
        "HF_HUB_OFFLINE": "1",
        "TQDM_DISABLE": "1",
    }
    for key in ("FLYWHEEL_BASE_MODEL", "FLYWHEEL_ENGINE", "FLYWHEEL_DATABASE_URL"):
        env.pop(key, None)  # the defaults, as a new user has them
    cmd = [sys.executable, "-m", "gateway.cli.main", "serve"]
    health = f"http://127.0.0.1:{port}/healthz"
    return timed_start(cmd, env, health, workdir / f"{name}.log", timeout)


def vllm_start(workdir: Path, timeout: float) -> Start:
    from bench.bench_real_engines import real_base, vllm_python

    port = free_port()
    env = {
        **os.environ,
        "FLYWHEEL_VLLM_PYTHON": vllm_python(),
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    cmd = [sys.executable, "-m", "gateway.cli.main", "engine", "vllm", "--base", str(real_base())]
    cmd += ["--port", str(port), "--max-loras", "4", "--max-cpu-loras", "8"]
    cmd += ["--max-lora-rank", "16", "--exec", "--", "--host", "127.0.0.1"]
    cmd += ["--dtype", "bfloat16", "--max-model-len", "2048"]
    return timed_start(cmd, env, f"http://127.0.0.1:{port}/health", workdir / "vllm.log", timeout)


def phases(start: Start) -> list[tuple[str, float]]:
    """(phase, seconds) from the log marks: imports and set-up, conversion, training, the rest."""
    points = [("start", 0.0)]
    for name, pattern in PHASES:
        at = start.first(pattern)
        if at is not None:
            points.append((name, at))
    points.append(("health", start.seconds))
    labels = {
        "start": "imports, settings, database migrations",
        "converting": "SmolLM2 converted from the wheel, the engine loads it",
        "training": "demo adapters trained and signed, tenants created",
    }
    return [(labels[a], t2 - t1) for (a, t1), (_, t2) in pairwise(points)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--no-vllm", dest="vllm", action="store_false")
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="fw-bench-start-"))
    data = workdir / "data"
    first = serve_start(data, workdir, "serve-first", args.timeout)
    print(f"first start: {first.seconds:.0f} s", file=sys.stderr, flush=True)
    again = serve_start(data, workdir, "serve-again", args.timeout)
    vllm = vllm_start(workdir, args.timeout) if args.vllm else None

    rows = ["| start | seconds until its health route answered |", "| --- | ---: |"]
    rows.append(f"| `flywheel serve`, empty data directory (first start) | {first.seconds:.1f} |")
    for label, seconds in phases(first):
        rows.append(f"| &nbsp;&nbsp;of which: {label} | {seconds:.1f} |")
    rows.append(f"| `flywheel serve`, the same directory again | {again.seconds:.1f} |")
    if vllm is not None:
        rows.append(
            f"| one vLLM CPU replica (`flywheel engine vllm --exec`) | {vllm.seconds:.1f} |"
        )
    print(
        "SmolLM2-135M-Instruct; the wheel already fetched (`make base`), the page cache warm "
        f"(the wheel and the Python packages were read before); {os.cpu_count()} CPUs shared "
        "with other work.\n"
    )
    print("\n".join(rows))
    print(
        "\nThe phases are cut where the first start logs `converting ...` and `training the "
        "demo ... house style` (the first of the two adapters); /healthz answers once the "
        "lifespan start-up is done."
    )


if __name__ == "__main__":
    main()
