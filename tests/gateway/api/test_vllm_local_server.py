"""`flywheel engine local`'s HTTP surface in-process: the vLLM shapes that need no model loaded.

Generation and successful loads run against real processes in test_vllm_local.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.api.engine_server import create_local_app
from gateway.engine.embedded import EmbeddedEngine
from gateway.engine.vllm_client import UpstreamError, VLLMClient

pytestmark = pytest.mark.asyncio(loop_scope="session")


def local_app(
    tmp_path: Path, *, runtime_lora: bool = True, api_key: str | None = None
) -> httpx.ASGITransport:
    engine = EmbeddedEngine(tmp_path, base_model_name="demo-base")  # never started here
    app = create_local_app(
        engine,
        base_name="demo-base",
        base_root=str(tmp_path),
        max_lora_rank=16,
        runtime_lora=runtime_lora,
        api_key=api_key,
    )
    return httpx.ASGITransport(app=app)


def app_client(transport: httpx.ASGITransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, base_url="http://local")


def adapter_dir(root: Path, **config: object) -> Path:
    root.mkdir()
    (root / "adapter_config.json").write_text(json.dumps({"r": 8, "use_dora": False, **config}))
    return root


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(local_app(tmp_path)) as c:
        yield c


async def test_models_lists_the_base(client: httpx.AsyncClient, tmp_path: Path) -> None:
    cards = (await client.get("/v1/models")).json()["data"]
    assert cards == [
        {
            "id": "demo-base",
            "object": "model",
            "created": cards[0]["created"],
            "owned_by": "vllm",
            "root": str(tmp_path),
            "parent": None,
            "max_model_len": 2048,
        }
    ]
    assert (await client.get("/health")).status_code == 200


@pytest.mark.parametrize(
    ("config", "status", "message"),
    [
        ({"r": 32}, 400, "LoRA rank 32 is greater than max_lora_rank 16."),
        ({"use_dora": True}, 400, "vLLM does not yet support DoRA."),
        ({"modules_to_save": ["lm_head"]}, 400, "vLLM only supports modules_to_save being None."),
    ],
)
async def test_load_refusals_in_vllm_words(
    client: httpx.AsyncClient, tmp_path: Path, config: dict[str, object], status: int, message: str
) -> None:
    path = adapter_dir(tmp_path / "a", **config)
    r = await client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(path)})
    assert r.status_code == status
    assert r.json() == {
        "error": {"message": message, "type": "BadRequestError", "param": None, "code": status}
    }


async def test_load_bad_path_and_missing_fields(client: httpx.AsyncClient, tmp_path: Path) -> None:
    r = await client.post(
        "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(tmp_path / "nope")}
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == 404
    assert (
        r.json()["error"]["message"]
        == f"Loading lora x failed: No adapter found for {tmp_path / 'nope'}"
    )
    r = await client.post("/v1/load_lora_adapter", json={"lora_name": "x"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "InvalidUserInput"
    r = await client.post("/v1/unload_lora_adapter", json={"lora_name": "x"})
    assert (
        r.status_code == 404
        and r.json()["error"]["message"] == "The lora adapter 'x' cannot be found."
    )


async def test_unknown_model_is_vllm_404(client: httpx.AsyncClient) -> None:
    body = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 404
    assert r.json()["error"] == {
        "message": "The model `nope` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


async def test_runtime_lora_detection_against_the_local_server(tmp_path: Path) -> None:
    for enabled in (True, False):
        client = VLLMClient("http://local", transport=local_app(tmp_path, runtime_lora=enabled))
        try:
            assert await client.runtime_lora_enabled() is enabled
        finally:
            await client.aclose()


async def test_api_key_guards_v1_like_vllm(tmp_path: Path) -> None:
    transport = local_app(tmp_path, api_key="sekret")
    async with app_client(transport) as app:
        assert (await app.get("/health")).status_code == 200
        r = await app.get("/v1/models")
        assert r.status_code == 401 and r.json() == {"error": "Unauthorized"}
        assert (
            await app.get("/v1/models", headers={"authorization": "Bearer sekret"})
        ).status_code == 200
        good = VLLMClient("http://local", api_key="sekret", transport=transport)
        bad = VLLMClient("http://local", api_key="wrong", transport=transport)
        try:
            assert (await good.models()).base == "demo-base"
            with pytest.raises(UpstreamError) as info:
                await bad.models()
            assert info.value.status == 401
        finally:
            await good.aclose()
            await bad.aclose()
