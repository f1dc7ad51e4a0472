"""The Responses API (``POST /v1/responses``) with the official ``openai`` client, both engines.

The embedded engine runs for real on the tiny random demo base, through the app in-process, on
SQLite and PostgreSQL.  That base never ends an answer on its own, so its responses stop at
``max_output_tokens``: ``incomplete``.  The vLLM engine's replica is test_vllm_engine's
FakeVLLM (vLLM needs a GPU or its CPU build here): a fixed answer that ends with ``stop``, which
gives the ``completed`` lifecycle, and a connection it can drop mid-stream.  Every response and
every stream event is validated against OpenAI's own schemas (spec/, tools/openai_spec.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import select

from feedback.export import export
from gateway.api.openai.responses_api.protocol import ResponseObject, ResponsesRequest
from gateway.api.openai.responses_api.serving import EventWriter, from_chat_completion
from gateway.app import create_app
from gateway.core.config import Settings
from gateway.core.db.models import Completion
from gateway.engine.vllm import VLLMEngine
from gateway.state import AppState
from tests.engine.test_vllm_engine import WORDS, FakeVLLM, transport
from tests.gateway.api.socket_gateway import gateway_before
from tests.gateway.api.test_client_disconnect import HoldingUpstream
from tests.gateway.api.test_openai_spec import check
from tools.harness import SeededTenant, make_settings, running_app, seed_tenant, serve_on_socket

pytestmark = pytest.mark.asyncio(loop_scope="session")

EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
    "response.failed": "ResponseFailedEvent",
    "error": "ResponseErrorEvent",
}
TEXT_LIFECYCLE = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
TEXT_END = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


@dataclass
class Gateway:
    app: FastAPI
    raw: httpx.AsyncClient
    client: openai.AsyncOpenAI
    other: openai.AsyncOpenAI  # another tenant's key
    a: SeededTenant
    b: SeededTenant


def openai_client(app: FastAPI, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://flywheel/v1",
        api_key=key,
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=app)),
    )


def auth(t: SeededTenant) -> dict[str, str]:
    return {"Authorization": f"Bearer {t.key}"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gw(
    fresh_database_url: str,
    demo_base: Path,
    demo_adapters: list[Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Gateway]:
    settings = make_settings(tmp_path_factory.mktemp("responses"), fresh_database_url, demo_base)
    app = create_app(settings)
    async with running_app(app) as raw:
        db = app.state.flywheel.db
        a = await seed_tenant(db, settings, "acme", {"support": demo_adapters[0]})
        b = await seed_tenant(db, settings, "globex", {"private": demo_adapters[1]})
        yield Gateway(app, raw, openai_client(app, a.key), openai_client(app, b.key), a, b)


def sse_events(text: str) -> list[dict[str, Any]]:
    """The events of a Responses API stream, each checked: its ``event:`` line names its type,
    it matches its schema, and the sequence numbers count from 0."""
    events: list[dict[str, Any]] = []
    for block in text.strip().split("\n\n"):
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: "), block
        event = json.loads(data_line[6:])
        assert name_line[7:] == event["type"]
        check(EVENT_SCHEMAS[event["type"]], event)
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def deltas(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


# --- the embedded engine --------------------------------------------------------------------


async def test_a_response_is_the_chat_answer_under_its_own_id(gw: Gateway) -> None:
    r = await gw.client.responses.create(
        model="support", input="hello there", max_output_tokens=8, temperature=0, store=False
    )
    chat = await gw.client.chat.completions.create(
        model="support",
        messages=[{"role": "user", "content": "hello there"}],
        max_completion_tokens=8,
        temperature=0,
    )
    assert r.id.startswith("resp_") and r.object == "response" and r.model == "support"
    assert r.output_text and r.output_text == chat.choices[0].message.content
    # The demo base never stops by itself: max_output_tokens cut it.
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    (message,) = r.output
    assert message.type == "message" and message.role == "assistant"
    assert message.status == "incomplete" and message.content[0].annotations == []
    assert chat.usage is not None and r.usage is not None
    assert (r.usage.input_tokens, r.usage.output_tokens) == (chat.usage.prompt_tokens, 8)
    assert r.usage.total_tokens == r.usage.input_tokens + 8
    assert r.usage.input_tokens_details.cached_tokens == 0
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    assert (r.temperature, r.top_p, r.max_output_tokens) == (0.0, 1.0, 8)

    raw = await gw.raw.post(
        "/v1/responses",
        json={"model": "support", "input": "hello there", "max_output_tokens": 8, "store": True},
        headers=auth(gw.a),
    )
    assert raw.status_code == 200, raw.text
    body = raw.json()
    check("Response", body)
    assert "output_text" not in body  # the SDKs compute it
    assert raw.headers["x-flywheel-completion-id"] == body["id"]
    assert raw.headers["x-flywheel-adapter-version"] == "support@1"
    assert raw.headers["x-ratelimit-remaining-requests"]


async def test_instructions_and_a_message_list_become_the_chat_messages(gw: Gateway) -> None:
    history: list[Any] = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "hello"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "how"}]},
    ]
    r = await gw.client.responses.create(
        model="support",
        instructions="Be brief.",
        input=history,
        max_output_tokens=6,
        temperature=0,
        metadata={"ticket": "42"},
        user="end-user-7",
    )
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how"},
    ]
    chat = await gw.client.chat.completions.create(
        model="support", messages=messages, max_completion_tokens=6, temperature=0
    )
    assert r.output_text == chat.choices[0].message.content
    assert (r.instructions, r.metadata, r.user) == ("Be brief.", {"ticket": "42"}, "end-user-7")
    # Logged like a chat completion, under the response's id.
    state = gw.app.state.flywheel
    assert await state.completions.flush()
    async with state.db.session() as session:
        row = await session.get(Completion, r.id)
    assert row is not None
    assert (row.kind, row.status, row.end_user) == ("chat", "ok", "end-user-7")
    assert row.request == {"messages": messages}
    assert row.response_text == r.output_text and row.completion_tokens == 6


async def test_stream_events_in_order_and_reassembled_by_the_sdk(gw: Gateway) -> None:
    request = {"model": "support", "input": "hello there", "max_output_tokens": 7}
    plain = await gw.client.responses.create(
        model="support", input="hello there", max_output_tokens=7, temperature=0
    )

    raw = await gw.raw.post(
        "/v1/responses", json={**request, "temperature": 0, "stream": True}, headers=auth(gw.a)
    )
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
    events = sse_events(raw.text)
    kinds = [e["type"] for e in events]
    assert kinds == [
        *TEXT_LIFECYCLE,
        *["response.output_text.delta"] * (len(kinds) - 8),
        *TEXT_END,
        "response.incomplete",
    ]
    final = events[-1]["response"]
    assert {e["response"]["id"] for e in events if "response" in e} == {final["id"]}
    assert final["id"] == raw.headers["x-flywheel-completion-id"]
    item_id = events[2]["item"]["id"]
    assert {e["item_id"] for e in events if "item_id" in e} == {item_id}
    assert deltas(events) == events[-4]["text"] == plain.output_text
    assert final["output"][0]["content"][0]["text"] == plain.output_text
    assert final["usage"]["output_tokens"] == 7
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}

    async with gw.client.responses.stream(
        model="support", input="hello there", max_output_tokens=7, temperature=0
    ) as stream:
        seen = [event async for event in stream]
    assert [e.type for e in seen] == kinds
    last = seen[-1]
    assert last.type == "response.incomplete"
    assert last.response.output_text == plain.output_text

    streamed = await gw.client.responses.create(
        model="support", input="hello there", max_output_tokens=7, temperature=0, stream=True
    )
    text = "".join([e.delta async for e in streamed if e.type == "response.output_text.delta"])
    assert text == plain.output_text


FUNCTION_TOOL = {
    "type": "function",
    "name": "lookup",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
}
SCHEMA_FORMAT = {
    "type": "json_schema",
    "name": "answer",
    "schema": {"type": "object", "properties": {"a": {"type": "integer"}}},
}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"conversation": "conv_123"}, "conversation"),
        ({"background": True}, "background"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"reasoning": {"effort": "low"}}, "reasoning"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"max_output_tokens": 10**6}, "max_output_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input.0.content",
        ),
    ],
)
async def test_refused_fields_are_a_400_naming_them(
    gw: Gateway, fields: dict[str, Any], param: str
) -> None:
    body = {"model": "support", "input": "hi", "max_output_tokens": 4, **fields}
    r = await gw.raw.post("/v1/responses", json=body, headers=auth(gw.a))
    assert r.status_code == 400, r.text
    check("ErrorResponse", r.json())
    assert r.json()["error"]["param"] == param
    with pytest.raises(openai.BadRequestError) as err:
        await gw.client.responses.create(**body)
    assert err.value.param == param


async def test_no_op_values_and_unknown_fields_are_accepted(gw: Gateway) -> None:
    r = await gw.client.responses.create(
        model="support",
        input="hi",
        max_output_tokens=3,
        store=True,
        background=False,
        include=[],
        reasoning={"effort": None},
        truncation="disabled",
        text={"format": {"type": "text"}},
        tool_choice="none",
        extra_body={"frobnicate": 1},
    )
    assert r.status == "incomplete" and r.usage is not None and r.usage.output_tokens == 3


async def test_feedback_by_the_response_id_reaches_the_export(gw: Gateway) -> None:
    r = await gw.client.responses.create(model="support", input="rate me", max_output_tokens=5)
    foreign = await gw.raw.post(
        "/v1/feedback", json={"completion_id": r.id, "rating": "up"}, headers=auth(gw.b)
    )
    assert foreign.status_code == 404, foreign.text
    fb = await gw.raw.post(
        "/v1/feedback", json={"completion_id": r.id, "rating": "up"}, headers=auth(gw.a)
    )
    assert fb.status_code == 200, fb.text
    assert fb.json()["completion_id"] == r.id
    state = gw.app.state.flywheel
    assert await state.completions.flush()
    out = io.StringIO()
    await export(state.db, "acme", None, None, "kto", out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    (mine,) = [row for row in rows if row["meta"]["completion_id"] == r.id]
    assert mine["prompt"] == [{"role": "user", "content": "rate me"}]
    assert mine["completion"] == [{"role": "assistant", "content": r.output_text}]
    assert mine["label"] is True


async def test_another_tenants_adapter_is_a_404(gw: Gateway) -> None:
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as err:
            await gw.client.responses.create(
                model="private", input="hi", max_output_tokens=2, stream=stream
            )
        assert err.value.code == "model_not_found" and err.value.param == "model"
    served = await gw.other.responses.create(model="private", input="hi", max_output_tokens=2)
    assert served.model == "private" and served.output_text


# --- the vLLM engine ------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def vllm_gw(
    demo_base: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Gateway, FakeVLLM]]:
    """The gateway on the vLLM engine, its replica a FakeVLLM (vLLM needs a GPU here)."""
    data = tmp_path_factory.mktemp("responses-vllm")
    fake = FakeVLLM("replica")
    settings = make_settings(
        data,
        f"sqlite+aiosqlite:///{data / 'flywheel.db'}",
        demo_base,
        engine="vllm",
        vllm_urls="http://replica:8000",
        vllm_health_interval_s=3600,
    )

    async def build(settings: Settings, _: object) -> VLLMEngine:
        return VLLMEngine(settings, transport=transport(fake))

    async with contextlib.AsyncExitStack() as stack:
        # Patched only while the lifespan builds the engine: the socket tests build their own.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("gateway.app.build_engine", build)
            app = create_app(settings)
            raw = await stack.enter_async_context(running_app(app))
        a = await seed_tenant(app.state.flywheel.db, settings, "acme", {})
        b = await seed_tenant(app.state.flywheel.db, settings, "globex", {})
        client = openai_client(app, a.key)
        yield Gateway(app, raw, client, openai_client(app, b.key), a, b), fake


async def test_vllm_completes_and_passes_text_format_as_response_format(
    vllm_gw: tuple[Gateway, FakeVLLM],
) -> None:
    gw, fake = vllm_gw
    r = await gw.client.responses.create(
        model="demo-base", input="hi", text={"format": SCHEMA_FORMAT}, max_output_tokens=20
    )
    assert r.status == "completed" and r.completed_at is not None
    assert r.output_text == "".join(WORDS) and r.incomplete_details is None
    assert fake.bodies[-1]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": SCHEMA_FORMAT["schema"]},
    }
    assert fake.bodies[-1]["max_tokens"] == 20
    assert r.text.format is not None and r.text.format.type == "json_schema"

    async with gw.client.responses.stream(
        model="demo-base", input="hi", text={"format": {"type": "json_object"}}
    ) as stream:
        final = await stream.get_final_response()
    assert final.status == "completed" and final.output_text == "".join(WORDS)
    assert fake.bodies[-1]["response_format"] == {"type": "json_object"}

    raw = await gw.raw.post(
        "/v1/responses",
        json={"model": "demo-base", "input": "hi", "stream": True},
        headers=auth(gw.a),
    )
    events = sse_events(raw.text)
    assert events[-1]["type"] == "response.completed"
    assert [e["type"] for e in events][-4:-1] == TEXT_END
    check("Response", events[-1]["response"])
    assert deltas(events) == "".join(WORDS)


async def test_vllm_gets_function_tools_in_the_chat_shape(
    vllm_gw: tuple[Gateway, FakeVLLM],
) -> None:
    gw, fake = vllm_gw
    body = {
        "model": "demo-base",
        "input": "weather?",
        "tools": [FUNCTION_TOOL],
        "tool_choice": {"type": "function", "name": "lookup"},
        "parallel_tool_calls": False,
    }
    r = await gw.raw.post("/v1/responses", json=body, headers=auth(gw.a))
    assert r.status_code == 200, r.text
    check("Response", r.json())
    sent = fake.bodies[-1]
    function = {"name": "lookup", "parameters": FUNCTION_TOOL["parameters"]}
    assert sent["tools"] == [{"type": "function", "function": function}]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert sent["parallel_tool_calls"] is False
    assert r.json()["tools"] == [{**FUNCTION_TOOL, "strict": None}]
    assert r.json()["parallel_tool_calls"] is False


async def test_vllm_replica_lost_mid_stream_fails_the_response(
    vllm_gw: tuple[Gateway, FakeVLLM],
) -> None:
    gw, fake = vllm_gw
    fake.die_after_events = 3  # the role and two words, then the connection drops
    try:
        raw = await gw.raw.post(
            "/v1/responses",
            json={"model": "demo-base", "input": "hi", "stream": True},
            headers=auth(gw.a),
        )
    finally:
        fake.die_after_events = None
    events = sse_events(raw.text)
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert failed["output"][0]["content"][0]["text"] == deltas(events) == "".join(WORDS[:2])


# --- cancellation, over real sockets (test_client_disconnect's setups) ----------------------


async def test_hanging_up_mid_stream_cancels_the_response(tmp_path: Path, demo_base: Path) -> None:
    """The upstream (vLLM-shaped) sends "Hello" and holds the stream until its caller leaves:
    only the hang-up travelling through the response's stream to the engine ends it."""
    upstream = HoldingUpstream()
    async with gateway_before(upstream, tmp_path, demo_base) as gw:
        body = {"model": "demo-base", "input": "hi", "stream": True}
        async with gw.client.stream(
            "POST", "/v1/responses", headers={"authorization": f"Bearer {gw.key}"}, json=body
        ) as response:
            assert response.status_code == 200
            response_id = response.headers["x-flywheel-completion-id"]
            async for line in response.aiter_lines():
                if "response.output_text.delta" in line:
                    break  # leaving the block closes the connection mid-stream
        await asyncio.wait_for(upstream.caller_left.wait(), timeout=10)
        assert await gw.state.completions.flush(timeout=10)
        async with gw.state.db.session() as session:
            row = await session.get(Completion, response_id)
        assert row is not None
        assert (row.status, row.error_type) == ("cancelled", "client_disconnected")
        assert row.response_text == "Hello"


async def test_a_client_that_gives_up_on_a_response_stops_the_generation(
    tmp_path: Path, demo_base: Path
) -> None:
    """The embedded engine (the demo base never stops by itself): a client that times out on a
    2,000-token response leaves it logged as cancelled with the tokens it made."""
    settings = make_settings(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}", demo_base, max_tokens_limit=4096
    )
    app = create_app(settings)
    async with serve_on_socket(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        assert (await client.get("/healthz")).status_code == 200
        state: AppState = app.state.flywheel
        tenant = await seed_tenant(state.db, settings, "patient", {})
        # Greedy: sampled, the demo base can draw its end-of-sequence token early.
        body = {"model": "demo-base", "input": "hi", "max_output_tokens": 2000, "temperature": 0}
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/responses", json=body, headers=auth(tenant), timeout=1.0)
        rows: list[Completion] = []
        for _ in range(200):
            assert await state.completions.flush(timeout=10)
            async with state.db.session() as session:
                query = select(Completion).where(Completion.tenant_id == tenant.id)
                rows = list((await session.scalars(query)).all())
            if rows:
                break
            await asyncio.sleep(0.05)  # polling the log for the row, not synchronising
    (row,) = rows
    assert row.id.startswith("resp_")
    assert (row.status, row.error_type) == ("cancelled", "client_disconnected")
    assert 0 < row.completion_tokens < 2000


# --- tool calls, translated ----------------------------------------------------------------
# The chat answers with tool calls are written here as the chat path writes them; the
# embedded engine's own, through the SDK, are in test_openai_structured.py.


def _chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return f"data: {json.dumps({'id': 'x', 'choices': [choice]})}\n\n"


def _started() -> ResponseObject:
    request = ResponsesRequest.model_validate(
        {"model": "m", "input": "weather?", "tools": [FUNCTION_TOOL]}
    )
    return ResponseObject.started("resp_test", 1, request)


async def test_streamed_tool_calls_become_function_call_items() -> None:
    async def chat() -> AsyncGenerator[str, None]:
        yield _chunk({"role": "assistant", "content": ""})
        function = {"name": "lookup", "arguments": ""}
        call = {"index": 0, "id": "call_1", "type": "function", "function": function}
        yield _chunk({"tool_calls": [call]})
        for piece in ('{"q": ', '"rain"}'):
            yield _chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        usage = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
        yield _chunk({}, "tool_calls") + f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    text = "".join([e async for e in EventWriter(_started()).events(chat())])
    events = sse_events(text)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    (item,) = events[-1]["response"]["output"]
    assert (item["type"], item["call_id"], item["name"]) == ("function_call", "call_1", "lookup")
    assert item["arguments"] == '{"q": "rain"}' and item["status"] == "completed"
    assert events[-1]["response"]["usage"]["total_tokens"] == 9


async def test_a_chat_answer_with_tool_calls_becomes_function_call_items() -> None:
    call = {"id": "call_9", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    completion = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }
    response = from_chat_completion(_started(), completion).as_dict()
    check("Response", response)
    assert response["status"] == "completed" and response["tools"] == [
        {**FUNCTION_TOOL, "strict": None}
    ]
    (item,) = response["output"]
    assert (item["type"], item["call_id"], item["arguments"]) == ("function_call", "call_9", "{}")
