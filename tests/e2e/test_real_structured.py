"""Structured output on the real default base (SmolLM2-135M-Instruct), embedded engine.

The gateway app runs in-process on the real base, driven by the official ``openai`` client:
a JSON-schema request must return JSON that validates against the schema on every one of
eight samples at temperature 0.7, and ``tool_choice: "required"`` must return a call whose
arguments parse and validate.  Opt-in like the rest of the real-model tier.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
import pytest_asyncio

from gateway.app import create_app
from tools.harness import make_settings, running_app, seed_tenant

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.slow,
    pytest.mark.real_model,
    pytest.mark.skipif(
        os.environ.get("FLYWHEEL_TEST_REAL_MODEL") != "1",
        reason="the real-model tier runs with FLYWHEEL_TEST_REAL_MODEL=1",
    ),
]

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"type": "string", "maxLength": 40},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(
    real_base: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[openai.AsyncOpenAI]:
    data = tmp_path_factory.mktemp("real-structured")
    settings = make_settings(data, f"sqlite+aiosqlite:///{data / 'flywheel.db'}", real_base)
    app = create_app(settings)
    async with running_app(app):
        tenant = await seed_tenant(app.state.flywheel.db, settings, "acme", {})
        yield openai.AsyncOpenAI(
            base_url="http://flywheel/v1",
            api_key=tenant.key,
            max_retries=0,
            timeout=600,
            http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=app)),
        )


async def test_every_json_schema_sample_validates(client: openai.AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(
        model="demo-base",
        messages=[
            {"role": "system", "content": "You answer in JSON."},
            {"role": "user", "content": "Invent a person: their name, age and city."},
        ],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON, "strict": True},
        },
        n=8,
        temperature=0.7,
        max_tokens=200,
        seed=11,
    )
    assert len(resp.choices) == 8
    for choice in resp.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content or ""), PERSON)


async def test_a_required_tool_call_parses(client: openai.AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(
        model="demo-base",
        messages=[{"role": "user", "content": "What is the weather in Paris right now?"}],
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=200,
    )
    (choice,) = resp.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
