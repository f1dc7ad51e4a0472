"""The vllm backend end to end against real ``flywheel engine local`` processes over HTTP.

Each replica is a separate process serving the embedded engine with vLLM's API, so this runs
the multi-replica topology for real (sockets, SSE, processes killed and frozen), only without
a GPU.  The same against real vLLM: test_vllm_cpu.py (its CPU build), test_vllm_gpu.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from gateway.core.config import Settings
from gateway.core.errors import AdapterInvalid, EngineError
from gateway.engine.base import AdapterRef, GenerationRequest, SamplingParams
from gateway.engine.vllm import VLLMEngine
from tools.harness import (
    METRICS_AUTH,
    free_port,
    make_settings,
    running_app,
    seed_tenant,
    wait_until_up,
)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]


@dataclass
class LocalEngine:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


def spawn(base: Path, workdir: Path, *extra: str) -> LocalEngine:
    port = free_port()
    log = workdir / f"engine-{port}.log"
    env = {**os.environ, "FLYWHEEL_DATA_DIR": str(workdir / "data")}
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
    cmd += ["--served-model-name", "demo-base", "--max-loras", "2", *extra]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    return LocalEngine(f"http://127.0.0.1:{port}", proc, log)


def wait_ready(engines: list[LocalEngine], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for engine in engines:
        left = max(0.0, deadline - time.monotonic())
        wait_until_up(f"{engine.url}/health", engine.proc, engine.log, timeout=left)


def stop(engines: list[LocalEngine]) -> None:
    for engine in engines:
        if engine.proc.poll() is None:
            engine.proc.send_signal(signal.SIGCONT)
            engine.proc.terminate()
            engine.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def replicas(
    demo_base: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[LocalEngine]]:
    """Two local engine processes shared by this module's tests (each test resets them)."""
    workdir = tmp_path_factory.mktemp("local-engines")
    engines = [spawn(demo_base, workdir) for _ in range(2)]
    try:
        wait_ready(engines)
        yield engines
    finally:
        stop(engines)


def held(url: str) -> dict[str, str]:
    """The LoRA cards a replica lists in /v1/models: name -> root."""
    cards = httpx.get(f"{url}/v1/models", timeout=5).json()["data"]
    return {c["id"]: c["root"] for c in cards if c["parent"]}


def reset(engines: list[LocalEngine]) -> None:
    for engine in engines:
        for name in held(engine.url):
            httpx.post(f"{engine.url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=10)


def engine_settings(tmp_path: Path, urls: list[str], **over: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "engine": "vllm",
        "vllm_urls": ",".join(urls),
        "vllm_max_adapters_per_replica": 2,
        "vllm_health_interval_s": 3600,  # health checks are driven by the tests
        "base_model_name": "demo-base",
    }
    values.update(over)
    return Settings(**values)


def refs(adapters: list[Path], tag: str, n: int) -> list[AdapterRef]:
    # Engine names are immutable per adapter version, so every test uses its own.
    return [AdapterRef(f"fw-{tag}-{i}", adapters[i], f"{tag}-{i}") for i in range(n)]


def req(adapter: AdapterRef | None, max_tokens: int = 8) -> GenerationRequest:
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0)
    return GenerationRequest(
        "r", adapter, sampling, messages=[{"role": "user", "content": "hello there"}]
    )


async def text(engine: VLLMEngine, request: GenerationRequest) -> str:
    chunks = [c async for c in engine.generate(request)]
    assert chunks[-1].finish_reason in ("stop", "length") and chunks[-1].completion_tokens >= 1
    return "".join(c.text for c in chunks)


@pytest_asyncio.fixture(loop_scope="session")
async def started(replicas: list[LocalEngine], tmp_path: Path) -> Any:
    reset(replicas)
    verified: list[str] = []
    engine = VLLMEngine(
        engine_settings(tmp_path, [r.url for r in replicas]),
        verifier=lambda r: verified.append(r.engine_name),
    )
    await engine.start()
    try:
        yield engine, verified
    finally:
        await engine.stop()


async def test_load_on_first_use_and_route_to_the_holder(
    started: tuple[VLLMEngine, list[str]], replicas: list[LocalEngine], demo_adapters: list[Path]
) -> None:
    engine, verified = started
    (a,) = refs(demo_adapters, "route", 1)
    first = await text(engine, req(a))
    holders = [r.url for r in replicas if a.engine_name in held(r.url)]
    assert len(holders) == 1 and engine.loads == 1 and verified == [a.engine_name]
    assert held(holders[0])[a.engine_name] == str(a.path)  # root = the artifact path
    for _ in range(4):
        assert await text(engine, req(a)) == first  # greedy: same adapter, same text
    assert engine.loads == 1
    assert [r.url for r in replicas if a.engine_name in held(r.url)] == holders
    assert await text(engine, req(None)) != first  # the bare base differs from the adapter


async def test_eviction_keeps_each_replica_within_budget(
    started: tuple[VLLMEngine, list[str]], replicas: list[LocalEngine], demo_adapters: list[Path]
) -> None:
    engine, _ = started
    adapters = refs(demo_adapters, "evict", 6)
    outputs = [await text(engine, req(a)) for a in adapters]
    assert len(set(outputs)) == len(adapters)  # each adapter its own output
    for replica in replicas:
        assert len(held(replica.url)) <= 2
    assert engine.loads == 6 and engine.evictions == 2
    assert await text(engine, req(adapters[0])) == outputs[0]  # evicted, reloaded, same weights


async def test_restart_recovery_rebuilds_residency_from_models(
    replicas: list[LocalEngine], demo_adapters: list[Path], tmp_path: Path
) -> None:
    reset(replicas)
    urls = [r.url for r in replicas]
    adapters = refs(demo_adapters, "restart", 3)
    before = VLLMEngine(engine_settings(tmp_path, urls))
    await before.start()
    outputs = [await text(before, req(a)) for a in adapters]
    await before.stop()  # the gateway restarts; the replicas keep their adapters

    verified: list[str] = []
    after = VLLMEngine(
        engine_settings(tmp_path, urls), verifier=lambda r: verified.append(r.engine_name)
    )
    await after.start()
    try:
        assert after.loaded_adapters() == sorted(a.engine_name for a in adapters)
        assert [await text(after, req(a)) for a in adapters] == outputs
        assert after.loads == 0  # nothing reloaded...
        assert sorted(verified) == sorted(a.engine_name for a in adapters)  # ...all re-verified
    finally:
        await after.stop()


async def test_gateway_end_to_end(
    replicas: list[LocalEngine], demo_base: Path, demo_adapters: list[Path], tmp_path: Path
) -> None:
    """Through the whole gateway: same ids, headers and errors as on the embedded engine."""
    from adapters.demo import build_demo_adapter
    from gateway.app import create_app
    from gateway.services.adapters import add_adapter

    reset(replicas)
    settings = make_settings(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path / 'flywheel.db'}",
        demo_base,
        engine="vllm",
        vllm_urls=",".join(r.url for r in replicas),
        vllm_health_interval_s=3600,
    )
    app = create_app(settings)
    async with running_app(app) as client:
        db = app.state.flywheel.db
        tenant = await seed_tenant(db, settings, "acme", {"support": demo_adapters[0]})
        auth = {"Authorization": f"Bearer {tenant.key}"}
        body = {
            "model": "support",
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 8,
            "temperature": 0,
        }
        r = await client.post("/v1/chat/completions", json=body, headers=auth)
        assert r.status_code == 200, r.text
        whole = r.json()
        assert (
            whole["id"].startswith("chatcmpl-")
            and whole["id"] == r.headers["x-flywheel-completion-id"]
        )
        assert (
            whole["model"] == "support" and r.headers["x-flywheel-adapter-version"] == "support@1"
        )
        usage = whole["usage"]
        assert (
            usage["completion_tokens"] >= 1
            and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        )

        stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
        r = await client.post("/v1/chat/completions", json=stream, headers=auth)
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        import json

        chunks = [json.loads(e) for e in events[:-1]]
        assert {c["id"] for c in chunks} == {r.headers["x-flywheel-completion-id"]}
        assert chunks[-1]["usage"] == usage
        streamed = "".join(
            c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]
        )
        assert streamed == whole["choices"][0]["message"]["content"]

        text_body = {"model": "demo-base", "prompt": "Once", "max_tokens": 4}
        r = await client.post("/v1/completions", json=text_body, headers=auth)
        assert r.status_code == 200 and r.json()["id"].startswith("cmpl-")

        # Upstream 400 (prompt + max_tokens over the context) is the client's 400.
        r = await client.post(
            "/v1/chat/completions", json={**body, "max_tokens": 3000}, headers=auth
        )
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        assert "context length" in r.json()["error"]["message"]

        # DoRA is refused at registration when the engine is vLLM.
        dora = build_demo_adapter(demo_base, tmp_path / "dora", seed=5, use_dora=True)
        async with db.transaction() as session:
            with pytest.raises(AdapterInvalid, match="DoRA"):
                await add_adapter(
                    session, settings, tenant_name="acme", name="dora", path=dora, sign=True
                )

        # /metrics works on this engine too: residency and loads per replica URL.
        r = await client.get("/metrics", headers=METRICS_AUTH)
        assert r.status_code == 200, r.text
        holder = next(x.url for x in replicas if held(x.url))
        assert f'flywheel_adapters_resident{{replica="{holder}"}} 1.0' in r.text
        assert f'flywheel_adapter_loads_total{{replica="{holder}"}} 1.0' in r.text
        assert f'flywheel_adapter_load_seconds_count{{replica="{holder}"}}' in r.text


async def test_replica_frozen_then_killed(
    replicas: list[LocalEngine], demo_base: Path, demo_adapters: list[Path], tmp_path: Path
) -> None:
    """No request hangs; requests with no token sent yet finish on the surviving replica."""
    reset(replicas)
    victim = spawn(demo_base, tmp_path)
    survivor = replicas[0]
    try:
        wait_ready([victim])
        # The default read timeout (600 s) stays: the health check, not a timeout, ends the wait.
        settings = engine_settings(tmp_path, [victim.url, survivor.url])
        engine = VLLMEngine(settings)
        await engine.start()
        on_victim, on_survivor = refs(demo_adapters, "kill", 2)
        expected = {a.engine_name: await text(engine, req(a, 64)) for a in (on_victim, on_survivor)}
        assert on_victim.engine_name in held(victim.url)  # placement: ties go to the URL order
        assert on_survivor.engine_name in held(survivor.url)

        # Frozen (SIGSTOP): the connection opens but nothing answers.  The next health check
        # times out (5 s) and takes it out of rotation, which ends the requests waiting on it;
        # no token having been sent, they run on the survivor instead.
        victim.proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        pending = asyncio.gather(*(text(engine, req(on_victim, 64)) for _ in range(4)))
        assert await engine.replicas[0].check() is False
        outs = await asyncio.wait_for(pending, 30)
        assert outs == [expected[on_victim.engine_name]] * 4
        assert time.monotonic() - started < 15
        assert not engine.replicas[0].usable and on_victim.engine_name in held(survivor.url)

        victim.proc.send_signal(signal.SIGCONT)
        assert await engine.replicas[0].check() is True  # back in rotation, residency rebuilt

        # Killed (SIGKILL) mid-run: streams that had sent tokens end with an error; none hangs,
        # and every request that had not started streaming succeeds on the survivor.
        async def run(adapter: AdapterRef) -> tuple[str, int]:
            got = 0
            try:
                async for _ in engine.generate(req(adapter, 300)):
                    got += 1
                    if got == 1 and victim.proc.poll() is None:
                        victim.proc.kill()
                return "ok", got
            except EngineError:
                return "error", got

        results = await asyncio.wait_for(
            asyncio.gather(*(run(a) for a in [on_victim, on_survivor] * 6)), 60
        )
        assert all(outcome == "ok" or got >= 1 for outcome, got in results), results
        assert sum(outcome == "ok" for outcome, _ in results) >= 6
        assert not engine.replicas[0].usable
        assert [await text(engine, req(a, 16)) for a in (on_victim, on_survivor)]
        await engine.stop()
    finally:
        stop([victim])


async def test_unreachable_replica_at_start_and_health_loop(
    replicas: list[LocalEngine], demo_adapters: list[Path], tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    engine = VLLMEngine(
        engine_settings(tmp_path, [dead, replicas[1].url], vllm_health_interval_s=0.2)
    )
    await engine.start()
    try:
        assert engine.ready() and [r.usable for r in engine.replicas] == [False, True]
        (a,) = refs(demo_adapters, "dead", 1)
        assert await text(engine, req(a))
    finally:
        await engine.stop()
