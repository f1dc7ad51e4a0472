"""Structured output, tool calls, n and logprobs on the embedded engine, through the gateway.

The official ``openai`` client drives the app in-process on the tiny random demo base; every
answer and every streamed chunk is also checked against OpenAI's own response schemas
(test_openai_spec's vendored spec).  The base's weights are random: a JSON answer validates
because the grammar held it, not because the model knew better.  SQLite only: nothing here
depends on the database.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
import pytest_asyncio

from gateway.app import create_app
from tests.gateway.api.test_openai_spec import check
from tools.harness import make_settings, running_app, seed_tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHAT: Any = [{"role": "user", "content": "Describe a person."}]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "colour": {"enum": ["red", "green", "blue"]},
    },
    "required": ["name", "age", "colour"],
    "additionalProperties": False,
}
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 6},
                "unit": {"enum": ["c", "f"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(
    demo_base: Path, demo_adapters: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[openai.AsyncOpenAI]:
    data = tmp_path_factory.mktemp("structured")
    settings = make_settings(data, f"sqlite+aiosqlite:///{data / 'flywheel.db'}", demo_base)
    app = create_app(settings)
    async with running_app(app):
        tenant = await seed_tenant(
            app.state.flywheel.db, settings, "acme", {"support": demo_adapters[0]}
        )
        yield openai.AsyncOpenAI(
            base_url="http://flywheel/v1",
            api_key=tenant.key,
            max_retries=0,
            http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=app)),
        )


def person_format() -> Any:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}


async def test_json_schema_answers_validate(client: openai.AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(
        model="support",
        messages=CHAT,
        max_tokens=128,
        n=3,
        seed=5,
        response_format=person_format(),
    )
    assert [c.index for c in resp.choices] == [0, 1, 2]
    for choice in resp.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content or ""), PERSON)
    check("CreateChatCompletionResponse", resp.model_dump(mode="json", exclude_unset=True))


async def test_json_object_streamed_is_an_object(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="demo-base",
        messages=CHAT,
        max_tokens=128,
        temperature=0,
        response_format={"type": "json_object"},
        stream=True,
    )
    pieces = []
    async for chunk in stream:
        check(
            "CreateChatCompletionStreamResponse", chunk.model_dump(mode="json", exclude_unset=True)
        )
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert isinstance(json.loads("".join(pieces)), dict)


async def test_required_tool_call_comes_back_in_openais_shape(client: openai.AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(
        model="support",
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=256,
        seed=1,
    )
    (choice,) = resp.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    check("CreateChatCompletionResponse", resp.model_dump(mode="json", exclude_unset=True))


async def test_named_tool_streams_its_arguments(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="support",
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=128,
        temperature=0,
        stream=True,
    )
    ids, names, arguments, finishes = [], [], [], []
    async for chunk in stream:
        check(
            "CreateChatCompletionStreamResponse", chunk.model_dump(mode="json", exclude_unset=True)
        )
        for choice in chunk.choices:
            for piece in choice.delta.tool_calls or ():
                assert piece.index == 0
                ids.append(piece.id)
                names.append(piece.function.name if piece.function else None)
                arguments.append(piece.function.arguments if piece.function else "")
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert ids[0] is not None and set(ids[1:]) == {None}  # the id on the first piece only
    assert names[0] == "get_weather" and len(arguments) > 1
    jsonschema.validate(
        json.loads("".join(a or "" for a in arguments)), WEATHER["function"]["parameters"]
    )
    assert finishes == ["stop"]


async def test_chat_logprobs_with_n(client: openai.AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(
        model="support",
        messages=CHAT,
        max_tokens=6,
        n=2,
        seed=3,
        logprobs=True,
        top_logprobs=2,
    )
    assert len(resp.choices) == 2
    for choice in resp.choices:
        assert choice.logprobs is not None and choice.logprobs.content
        assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
        assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
    assert resp.usage is not None
    assert resp.usage.completion_tokens >= sum(
        len(c.logprobs.content or []) for c in resp.choices if c.logprobs
    )
    check("CreateChatCompletionResponse", resp.model_dump(mode="json", exclude_unset=True))


async def test_streamed_n_choices_carry_their_index(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="support", messages=CHAT, max_tokens=5, n=2, seed=2, stream=True, logprobs=True
    )
    texts: dict[int, str] = {0: "", 1: ""}
    finished = set()
    async for chunk in stream:
        check(
            "CreateChatCompletionStreamResponse", chunk.model_dump(mode="json", exclude_unset=True)
        )
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1} and all(texts.values())


async def test_completion_logprobs_are_parallel_lists(client: openai.AsyncOpenAI) -> None:
    resp = await client.completions.create(
        model="demo-base", prompt="Once upon", max_tokens=6, logprobs=2, temperature=0
    )
    logprobs = resp.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.text_offset is not None
    assert "".join(logprobs.tokens) == resp.choices[0].text
    assert len(logprobs.token_logprobs or []) == len(logprobs.tokens)
    # Two of the top tokens may decode to one string (a random base writes broken UTF-8).
    assert all(1 <= len(top) <= 2 for top in logprobs.top_logprobs or [])
    assert logprobs.text_offset[0] == 0
    check("CreateCompletionResponse", resp.model_dump(mode="json", exclude_unset=True))


async def test_a_schema_that_cannot_be_enforced_is_a_400_naming_it(
    client: openai.AsyncOpenAI,
) -> None:
    bad: Any = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(
            model="support", messages=CHAT, max_tokens=8, response_format=bad
        )
    assert err.value.param == "response_format"


async def test_responses_text_format_json_schema_validates(client: openai.AsyncOpenAI) -> None:
    resp = await client.responses.create(
        model="support",
        input="Describe a person.",
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON}},
        max_output_tokens=128,
        temperature=0,
    )
    assert resp.status == "completed"
    jsonschema.validate(json.loads(resp.output_text), PERSON)
    check("Response", resp.model_dump(mode="json", exclude_unset=True, by_alias=True))


async def test_responses_function_tool_becomes_a_function_call_item(
    client: openai.AsyncOpenAI,
) -> None:
    function = WEATHER["function"]
    resp = await client.responses.create(
        model="support",
        input="Weather in Oslo?",
        tools=[
            {"type": "function", "name": function["name"], "parameters": function["parameters"]}
        ],
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=256,
        temperature=0,
    )
    calls = [item for item in resp.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), function["parameters"])
    check("Response", resp.model_dump(mode="json", exclude_unset=True, by_alias=True))
