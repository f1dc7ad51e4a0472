"""Every response shape the gateway writes, checked against OpenAI's own OpenAPI spec.

The schemas are cut from github.com/openai/openai-openapi by tools/openai_spec.py (its commit is
in the file).  A field the spec requires and the gateway leaves out, a wrong type, ``null`` where
the spec wants a string: each fails here, whichever engine served the request.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from jsonschema import Draft202012Validator

from gateway.app import create_app
from tools.harness import SeededTenant, make_settings, running_app, seed_tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")

SPEC = json.loads((Path(__file__).parent / "spec" / "openai-responses.json").read_text())


def check(name: str, instance: Any) -> None:
    """Validate ``instance`` against the spec's schema ``name``; the errors say where."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": SPEC["components"]}
    errors = sorted(Draft202012Validator(schema).iter_errors(instance), key=str)
    where = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    assert not errors, f"{name}: " + "; ".join(where[:5])


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gw(
    fresh_database_url: str,
    demo_base: Path,
    demo_adapters: list[Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[httpx.AsyncClient, SeededTenant]]:
    settings = make_settings(tmp_path_factory.mktemp("spec"), fresh_database_url, demo_base)
    app = create_app(settings)
    async with running_app(app) as client:
        tenant = await seed_tenant(
            app.state.flywheel.db, settings, "specco", {"support": demo_adapters[0]}
        )
        yield client, tenant


def _headers(t: SeededTenant) -> dict[str, str]:
    return {"Authorization": f"Bearer {t.key}"}


def _events(text: str) -> list[dict[str, Any]]:
    data = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]", text
    return [json.loads(d) for d in data[:-1]]


CHAT = {"model": "support", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}
TEXT = {"model": "support", "prompt": "Once upon", "max_tokens": 6}


async def test_chat_completion_matches_the_spec(
    gw: tuple[httpx.AsyncClient, SeededTenant],
) -> None:
    client, tenant = gw
    r = await client.post("/v1/chat/completions", json=CHAT, headers=_headers(tenant))
    assert r.status_code == 200, r.text
    check("CreateChatCompletionResponse", r.json())


@pytest.mark.parametrize(
    "options", [None, {"include_usage": True}, {"continuous_usage_stats": True}]
)
async def test_chat_stream_chunks_match_the_spec(
    gw: tuple[httpx.AsyncClient, SeededTenant], options: dict[str, bool] | None
) -> None:
    client, tenant = gw
    body = {**CHAT, "stream": True, **({"stream_options": options} if options else {})}
    r = await client.post("/v1/chat/completions", json=body, headers=_headers(tenant))
    assert r.status_code == 200, r.text
    chunks = _events(r.text)
    assert len(chunks) >= 3  # the role, some text or a finish, ...
    for chunk in chunks:
        check("CreateChatCompletionStreamResponse", chunk)


async def test_text_completion_matches_the_spec(
    gw: tuple[httpx.AsyncClient, SeededTenant],
) -> None:
    client, tenant = gw
    r = await client.post("/v1/completions", json=TEXT, headers=_headers(tenant))
    assert r.status_code == 200, r.text
    check("CreateCompletionResponse", r.json())
    streamed = {**TEXT, "stream": True, "stream_options": {"include_usage": True}}
    r = await client.post("/v1/completions", json=streamed, headers=_headers(tenant))
    chunks = _events(r.text)
    # The legacy stream reuses the completion object, which the spec types for the whole
    # answer: OpenAI's own streams send ``finish_reason: null`` until the last choice, and
    # ``usage: null`` until the usage chunk.  Those two are checked here; the rest by the spec.
    *text_chunks, usage_chunk = chunks
    assert [c["choices"][0]["finish_reason"] for c in text_chunks][-1] in ("stop", "length")
    assert all(c["choices"][0]["finish_reason"] is None for c in text_chunks[:-1])
    assert all(c["usage"] is None for c in text_chunks)
    for chunk in text_chunks:
        whole = {k: v for k, v in chunk.items() if k != "usage"}
        whole["choices"] = [{**chunk["choices"][0], "finish_reason": "stop"}]
        check("CreateCompletionResponse", whole)
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["total_tokens"] > 0
    check("CompletionUsage", usage_chunk["usage"])


async def test_models_match_the_spec(gw: tuple[httpx.AsyncClient, SeededTenant]) -> None:
    client, tenant = gw
    listed = await client.get("/v1/models", headers=_headers(tenant))
    check("ListModelsResponse", listed.json())
    one = await client.get("/v1/models/support", headers=_headers(tenant))
    check("Model", one.json())


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/chat/completions", {**CHAT, "temperature": 9}, 400),
        ("/v1/chat/completions", {**CHAT, "model": "nope"}, 404),
        ("/v1/chat/completions", {**CHAT, "best_of": 2}, 400),
        ("/v1/models/nope", None, 404),
    ],
)
async def test_errors_match_the_spec(
    gw: tuple[httpx.AsyncClient, SeededTenant],
    path: str,
    body: dict[str, Any] | None,
    status: int,
) -> None:
    client, tenant = gw
    if body is None:
        r = await client.get(path, headers=_headers(tenant))
    else:
        r = await client.post(path, json=body, headers=_headers(tenant))
    assert r.status_code == status, r.text
    check("ErrorResponse", r.json())
    unauthenticated = await client.post("/v1/chat/completions", json=CHAT)
    check("ErrorResponse", unauthenticated.json())
