"""Real engines on the real model: the embedded engine against vLLM's CPU build, and the gateway
in front of vLLM against the same requests sent straight to it and through LiteLLM's proxy.

Everything runs on SmolLM2-135M-Instruct (the default base, converted from the cached wheel)
with LoRA adapters from ``adapters.demo.build_demo_adapter`` (rank 8, all linear layers), as
separate server processes on loopback, all on this machine:

1. **The machine's bound.** Memory bandwidth from a copy test (torch, one thread and all
   threads), the bytes one decode step must read (every linear weight in the serving dtype,
   plus the batch's adapters), and the bandwidth bound ``bandwidth / bytes per step x batch``.
2. **Engines.** 8 adapters x 8 concurrent greedy chat requests (one per adapter, 64 new tokens
   each) against (a) the embedded engine as ``flywheel engine local`` serves it, (b) the same
   server run from the code at ``--before`` (the engine before this benchmark's changes;
   skipped with ``--before ''``), (c) vLLM's CPU build (``make vllm``) with ``--max-loras 8``.
   Both engines get the same HTTP requests; rounds interleave the engines (the machine is
   shared, so only side-by-side ratios mean anything); generated tokens per second.
3. **Gateway.** ``flywheel serve`` (FLYWHEEL_ENGINE=vllm) in front of that vLLM replica, the
   same requests straight to vLLM, and LiteLLM's proxy in front of it: added p50 latency at
   one client (requests interleaved one by one across the three) and throughput at 8 clients
   (interleaved bursts), for the bare base and for one adapter.
4. **Start-up.** Seconds until each server answered its health route (vLLM, the embedded
   servers, the gateway, LiteLLM), page cache warm.

    .venv/bin/python -m bench.bench_real_engines [--rounds 5] [--before REV] [--no-gateway]

Needs vLLM's CPU build (``make vllm``), the base's wheel (``make base``) and, for the LiteLLM
column, LiteLLM's proxy (``make bench`` installs it into ~/.cache/flywheel-bench/litellm-venv).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.bench_gateway_overhead import litellm_bin
from tools.harness import free_port, wait_until_up

ROOT = Path(__file__).resolve().parent.parent
# The embedded engine as it was before the CPU work this benchmark measures (bfloat16 on
# capable CPUs, prepacked weights, cached LoRA gathers, growing KV cache, contiguous head input).
BEFORE_REV = "a430ae65784e7ff49b0a3f7a4950f0736d8117e8"
BASE_NAME = "smollm2"
ADAPTERS = 8
MAX_TOKENS = 64
PROMPTS = (
    "Write a detailed story about a lighthouse keeper and a storm.",
    "Explain in detail how a bicycle works, part by part.",
    "Describe a busy city market in the morning, in detail.",
    "Write a long letter to a friend about a trip to the mountains.",
    "Explain step by step how to bake a loaf of bread at home.",
    "Describe the history of the printing press and why it mattered.",
    "Write a detailed guide to caring for a houseplant.",
    "Tell me a long story about a dragon who learns to read.",
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- 1. the machine's bound ------------------------------------------------------------------


@dataclass
class Bound:
    copy_gbs_1_thread: float
    copy_gbs_all_threads: float
    threads: int
    weight_bytes: dict[str, int]  # serving dtype -> bytes of every linear weight
    adapter_bytes: int  # one adapter's LoRA weights in float32, as the embedded engine reads them

    @property
    def bandwidth(self) -> float:
        return max(self.copy_gbs_1_thread, self.copy_gbs_all_threads) * 1e9

    def bytes_per_step(self, dtype: str, adapters: int) -> int:
        return self.weight_bytes[dtype] + adapters * self.adapter_bytes

    def tokens_per_s(self, dtype: str, adapters: int, batch: int) -> float:
        return self.bandwidth / self.bytes_per_step(dtype, adapters) * batch


def copy_bandwidth(threads: int, mib: int = 256, reps: int = 8) -> float:
    """GB/s moved (read + write) by the best of ``reps`` copies of a ``mib`` MiB buffer."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        src = torch.ones(mib * 1024 * 1024 // 4, dtype=torch.float32)
        dst = torch.empty_like(src)
        best = float("inf")
        for _ in range(reps):
            started = time.perf_counter()
            dst.copy_(src)
            best = min(best, time.perf_counter() - started)
        return 2 * src.numel() * 4 / best / 1e9
    finally:
        torch.set_num_threads(before)


def measure_bound(base: Path, adapter: Path) -> Bound:
    import torch
    from safetensors import safe_open

    linear = 0
    with safe_open(str(base / "model.safetensors"), "pt") as f:
        names = list(f.keys())
        for name in names:
            shape = f.get_slice(name).get_shape()
            if len(shape) == 2 and "embed_tokens" not in name:
                linear += shape[0] * shape[1]
        config = json.loads((base / "config.json").read_text())
        if config.get("tie_word_embeddings") or not any("lm_head" in n for n in names):
            linear += config["vocab_size"] * config["hidden_size"]  # the head reads the embedding
    lora = 0
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            shape = f.get_slice(name).get_shape()
            lora += shape[0] * shape[1]
    threads = torch.get_num_threads()
    return Bound(
        copy_gbs_1_thread=copy_bandwidth(1),
        copy_gbs_all_threads=copy_bandwidth(os.cpu_count() or 1),
        threads=threads,
        weight_bytes={"float32": linear * 4, "bfloat16": linear * 2},
        adapter_bytes=lora * 4,
    )


# --- processes -------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    started_s: float = 0.0

    def stop(self) -> None:
        # Each server runs in a session of its own (vLLM is three processes): stop the group.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=60)
                if sig == signal.SIGTERM:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)  # whatever outlived it
                return
            except subprocess.TimeoutExpired:
                continue


def start_server(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    workdir: Path,
    health: str,
    *,
    port: int,
    cwd: Path = ROOT,
    timeout: float = 600.0,
) -> Server:
    log_path = workdir / f"{name}.log"
    started = time.perf_counter()
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(name, f"http://127.0.0.1:{port}", proc, log_path)
    try:
        wait_until_up(f"{server.url}{health}", proc, log_path, timeout=timeout, interval=0.1)
    except BaseException:
        server.stop()
        raise
    server.started_s = time.perf_counter() - started
    log(f"{name} up in {server.started_s:.1f} s at {server.url}")
    return server


def vllm_python() -> str:
    from gateway.cli.engine import vllm_python as configured

    python = configured(os.environ.get("FLYWHEEL_VLLM_PYTHON", ""))
    if python == "python3" or shutil.which(python) is None:
        raise SystemExit("vLLM's CPU build is not built: run `make vllm`")
    return python


VLLM = "vLLM CPU"
# vLLM's default binds its worker's one OpenMP thread to core 0 (every core but one); on a
# machine shared with other work a pinned thread cannot move off a busy core, so vLLM also
# runs unpinned with one thread, as the embedded engine does, and the better one counts.
VLLM_UNPINNED = "vLLM CPU, unpinned"
VLLM_ENVS = {
    VLLM: {},
    VLLM_UNPINNED: {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"},
}


def start_vllm(base: Path, workdir: Path, name: str = VLLM) -> Server:
    """One vLLM CPU replica sized for 8 adapters in one batch, started like an operator would."""
    port = free_port()
    env = {
        **os.environ,
        "FLYWHEEL_VLLM_PYTHON": vllm_python(),
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the default claims a share of all RAM
        **VLLM_ENVS[name],
    }
    cmd = [sys.executable, "-m", "gateway.cli.main", "engine", "vllm", "--base", str(base)]
    cmd += ["--port", str(port), "--max-loras", str(ADAPTERS), "--max-cpu-loras", "12"]
    cmd += ["--max-lora-rank", "16", "--exec", "--"]
    cmd += ["--host", "127.0.0.1", "--dtype", "bfloat16", "--max-model-len", "2048"]
    cmd += ["--served-model-name", BASE_NAME]
    log_name = "vllm-cpu" if name == VLLM else "vllm-cpu-unpinned"
    return start_server(log_name, cmd, env, workdir, "/health", port=port, timeout=900)


def export_tree(rev: str, dest: Path) -> Path:
    """The project's packages at ``rev`` (``git archive``; the repository is left untouched)."""
    data = subprocess.run(
        ["git", "archive", "--format=tar", rev, "gateway", "adapters", "feedback", "retrain"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def start_embedded(name: str, base: Path, workdir: Path, code: Path = ROOT) -> Server:
    """``flywheel engine local`` (the embedded engine behind vLLM's HTTP API), run from ``code``
    (``python -m`` puts the working directory first on sys.path, so that tree's packages win)."""
    port = free_port()
    env = {
        **os.environ,
        "FLYWHEEL_DATA_DIR": str(workdir / f"{name}-data"),
        "FLYWHEEL_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(code),
    }
    cmd = [sys.executable, "-m", "gateway.cli.main", "engine", "local", "--base", str(base)]
    cmd += ["--port", str(port), "--served-model-name", BASE_NAME]
    return start_server(name, cmd, env, workdir, "/health", port=port, cwd=code)


# --- requests --------------------------------------------------------------------------------


def chat_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }


async def load_adapters(client: httpx.AsyncClient, url: str, adapters: dict[str, Path]) -> None:
    for name, path in adapters.items():
        r = await client.post(
            f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}
        )
        if r.status_code != 200:
            raise RuntimeError(f"{url} refused adapter {name}: {r.status_code} {r.text[:300]}")


@dataclass
class Burst:
    tokens: int
    seconds: float
    texts: list[str]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


async def burst(
    client: httpx.AsyncClient, url: str, models: list[str], max_tokens: int, tag: str
) -> Burst:
    """One request per model, all sent at once; generated tokens over the wall time.

    ``tag`` starts every prompt, so no round repeats an earlier one: vLLM caches prefixes
    (per adapter), and repeating the same requests each round would let it skip the prefill.
    """

    async def one(i: int, model: str) -> tuple[int, str]:
        body = chat_body(model, f"({tag}) {PROMPTS[i % len(PROMPTS)]}", max_tokens)
        r = await client.post(f"{url}/v1/chat/completions", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"{url} {model}: {r.status_code} {r.text[:300]}")
        data = r.json()
        return data["usage"]["completion_tokens"], data["choices"][0]["message"]["content"]

    started = time.perf_counter()
    done = await asyncio.gather(*(one(i, m) for i, m in enumerate(models)))
    seconds = time.perf_counter() - started
    return Burst(sum(n for n, _ in done), seconds, [t for _, t in done])


@dataclass
class EngineRuns:
    runs: dict[str, list[Burst]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(b.tokens_per_s for b in self.runs[name])


async def compare_engines(
    servers: dict[str, Server],
    model_names: dict[str, list[str]],
    rounds: int,
    max_tokens: int,
) -> EngineRuns:
    """Warm each server with one burst, then ``rounds`` rounds, the order rotating each round."""
    out = EngineRuns({name: [] for name in servers})
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=1800, limits=limits) as client:
        for name, server in servers.items():
            await burst(client, server.url, model_names[name], max_tokens, "warm-up")
        order = list(servers)
        for r in range(rounds):
            for name in order[r % len(order) :] + order[: r % len(order)]:
                server = servers[name]
                result = await burst(
                    client, server.url, model_names[name], max_tokens, f"round {r + 1}"
                )
                out.runs[name].append(result)
                log(f"round {r + 1}: {name} {result.tokens} tokens {result.tokens_per_s:.1f} tok/s")
    return out


# --- 3. the gateway --------------------------------------------------------------------------


@dataclass
class Latencies:
    values: dict[str, list[float]] = field(default_factory=dict)  # request i, in order
    tokens: dict[str, list[int]] = field(default_factory=dict)

    def p50(self, name: str) -> float:
        return statistics.median(self.values[name]) * 1000

    def paired_added(self, name: str, base: str = "direct") -> float:
        """Median over requests of (this target's latency - direct's) for the same request
        number: the pairs ran back to back, so the machine's drift cancels out."""
        pairs = zip(self.values[name], self.values[base], strict=True)
        return statistics.median(a - b for a, b in pairs) * 1000

    def p90(self, name: str) -> float:
        ordered = sorted(self.values[name])
        return ordered[int(0.9 * (len(ordered) - 1))] * 1000


@dataclass
class Target:
    url: str
    headers: dict[str, str]
    models: dict[str, str]  # "base" / "adapter" -> what this target calls it


_TAGS = itertools.count()


async def one_request(
    client: httpx.AsyncClient, target: Target, model: str, prompt: str, max_tokens: int
) -> int:
    """One chat completion; its prompt starts with a number no other request has, so vLLM's
    prefix cache never turns one target's request into another's cache hit."""
    r = await client.post(
        f"{target.url}/v1/chat/completions",
        json=chat_body(target.models[model], f"(#{next(_TAGS)}) {prompt}", max_tokens),
        headers=target.headers,
    )
    if r.status_code != 200:
        raise RuntimeError(f"{target.url} {model}: {r.status_code} {r.text[:300]}")
    return int(r.json()["usage"]["completion_tokens"])


async def latency_one_client(
    targets: dict[str, Target], model: str, requests: int, max_tokens: int
) -> Latencies:
    """One client; request i goes to every target in turn (rotating the order), so drift in the
    machine's load hits all targets alike."""
    out = Latencies({name: [] for name in targets}, {name: [] for name in targets})
    names = list(targets)
    async with httpx.AsyncClient(timeout=600) as client:
        for name in names:  # warm connections, caches and the adapter load
            for _ in range(2):
                await one_request(client, targets[name], model, "Say hello.", max_tokens)
        for i in range(requests):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                started = time.perf_counter()
                tokens = await one_request(client, targets[name], model, "Say hello.", max_tokens)
                out.values[name].append(time.perf_counter() - started)
                out.tokens[name].append(tokens)
    return out


async def throughput(
    targets: dict[str, Target],
    model: str,
    clients: int,
    per_burst: int,
    rounds: int,
    max_tokens: int,
) -> dict[str, list[tuple[float, float]]]:
    """(requests/s, tokens/s) of bursts of ``per_burst`` requests from ``clients`` concurrent
    clients, the targets interleaved burst by burst."""
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
    names = list(targets)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                target = targets[name]
                left = per_burst
                tokens = 0

                async def worker(i: int, target: Target = target) -> None:
                    nonlocal left, tokens
                    while left > 0:
                        left -= 1
                        prompt = PROMPTS[(left + i) % len(PROMPTS)]
                        tokens += await one_request(client, target, model, prompt, max_tokens)

                started = time.perf_counter()
                await asyncio.gather(*(worker(i) for i in range(clients)))
                seconds = time.perf_counter() - started
                out[name].append((per_burst / seconds, tokens / seconds))
    return out


def start_gateway(base: Path, vllm: Server, adapter: Path, workdir: Path) -> tuple[Server, str]:
    """``flywheel serve`` on vLLM, a tenant with one signed adapter "support"; returns its key."""
    port = free_port()
    env = {
        **os.environ,
        "FLYWHEEL_DATA_DIR": str(workdir / "gateway-data"),
        "FLYWHEEL_ENGINE": "vllm",
        "FLYWHEEL_VLLM_URLS": vllm.url,
        "FLYWHEEL_BASE_MODEL": str(base),
        "FLYWHEEL_BASE_MODEL_NAME": BASE_NAME,
        # As in bench_gateway_overhead: without them every request reads its key and route
        # from the database (SQLite here); the key is still checked, the limit still applied
        # and every completion still logged.
        "FLYWHEEL_AUTH_CACHE_TTL_S": "5",
        "FLYWHEEL_ROUTE_CACHE_TTL_S": "5",
        "FLYWHEEL_DEFAULT_RPM": str(10**9),
        "FLYWHEEL_DEFAULT_TPM": str(10**12),
        "FLYWHEEL_DEMO_BOOTSTRAP": "false",
        "FLYWHEEL_LOG_LEVEL": "WARNING",
        "FLYWHEEL_PORT": str(port),
    }
    cli = [sys.executable, "-m", "gateway.cli.main"]
    key = subprocess.run(
        [*cli, "tenants", "create", "bench"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run(
        [*cli, "adapters", "add", "--tenant", "bench", "--name", "support", "--sign", str(adapter)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    server = start_server("gateway", [*cli, "serve"], env, workdir, "/readyz", port=port)
    return server, key


def start_litellm(vllm: Server, workdir: Path, adapter_name: str) -> tuple[Server, str] | None:
    lite = litellm_bin()
    if lite is None:
        return None
    port = free_port()
    models = [
        {
            "model_name": alias,
            "litellm_params": {
                "model": f"openai/{name}",
                "api_base": f"{vllm.url}/v1",
                "api_key": "sk-none",
            },
        }
        for alias, name in ((BASE_NAME, BASE_NAME), ("support", adapter_name))
    ]
    config = workdir / "litellm.yaml"
    config.write_text(json.dumps({"model_list": models}))
    master = f"sk-{os.urandom(16).hex()}"  # LiteLLM refuses to start without one
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MASTER_KEY": master,
    }
    cmd = [lite, "--config", str(config), "--port", str(port), "--host", "127.0.0.1"]
    server = start_server("litellm", cmd, env, workdir, "/health/liveliness", port=port)
    return server, master


async def engine_name_of(vllm: Server, adapter: Path) -> str:
    """The name the gateway loaded ``adapter`` under on vLLM (``fw-<version id>``)."""
    async with httpx.AsyncClient(timeout=30) as client:
        cards = (await client.get(f"{vllm.url}/v1/models")).json()["data"]
    names = [c["id"] for c in cards if str(c.get("id", "")).startswith("fw-")]
    if len(names) != 1:
        raise RuntimeError(f"expected one gateway adapter on vLLM, found {names}")
    return str(names[0])


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Results:
    bound: Bound
    engines: EngineRuns
    engine_dtypes: dict[str, str]
    starts: dict[str, float]
    latency: dict[str, Latencies] = field(default_factory=dict)
    thru: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)
    gateway_note: str = ""


def real_base() -> Path:
    from adapters.base_models import SMOLLM2, convert

    cache = Path(os.environ.get("FLYWHEEL_CACHE_DIR") or Path.home() / ".cache" / "flywheel")
    return convert(cache / "models" / f"smollm2-135m-instruct-{SMOLLM2.version}", SMOLLM2)


def build_adapters(base: Path, root: Path) -> dict[str, Path]:
    from adapters.demo import build_demo_adapter

    return {
        f"lora-{i}": build_demo_adapter(base, root / f"lora-{i}", seed=100 + i, rank=8, scale=0.02)
        for i in range(ADAPTERS)
    }


def run(args: argparse.Namespace) -> Results:
    base = real_base()
    workdir = Path(tempfile.mkdtemp(prefix="fw-bench-real-"))
    log(f"work directory {workdir}")
    adapters = build_adapters(base, workdir / "adapters")
    bound = measure_bound(base, next(iter(adapters.values())))
    log(f"copy bandwidth {bound.copy_gbs_1_thread:.1f} / {bound.copy_gbs_all_threads:.1f} GB/s")
    servers: dict[str, Server] = {}
    starts: dict[str, float] = {}
    try:
        # One at a time, so each start-up time is its own.
        servers[VLLM] = start_vllm(base, workdir)
        servers[VLLM_UNPINNED] = start_vllm(base, workdir, VLLM_UNPINNED)
        servers["embedded"] = start_embedded("embedded", base, workdir)
        if args.before:
            tree = export_tree(args.before, workdir / "before")
            servers[f"embedded @{args.before[:7]}"] = start_embedded(
                "embedded-before", base, workdir, code=tree
            )
        starts.update({name: s.started_s for name, s in servers.items()})
        names = list(adapters)
        models = {name: names for name in servers}

        async def engines() -> EngineRuns:
            async with httpx.AsyncClient(timeout=600) as client:
                for server in servers.values():
                    await load_adapters(client, server.url, adapters)
            return await compare_engines(servers, models, args.rounds, args.max_tokens)

        engine_runs = asyncio.run(engines())
        dtypes = {
            VLLM: "bfloat16",
            VLLM_UNPINNED: "bfloat16",
            "embedded": _embedded_dtype(ROOT, base),
        }
        if args.before:
            dtypes[f"embedded @{args.before[:7]}"] = _embedded_dtype(workdir / "before", base)
        results = Results(bound, engine_runs, dtypes, starts)
        for name in [n for n in servers if n != VLLM]:
            servers.pop(name).stop()  # free the CPU and memory for the gateway runs
        if args.gateway:
            gateway_runs(results, base, servers[VLLM], adapters["lora-0"], workdir, args)
        return results
    finally:
        for server in servers.values():
            server.stop()


def _embedded_dtype(code: Path, base: Path) -> str:
    """The dtype ``auto`` resolves to in the code at ``code`` (asked in a subprocess)."""
    probe = (
        "import sys; from gateway.engine.embedded import resolve_dtype; "
        "import inspect; p = inspect.signature(resolve_dtype).parameters; "
        "args = ('auto', 'cpu', sys.argv[1]) if len(p) > 2 else ('auto', 'cpu'); "
        "print(str(resolve_dtype(*args)).removeprefix('torch.'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(base)],
        cwd=code,
        env={**os.environ, "PYTHONPATH": str(code)},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def gateway_runs(
    results: Results,
    base: Path,
    vllm: Server,
    adapter: Path,
    workdir: Path,
    args: argparse.Namespace,
) -> None:
    gateway, key = start_gateway(base, vllm, adapter, workdir)
    lite: tuple[Server, str] | None = None
    try:
        results.starts["gateway (vllm engine)"] = gateway.started_s
        gw = Target(
            gateway.url,
            {"authorization": f"Bearer {key}"},
            {"base": BASE_NAME, "adapter": "support"},
        )

        async def warm() -> str:
            async with httpx.AsyncClient(timeout=600) as client:
                await one_request(client, gw, "adapter", "Say hello.", 4)  # loads it on vLLM
            return await engine_name_of(vllm, adapter)

        engine_name = asyncio.run(warm())
        targets = {
            "direct": Target(vllm.url, {}, {"base": BASE_NAME, "adapter": engine_name}),
            "flywheel": gw,
        }
        lite = start_litellm(vllm, workdir, engine_name)
        if lite is None:
            results.gateway_note = "LiteLLM not run: no litellm executable found"
        else:
            results.starts["LiteLLM proxy"] = lite[0].started_s
            targets["litellm"] = Target(
                lite[0].url,
                {"authorization": f"Bearer {lite[1]}"},
                {"base": BASE_NAME, "adapter": "support"},
            )
        for model in ("base", "adapter"):
            log(f"latency, 1 client, {model}")
            results.latency[model] = asyncio.run(
                latency_one_client(targets, model, args.latency_requests, args.latency_tokens)
            )
            log(f"throughput, {args.clients} clients, {model}")
            results.thru[model] = asyncio.run(
                throughput(
                    targets,
                    model,
                    args.clients,
                    args.burst_requests,
                    args.burst_rounds,
                    args.burst_tokens,
                )
            )
    finally:
        if lite is not None:
            lite[0].stop()
        gateway.stop()


# --- the report ------------------------------------------------------------------------------


def report(results: Results, args: argparse.Namespace) -> str:
    b = results.bound
    out: list[str] = []
    out.append(
        f"SmolLM2-135M-Instruct, {ADAPTERS} LoRA adapters (rank 8, all linear layers), "
        f"{os.cpu_count()} CPUs shared with other work (other engineers' training ran at the "
        "same time): absolute numbers move between runs, the ratios are side by side.\n"
    )
    out.append("### The machine's bound\n")
    out.append("| | value |\n| --- | ---: |")
    out.append(f"| copy bandwidth, 1 thread (read + write) | {b.copy_gbs_1_thread:.1f} GB/s |")
    out.append(
        f"| copy bandwidth, {os.cpu_count()} threads (read + write) | "
        f"{b.copy_gbs_all_threads:.1f} GB/s |"
    )
    for dtype in ("float32", "bfloat16"):
        out.append(
            f"| linear weights read per decode step, {dtype} | {b.weight_bytes[dtype] / 1e6:.0f} MB |"
        )
    out.append(f"| one adapter's LoRA weights (float32) | {b.adapter_bytes / 1e6:.1f} MB |")
    for dtype in ("float32", "bfloat16"):
        out.append(
            f"| bound, {dtype}, batch {ADAPTERS} + {ADAPTERS} adapters | "
            f"{b.tokens_per_s(dtype, ADAPTERS, ADAPTERS):.0f} tok/s |"
        )
    out.append(
        "\nbound = best copy bandwidth / (linear weights + the batch's adapters) x batch: every "
        "decode step streams every weight once for the whole batch (the KV cache, under 10 MB "
        "here, is left out).\n"
    )

    out.append(
        f"### Embedded engine vs vLLM's CPU build ({ADAPTERS} adapters x {ADAPTERS} concurrent "
        f"greedy chat requests, {args.max_tokens} new tokens at most)\n"
    )
    out.append(
        "| engine | dtype | rounds | median tok/s | min | max | tokens per round | vs best vLLM |"
    )
    out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    e = results.engines
    best = max((n for n in e.runs if n.startswith(VLLM)), key=e.median)
    vllm = e.median(best)
    for name, runs in e.runs.items():
        tps = [r.tokens_per_s for r in runs]
        tokens = sorted({r.tokens for r in runs})
        out.append(
            f"| {name} | {results.engine_dtypes.get(name, '?')} | {len(runs)} "
            f"| {e.median(name):.1f} | {min(tps):.1f} | {max(tps):.1f} "
            f"| {'/'.join(map(str, tokens))} | {e.median(name) / vllm:.2f}x |"
        )
    emb = e.median("embedded")
    bf16_bound = b.tokens_per_s("bfloat16", ADAPTERS, ADAPTERS)
    out.append(
        f"\nembedded / {best} = **{emb / vllm:.2f}x** (target 1.5x: "
        f"{'met' if emb / vllm >= 1.5 else 'MISSED'}); the embedded engine reaches "
        f"{100 * emb / bf16_bound:.0f} % of the bfloat16 bandwidth bound, vLLM "
        f"{100 * vllm / bf16_bound:.0f} %."
    )
    before = [n for n in e.runs if n.startswith("embedded @")]
    if before:
        out.append(
            f"embedded now / {before[0]} (before the CPU work) = "
            f"**{emb / e.median(before[0]):.2f}x**."
        )
    out.append(
        "Each engine runs one compute thread: the embedded engine leaves a core to its event "
        "loop; vLLM binds its worker's threads to every core but one (here core 0), and runs "
        "unpinned with VLLM_CPU_OMP_THREADS_BIND=nobind OMP_NUM_THREADS=1. Rounds interleave "
        "the engines, the order rotating each round; every round's prompts are new (vLLM "
        "caches prefixes).\n"
    )

    if results.latency:
        names = list(next(iter(results.latency.values())).values)
        out.append(
            f"### The gateway in front of vLLM's CPU build vs direct vs LiteLLM\n\n"
            f"Latency: 1 client, {args.latency_requests} requests per target and model, each "
            f"request sent to every target in turn, {args.latency_tokens} new tokens. "
            f"Throughput: {args.clients} clients, bursts of {args.burst_requests} requests "
            f"({args.burst_tokens} new tokens at most), {args.burst_rounds} bursts per target, "
            "interleaved.\n"
        )
        out.append(
            f"| model | target | p50 ms, 1 client | p90 ms | added p50 ms (paired) | tokens "
            f"| req/s, {args.clients} clients | tok/s | vs direct |"
        )
        out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for model, lat in results.latency.items():
            thru = results.thru[model]
            direct_rps = statistics.median(r for r, _ in thru["direct"])
            for name in names:
                rps = statistics.median(r for r, _ in thru[name])
                tok_s = statistics.median(t for _, t in thru[name])
                added = (
                    "-"
                    if name == "direct"
                    else f"{lat.p50(name) - lat.p50('direct'):+.1f} ({lat.paired_added(name):+.1f})"
                )
                mean_tokens = statistics.mean(lat.tokens[name])
                out.append(
                    f"| {model} | {name} | {lat.p50(name):.1f} | {lat.p90(name):.1f} | {added} "
                    f"| {mean_tokens:.1f} | {rps:.2f} | {tok_s:.1f} | {rps / direct_rps:.2f}x |"
                )
        out.append(
            "\nadded p50 = this target's p50 - direct's; in brackets the median of the paired "
            "differences (request i to this target - request i straight to vLLM, run back to "
            "back), which the machine's drift disturbs less. tokens = mean completion tokens of "
            "the latency requests."
        )
        for model in results.latency:
            thru = results.thru[model]
            lat = results.latency[model]
            if "litellm" in thru:
                fw = statistics.median(r for r, _ in thru["flywheel"])
                lite = statistics.median(r for r, _ in thru["litellm"])
                out.append(
                    f"\n{model}: flywheel / LiteLLM throughput at {args.clients} clients = "
                    f"**{fw / lite:.2f}x**; added latency at 1 client (paired median): flywheel "
                    f"{lat.paired_added('flywheel'):+.1f} ms, LiteLLM "
                    f"{lat.paired_added('litellm'):+.1f} ms."
                )
        if results.gateway_note:
            out.append(f"\n{results.gateway_note}.")
        out.append("")

    out.append("### Start-up (page cache warm, one server at a time)\n")
    out.append("| server | seconds until its health route answered |\n| --- | ---: |")
    for name, seconds in results.starts.items():
        out.append(f"| {name} | {seconds:.1f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    parser.add_argument(
        "--before",
        default=BEFORE_REV,
        help="git revision of the 'before' embedded engine; '' skips it",
    )
    parser.add_argument("--no-gateway", dest="gateway", action="store_false")
    parser.add_argument("--latency-requests", type=int, default=40)
    parser.add_argument("--latency-tokens", type=int, default=8)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--burst-requests", type=int, default=16)
    parser.add_argument("--burst-rounds", type=int, default=3)
    parser.add_argument("--burst-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    results = run(args)
    print(report(results, args))


if __name__ == "__main__":
    main()
