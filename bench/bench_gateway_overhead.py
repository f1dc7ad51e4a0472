"""What the gateway adds in front of an engine: throughput and latency, against LiteLLM's proxy.

One run starts, as separate processes on loopback: an upstream that answers instantly with
OpenAI-shaped responses and vLLM's adapter routes (a raw ASGI app on uvicorn), ``flywheel
serve`` with FLYWHEEL_ENGINE=vllm pointed at it, and LiteLLM's proxy in front of the same
upstream when a ``litellm`` executable is found (LITELLM_BIN, PATH, or the bench venv below).
The same load (httpx async clients, bounded request counts) goes (a) straight to the upstream,
(b) through Flywheel, (c) through LiteLLM, at 1, 32 and 128 concurrent clients, streaming and
not.  Prints a markdown table; ``main()`` returns the numbers.

Flywheel runs with FLYWHEEL_AUTH_CACHE_TTL_S=5 and FLYWHEEL_ROUTE_CACHE_TTL_S=5: with the
defaults (0) every request reads its API key and route from the database.  It still checks
the key, the rate limit and writes every completion to its log; LiteLLM runs with a master key
(checked per request) and no database.

    .venv/bin/python -m bench.bench_gateway_overhead [--scale 1.0]

LiteLLM lives in its own virtualenv so it never changes the project's packages:
    python3.11 -m venv ~/.cache/flywheel-bench/litellm-venv
    ~/.cache/flywheel-bench/litellm-venv/bin/pip install 'litellm[proxy]'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from tools.harness import REPO, free_port, wait_until_up

BASE = "fake-base"
LITELLM_VENV_BIN = Path.home() / ".cache/flywheel-bench/litellm-venv/bin/litellm"
CONCURRENCY = (1, 32, 128)
REQUESTS = {1: 1000, 32: 1600, 128: 2560}
BODY = {
    "model": BASE,
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 8,
    "temperature": 0,
}

# --- the instant upstream ------------------------------------------------------------------

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
_LORAS: dict[str, str] = {}


async def _reply(send: Send, status: int, body: bytes, ctype: bytes) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _event(obj: str, model: str, choices: list[Any], usage: Any = None) -> bytes:
    data: dict[str, Any] = {"id": "up-1", "object": obj, "created": 0, "model": model}
    data["choices"] = choices
    if usage is not None:
        data["usage"] = usage
    return b"data: " + json.dumps(data).encode() + b"\n\n"


async def fake_upstream(scope: Scope, receive: Receive, send: Send) -> None:
    """An OpenAI/vLLM-shaped server that answers at once ("Hello world", 2 tokens)."""
    if scope["type"] != "http":
        return
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path == "/health":
        return await _reply(send, 200, b"", b"text/plain")
    if path == "/v1/models":
        cards = [{"id": BASE, "object": "model", "root": BASE, "parent": None}]
        cards += [
            {"id": n, "object": "model", "root": p, "parent": BASE} for n, p in _LORAS.items()
        ]
        return await _reply(
            send, 200, json.dumps({"object": "list", "data": cards}).encode(), b"application/json"
        )
    body = json.loads(raw or b"{}")
    if path == "/v1/load_lora_adapter":
        _LORAS[body["lora_name"]] = body["lora_path"]
        return await _reply(send, 200, b"Success: LoRA adapter added successfully.", b"text/plain")
    if path == "/v1/unload_lora_adapter":
        if _LORAS.pop(body.get("lora_name", ""), None) is None:
            err = {
                "error": {
                    "message": "cannot be found",
                    "type": "NotFoundError",
                    "param": None,
                    "code": 404,
                }
            }
            return await _reply(send, 404, json.dumps(err).encode(), b"application/json")
        return await _reply(
            send, 200, b"Success: LoRA adapter removed successfully.", b"text/plain"
        )
    if path not in ("/v1/chat/completions", "/v1/completions"):
        return await _reply(send, 404, b'{"detail":"Not Found"}', b"application/json")
    chat = path.endswith("chat/completions")
    model = body.get("model", BASE)
    if not body.get("stream"):
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello world"},
            }
        else:
            choice = {"index": 0, "text": "Hello world"}
        choice.update(finish_reason="stop", logprobs=None)
        out: dict[str, Any] = {
            "id": "up-1",
            "object": "chat.completion" if chat else "text_completion",
            "created": 0,
            "model": model,
            "choices": [choice],
            "usage": _USAGE,
        }
        return await _reply(send, 200, json.dumps(out).encode(), b"application/json")
    obj = "chat.completion.chunk" if chat else "text_completion"

    def piece(text: str, finish: str | None) -> dict[str, Any]:
        if chat:
            return {"index": 0, "delta": {"content": text}, "finish_reason": finish}
        return {"index": 0, "text": text, "finish_reason": finish}

    events = [
        _event(obj, model, [piece("Hello", None)]),
        _event(obj, model, [piece(" world", "stop")]),
    ]
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append(_event(obj, model, [], _USAGE))
    events.append(b"data: [DONE]\n\n")
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for event in events:
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


# --- processes -----------------------------------------------------------------------------


@contextmanager
def _process(
    cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def litellm_bin() -> str | None:
    for candidate in (
        os.environ.get("LITELLM_BIN"),
        shutil.which("litellm"),
        str(LITELLM_VENV_BIN),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return None


# --- load ----------------------------------------------------------------------------------


@dataclass
class Row:
    target: str
    stream: bool
    clients: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    error_kinds: str = ""  # e.g. "ReadTimeout x2"
    cpu_ms_per_request: float | None = None  # the server's own CPU, where its pid is known


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _one(client: httpx.AsyncClient, stream: bool) -> str | None:
    """None when the answer is whole; otherwise what was wrong with it."""
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}} if stream else BODY
    if not stream:
        r = await client.post("/v1/chat/completions", json=body)
        if r.status_code != 200:
            return f"HTTP {r.status_code}"
        return None if r.json()["choices"] else "no choices"
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        done = False
        async for line in r.aiter_lines():
            done = done or line == "data: [DONE]"
        if r.status_code != 200:
            return f"HTTP {r.status_code}"
        return None if done else "no [DONE]"


async def _load(
    url: str, headers: dict[str, str], clients: int, total: int, stream: bool
) -> tuple[list[float], Counter[str], float]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=60
    ) as client:
        for _ in range(min(20, total)):  # warm the connections and the gateway's caches
            await _one(client, stream)
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        left = total

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                started = time.perf_counter()
                try:
                    wrong = await _one(client, stream)
                except httpx.HTTPError as exc:
                    wrong = type(exc).__name__
                latencies.append(time.perf_counter() - started)
                if wrong is not None:
                    errors[wrong] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return latencies, errors, time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its direct children (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        # after the command: state, ppid, ..., utime (14th field overall), stime (15th)
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def measure(
    targets: dict[str, tuple[str, dict[str, str]]],
    scale: float,
    pids: dict[str, int] | None = None,
) -> list[Row]:
    """Each target under each load, interleaved; ``pids`` adds the server's CPU per request,
    which a busy machine disturbs far less than throughput (it slows everyone alike)."""
    rows: list[Row] = []
    pids = pids or {}
    for stream in (False, True):
        for clients in CONCURRENCY:
            total = max(clients, int(REQUESTS[clients] * scale))
            for name, (url, headers) in targets.items():  # interleaved: drift hits all alike
                pid = pids.get(name)
                cpu_before = cpu_seconds(pid) if pid else 0.0
                latencies, errors, elapsed = await _load(url, headers, clients, total, stream)
                cpu = (cpu_seconds(pid) - cpu_before) / total * 1000 if pid else None
                rows.append(
                    Row(
                        name,
                        stream,
                        clients,
                        total,
                        sum(errors.values()),
                        total / elapsed,
                        _pct(latencies, 0.5),
                        _pct(latencies, 0.99),
                        ", ".join(f"{kind} x{n}" for kind, n in errors.most_common()),
                        cpu,
                    )
                )
    return rows


def table(rows: list[Row]) -> str:
    direct = {(r.stream, r.clients): r for r in rows if r.target == "direct"}
    lines = [
        "| mode | clients | target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms "
        "| server CPU ms/req | errors |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        d = direct[(r.stream, r.clients)]
        added = (
            ""
            if r.target == "direct"
            else f"{r.p50_ms - d.p50_ms:+.2f} | {r.p99_ms - d.p99_ms:+.2f}"
        )
        added = added or "- | -"
        lines.append(
            f"| {'stream' if r.stream else 'json'} | {r.clients} | {r.target} | {r.rps:.0f} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {added} "
            f"| {'-' if r.cpu_ms_per_request is None else f'{r.cpu_ms_per_request:.3f}'} "
            f"| {r.errors}{f' ({r.error_kinds})' if r.error_kinds else ''} |"
        )
    return "\n".join(lines)


def summary(rows: list[Row], litellm: str) -> dict[str, Any]:
    get = {(r.target, r.stream, r.clients): r for r in rows}
    out: dict[str, Any] = {"rows": [asdict(r) for r in rows], "litellm": litellm}
    for stream in (False, True):
        mode = "stream" if stream else "json"
        fw, direct = get[("flywheel", stream, 1)], get[("direct", stream, 1)]
        out[f"{mode}_added_p50_ms_1_client"] = round(fw.p50_ms - direct.p50_ms, 3)
        lite = get.get(("litellm", stream, 32))
        if lite is not None:
            out[f"{mode}_throughput_vs_litellm_32_clients"] = round(
                get[("flywheel", stream, 32)].rps / lite.rps, 2
            )
        for clients in CONCURRENCY:
            old = get.get(("flywheel-before", stream, clients))
            if old is not None:
                now = get[("flywheel", stream, clients)]
                out[f"{mode}_throughput_vs_before_{clients}_clients"] = round(now.rps / old.rps, 3)
                if now.cpu_ms_per_request and old.cpu_ms_per_request:
                    out[f"{mode}_cpu_per_request_vs_before_{clients}_clients"] = round(
                        now.cpu_ms_per_request / old.cpu_ms_per_request, 3
                    )
    return out


def _flywheel_env(env: dict[str, str], data_dir: Path, up_url: str, port: int) -> dict[str, str]:
    return {
        **env,
        "FLYWHEEL_DATA_DIR": str(data_dir),
        "FLYWHEEL_ENGINE": "vllm",
        "FLYWHEEL_VLLM_URLS": up_url,
        "FLYWHEEL_BASE_MODEL_NAME": BASE,
        "FLYWHEEL_AUTH_CACHE_TTL_S": "5",
        "FLYWHEEL_ROUTE_CACHE_TTL_S": "5",
        "FLYWHEEL_DEFAULT_RPM": str(10**9),
        "FLYWHEEL_DEFAULT_TPM": str(10**12),
        "FLYWHEEL_DEMO_BOOTSTRAP": "false",
        "FLYWHEEL_LOG_LEVEL": "WARNING",
        "FLYWHEEL_PORT": str(port),
    }


def _start_flywheel(
    stack: ExitStack,
    name: str,
    tree: Path,
    env: dict[str, str],
    root: Path,
    port: int,
    workers: int = 1,
) -> tuple[str, dict[str, str], int]:
    """``flywheel serve [--workers N]`` from the source tree ``tree`` (its own data directory
    and tenant)."""
    py = sys.executable
    key = subprocess.run(
        [py, "-m", "gateway.cli.main", "tenants", "create", "bench"],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    log = root / f"{name}.log"
    proc = stack.enter_context(
        _process(
            [py, "-m", "gateway.cli.main", "serve"]
            + (["--workers", str(workers)] if workers != 1 else []),
            env,
            log,
            cwd=tree,
        )
    )
    wait_until_up(f"http://127.0.0.1:{port}/readyz", proc, log)
    return f"http://127.0.0.1:{port}", {"authorization": f"Bearer {key}"}, proc.pid


def run(scale: float = 1.0, *, before: Path | None = None, litellm: bool = True) -> dict[str, Any]:
    """Measure; ``before`` is another source tree of Flywheel, measured beside this one."""
    root = Path(tempfile.mkdtemp(prefix="fw-bench-overhead-"))
    up_port, fw_port, lite_port = free_port(), free_port(), free_port()
    up_url = f"http://127.0.0.1:{up_port}"
    py = sys.executable
    env = {**os.environ}
    upstream_cmd = [
        py,
        "-m",
        "uvicorn",
        "bench.bench_gateway_overhead:fake_upstream",
        "--port",
        str(up_port),
    ]
    upstream_cmd += ["--log-level", "warning", "--no-access-log"]
    lite = litellm_bin() if litellm else None
    litellm_note = f"LiteLLM proxy ({lite})" if lite else "not run: no litellm executable found"
    with ExitStack() as stack:
        up = stack.enter_context(_process(upstream_cmd, env, root / "upstream.log"))
        wait_until_up(f"{up_url}/health", up, root / "upstream.log")
        targets: dict[str, tuple[str, dict[str, str]]] = {"direct": (up_url, {})}
        fw_env = _flywheel_env(env, root / "fw", up_url, fw_port)
        pids: dict[str, int] = {}
        url, auth, pids["flywheel"] = _start_flywheel(
            stack, "flywheel", REPO, fw_env, root, fw_port
        )
        targets["flywheel"] = (url, auth)
        if before is not None:
            port = free_port()
            old_env = _flywheel_env(env, root / "fw-before", up_url, port)
            url, auth, pids["flywheel-before"] = _start_flywheel(
                stack, "flywheel-before", before, old_env, root, port
            )
            targets["flywheel-before"] = (url, auth)
        if lite is not None:
            config = root / "litellm.yaml"
            model = {"model": f"openai/{BASE}", "api_base": f"{up_url}/v1", "api_key": "sk-none"}
            config.write_text(
                json.dumps({"model_list": [{"model_name": BASE, "litellm_params": model}]})
            )
            master = f"sk-{os.urandom(16).hex()}"  # LiteLLM refuses to start without one
            lite_env = {**env, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
            lite_env["LITELLM_MASTER_KEY"] = master
            lite_cmd = [
                lite,
                "--config",
                str(config),
                "--port",
                str(lite_port),
                "--host",
                "127.0.0.1",
            ]
            lp = stack.enter_context(_process(lite_cmd, lite_env, root / "litellm.log"))
            wait_until_up(
                f"http://127.0.0.1:{lite_port}/health/liveliness",
                lp,
                root / "litellm.log",
                timeout=180,
            )
            targets["litellm"] = (
                f"http://127.0.0.1:{lite_port}",
                {"authorization": f"Bearer {master}"},
            )
        rows = asyncio.run(measure(targets, scale, pids))
    return {**summary(rows, litellm_note), "table": table(rows)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the request counts")
    parser.add_argument(
        "--before",
        type=Path,
        help="another Flywheel source tree (e.g. a git worktree of an older commit), measured "
        "beside this one in the same run",
    )
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    args = parser.parse_args(argv)
    results = run(args.scale, before=args.before, litellm=not args.no_litellm)
    print(results.pop("table"))
    print()
    print({k: v for k, v in results.items() if k != "rows"})
    print()
    print(verdict(results))
    return results


def verdict(results: dict[str, Any]) -> str:
    """The issue's two targets, each met or missed in this run."""

    def judged(value: float | None, ok: bool, unit: str) -> str:
        return "not measured" if value is None else f"{value}{unit} ({'met' if ok else 'MISSED'})"

    parts = []
    for mode in ("json", "stream"):
        added = results.get(f"{mode}_added_p50_ms_1_client")
        ratio = results.get(f"{mode}_throughput_vs_litellm_32_clients")
        parts.append(
            f"{mode}: added p50 at 1 client {judged(added, (added or 0) <= 1.0, ' ms')}, "
            f"throughput at 32 clients {judged(ratio, (ratio or 0) >= 3.0, 'x LiteLLM')}"
        )
    return (
        "Targets: added p50 at most 1 ms at 1 client; at least 3x LiteLLM's throughput at 32 "
        "clients. This run: " + "; ".join(parts) + "."
    )


if __name__ == "__main__":
    main()
