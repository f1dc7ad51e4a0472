"""Structured output, n and logprobs on the embedded engine, on the tiny random demo base.

The base's weights are random, so what it writes means nothing: that is the point for the
grammar.  Whatever a random model would pick, a JSON-schema row must come out as JSON that
validates (checked with jsonschema, not with the grammar library), and rows with other
constraints, or none, in the same batch must be unaffected.  No fakes: real llguidance,
transformers and the engine thread.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import pytest_asyncio

from gateway.core.errors import InvalidRequest
from gateway.engine.base import GenerationChunk, GenerationRequest, SamplingParams
from gateway.engine.embedded import EmbeddedEngine
from gateway.engine.embedded_grammar import constraint_for
from gateway.engine.embedded_tools import ToolCallReader

CHAT = [{"role": "user", "content": "Describe a person."}]
GREEDY = SamplingParams(max_tokens=128, temperature=0.0)

# Bounded on purpose: a random model never chooses to close an unbounded string, so a schema
# it must finish within max_tokens keeps its strings short.
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "member": {"type": "boolean"},
        "colour": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "integer"}, "maxItems": 2},
    },
    "required": ["name", "age", "member", "colour", "tags"],
    "additionalProperties": False,
}
POINT = {
    "type": "object",
    "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
    "required": ["x", "y"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
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
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 14}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
TOOL_SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CLOCK)}


def json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    }


def chat(
    extra: dict[str, Any], sampling: SamplingParams = GREEDY, rid: str = "r"
) -> GenerationRequest:
    return GenerationRequest(rid, None, sampling, messages=CHAT, extra=extra)


async def collect(engine: EmbeddedEngine, req: GenerationRequest) -> list[GenerationChunk]:
    return [chunk async for chunk in engine.generate(req)]


def text(chunks: list[GenerationChunk], index: int = 0) -> str:
    return "".join(c.text for c in chunks if c.index == index)


def finish(chunks: list[GenerationChunk], index: int = 0) -> str | None:
    return next(c.finish_reason for c in chunks if c.index == index and c.finish_reason)


def calls(chunks: list[GenerationChunk]) -> list[dict[str, Any]]:
    """The tool calls put together from their pieces, as the SDKs do."""
    out: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for piece in chunk.tool_calls or ():
            call = out.setdefault(piece.index, {"id": None, "name": None, "arguments": ""})
            call["id"] = call["id"] or piece.id
            call["name"] = call["name"] or piece.name
            call["arguments"] += piece.arguments
    return [out[i] for i in sorted(out)]


@pytest_asyncio.fixture(scope="module")
async def engine(demo_base: Path) -> AsyncIterator[EmbeddedEngine]:
    engine = EmbeddedEngine(demo_base, base_model_name="demo", max_batch_size=16)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def test_json_schema_rows_always_validate_even_on_random_weights(
    engine: EmbeddedEngine,
) -> None:
    seeds = range(6)
    results = await asyncio.gather(
        *(
            collect(engine, chat(json_schema(PERSON), SamplingParams(max_tokens=128, seed=s)))
            for s in seeds
        )
    )
    answers = []
    for chunks in results:
        assert finish(chunks) == "stop", text(chunks)
        answer = json.loads(text(chunks))
        jsonschema.validate(answer, PERSON)
        answers.append(answer)
    assert len({json.dumps(a) for a in answers}) > 1  # sampled, not one forced answer


async def test_json_object_is_an_object(engine: EmbeddedEngine) -> None:
    chunks = await collect(engine, chat({"response_format": {"type": "json_object"}}))
    assert finish(chunks) == "stop"
    assert isinstance(json.loads(text(chunks)), dict)


async def test_a_mixed_batch_keeps_each_rows_constraint(engine: EmbeddedEngine) -> None:
    free_alone = await collect(engine, chat({}, rid="free-alone"))
    person, point, free, tool = await asyncio.gather(
        collect(engine, chat(json_schema(PERSON), rid="mixed")),
        collect(engine, chat(json_schema(POINT), rid="mixed")),
        collect(engine, chat({}, rid="mixed")),
        collect(
            engine,
            chat(
                {"tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": False},
                rid="mixed",
            ),
        ),
    )
    waves = {s.wave for s in engine.recent if s.request_id == "mixed"}
    assert len(waves) == 1  # one batch
    jsonschema.validate(json.loads(text(person)), PERSON)
    jsonschema.validate(json.loads(text(point)), POINT)
    assert text(free) == text(free_alone)  # a free row decodes as if it ran alone
    (call,) = calls(tool)
    jsonschema.validate(json.loads(call["arguments"]), TOOL_SCHEMAS["get_weather"])


async def test_required_tool_choice_calls_one_tool_with_valid_arguments(
    engine: EmbeddedEngine,
) -> None:
    extra = {"tools": [WEATHER, CLOCK], "tool_choice": "required", "parallel_tool_calls": False}
    for seed in range(3):
        chunks = await collect(engine, chat(extra, SamplingParams(max_tokens=256, seed=seed)))
        assert finish(chunks) == "tool_calls"
        (call,) = calls(chunks)
        assert text(chunks) == ""
        assert call["id"].startswith("call_") and call["name"] in TOOL_SCHEMAS
        jsonschema.validate(json.loads(call["arguments"]), TOOL_SCHEMAS[call["name"]])


async def test_parallel_calls_come_one_by_one_each_valid(engine: EmbeddedEngine) -> None:
    """With parallel calls a random model goes on calling until max_tokens: every call that
    closed came through whole and valid, the one cut off did not."""
    extra = {"tools": [WEATHER, CLOCK], "tool_choice": "required"}
    chunks = await collect(engine, chat(extra, SamplingParams(max_tokens=256, seed=0)))
    made = calls(chunks)
    assert len(made) >= 2 and finish(chunks) in ("tool_calls", "length")
    assert len({c["id"] for c in made}) == len(made)
    for call in made:
        jsonschema.validate(json.loads(call["arguments"]), TOOL_SCHEMAS[call["name"]])


async def test_a_named_tool_streams_its_arguments_and_stops(engine: EmbeddedEngine) -> None:
    choice = {"type": "function", "function": {"name": "get_time"}}
    chunks = await collect(engine, chat({"tools": [WEATHER, CLOCK], "tool_choice": choice}))
    assert finish(chunks) == "stop"  # OpenAI's finish for a named tool
    (call,) = calls(chunks)
    assert call["name"] == "get_time"
    jsonschema.validate(json.loads(call["arguments"]), TOOL_SCHEMAS["get_time"])
    pieces = [p for c in chunks for p in c.tool_calls or ()]
    assert len(pieces) > 1 and pieces[0].id is not None and pieces[1].id is None


def test_auto_text_and_tool_blocks_are_told_apart_across_deltas() -> None:
    constraint = constraint_for({"tools": [WEATHER], "tool_choice": "auto"})
    assert constraint is not None
    reader = ToolCallReader(constraint)
    block = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}\n</tool_call>'
    said, pieces = [], []
    # Split anywhere, the opener itself across deltas.
    for delta in ["Let me check. <tool", "_ca", block[len("<tool_ca") : 40], block[40:], "\n"]:
        content, made = reader.feed(delta, final=False)
        said.append(content)
        pieces += made
    content, made = reader.feed("", final=True)
    said.append(content)
    pieces += made
    assert "".join(said) == "Let me check. "
    assert [(p.name, json.loads(p.arguments)) for p in pieces] == [
        ("get_weather", {"city": "Oslo", "unit": "c"})
    ]
    assert reader.tagged_calls


async def test_auto_lets_the_model_answer_in_text(engine: EmbeddedEngine) -> None:
    """A random model does not write ``<tool_call>``: under "auto" it answers in plain text."""
    chunks = await collect(engine, chat({"tools": [WEATHER], "tool_choice": "auto"}))
    assert finish(chunks) in ("stop", "length") and not calls(chunks) and text(chunks)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            json_schema({"type": "object", "properties": {"a": {"type": "strin"}}}),
            "response_format",
        ),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tools": [{"type": "function"}], "tool_choice": "required"}, "tools.0"),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
    ],
)
async def test_what_cannot_be_enforced_is_refused_by_name(
    engine: EmbeddedEngine, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await collect(engine, chat(extra))
    assert refused.value.param == param


async def test_n_choices_each_finish_and_share_the_requests_counts(
    engine: EmbeddedEngine,
) -> None:
    sampling = SamplingParams(max_tokens=12, seed=7)
    chunks = await collect(engine, chat({"n": 3}, sampling))
    assert sorted(c.index for c in chunks if c.finish_reason) == [0, 1, 2]
    last = chunks[-1]
    rows = [s for s in engine.recent if s.request_id == "r"][-3:]
    assert last.completion_tokens == sum(s.completion_tokens for s in rows)
    assert last.prompt_tokens == rows[0].prompt_tokens  # the prompt counts once
    # Choice i samples from seed + i: the same answer as a lone request with that seed.
    for index in (1, 2):
        alone = await collect(engine, chat({}, SamplingParams(max_tokens=12, seed=7 + index)))
        assert text(chunks, index) == text(alone)
    assert len({text(chunks, i) for i in range(3)}) > 1


async def test_n_with_a_schema_gives_each_choice_its_own_parser(engine: EmbeddedEngine) -> None:
    extra = {"n": 2, **json_schema(PERSON)}
    chunks = await collect(engine, chat(extra, SamplingParams(max_tokens=128, seed=3)))
    for index in (0, 1):
        jsonschema.validate(json.loads(text(chunks, index)), PERSON)


async def test_chat_logprobs_name_each_token_and_its_alternatives(
    engine: EmbeddedEngine,
) -> None:
    sampling = SamplingParams(max_tokens=8, temperature=0.0)
    chunks = await collect(engine, chat({"logprobs": True, "top_logprobs": 3}, sampling))
    tokens = [t for c in chunks for t in c.logprobs or ()]
    generated = [s for s in engine.recent if s.request_id == "r"][-1]
    eos = engine._worker.eos_ids if engine._worker else frozenset()
    assert len(tokens) == len([t for t in generated.token_ids if t not in eos])
    assert "".join(t.token for t in tokens) == text(chunks)
    for token in tokens:
        assert token.logprob is not None and token.logprob <= 0
        assert len(token.top) == 3
        ranked = [top.logprob for top in token.top]
        assert ranked == sorted(ranked, reverse=True)
        # Greedy with no processors picks the most likely token.
        assert token.logprob == token.top[0].logprob


async def test_completion_logprobs_zero_gives_the_tokens_only(engine: EmbeddedEngine) -> None:
    req = GenerationRequest(
        "t", None, SamplingParams(max_tokens=6), prompt="Once upon", extra={"logprobs": 0}
    )
    chunks = await collect(engine, req)
    tokens = [t for c in chunks for t in c.logprobs or ()]
    assert tokens and all(t.top == () for t in tokens)


async def test_plain_rows_carry_no_logprobs(engine: EmbeddedEngine) -> None:
    chunks = await collect(engine, chat({}, SamplingParams(max_tokens=6)))
    assert all(c.logprobs is None and c.tool_calls is None for c in chunks)
