"""The typed OpenAI responses both servers write (gateway/api/openai/responses.py), and the
relay that reads vLLM's streamed answers into engine chunks for them (vllm_client.relay).

The relay's inputs are the events vLLM 0.32's entrypoints/openai serving writes, as data;
tests/e2e/test_vllm_cpu.py runs the same shapes through a real vLLM."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from gateway.api.openai.responses import Answer, Shape, Usage
from gateway.engine.base import GenerationChunk, TokenLogprob, ToolCallDelta, TopLogprob
from gateway.engine.vllm_client import Kind, relay
from tests.gateway.api.test_openai_spec import check

TEXTS = ["", "hello", ' "quoted" \\ back', "naïve — ünïcode ✓", "line\nbreak\ttab\x00nul", "💡"]


def _data(event: str) -> dict[str, object]:
    assert event.startswith("data: ") and event.endswith("\n\n")
    parsed: dict[str, object] = json.loads(event[6:-2])
    return parsed


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("openai", [True, False])
@pytest.mark.parametrize("usage_chunk", [True, False])
def test_the_per_token_template_writes_what_the_model_dump_writes(
    chat: bool, openai: bool, usage_chunk: bool
) -> None:
    shape = Shape("chatcmpl-1", "m", 7, chat=chat, fingerprint="fp_x", openai=openai,
                  usage_chunk=usage_chunk)  # fmt: skip
    for text in TEXTS:
        fast = shape.event(text)  # the template path
        slow = shape._event(text, None, role=False, usage=None)  # a full pydantic dump
        assert _data(fast) == _data(slow)


def test_gateway_dialect_sets_fingerprint_refusal_and_null_usage() -> None:
    shape = Shape("chatcmpl-1", "bot", 7, chat=True, fingerprint="fp_x", usage_chunk=True)
    role = _data(shape.event("", role=True))
    assert role["system_fingerprint"] == "fp_x" and role["usage"] is None
    assert role["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": "", "refusal": None},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    finish = _data(shape.event(None, "stop"))
    assert finish["choices"][0]["delta"] == {}  # type: ignore[index]
    full = json.loads(shape.full("hi", "stop", Usage.of(3, 1)).dump())
    assert full["object"] == "chat.completion" and full["system_fingerprint"] == "fp_x"
    assert full["choices"][0]["message"] == {"role": "assistant", "content": "hi", "refusal": None}
    assert full["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    end = _data(shape.usage_event(Usage.of(3, 1)))
    assert end["choices"] == [] and end["usage"] == full["usage"]


def test_without_a_usage_chunk_no_usage_key_appears() -> None:
    shape = Shape("cmpl-1", "bot", 7, chat=False, fingerprint="fp_x")
    event = _data(shape.event("hi"))
    assert "usage" not in event and event["object"] == "text_completion"
    running = _data(shape.event("hi", usage=Usage.of(2, 1)))  # continuous_usage_stats
    assert running["usage"] == {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}


def test_vllm_dialect_has_no_fingerprint_and_no_refusal() -> None:
    shape = Shape("chatcmpl-1", "m", 7, chat=True, openai=False, usage_chunk=True)
    role = _data(shape.event("", role=True))
    assert "system_fingerprint" not in role and "usage" not in role
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}  # type: ignore[index]
    full = json.loads(shape.full("hi", "length", Usage.of(3, 1)).dump())
    assert "system_fingerprint" not in full
    assert full["choices"][0]["message"] == {"role": "assistant", "content": "hi"}


# --- several choices, logprobs, tool calls (the vLLM engine's answers, issue 13) -------------


def _chat_events(events: list[str]) -> list[dict[str, Any]]:
    return [_data(e) for e in events]


def test_answers_put_tool_calls_together_and_match_the_spec() -> None:
    pieces = [
        GenerationChunk("", index=1, tool_calls=[ToolCallDelta(0, "call-a", "get_weather", "")]),
        GenerationChunk("", index=1, tool_calls=[ToolCallDelta(0, arguments='{"city": ')]),
        GenerationChunk("", index=1, tool_calls=[ToolCallDelta(1, "call-b", "get_time", '{"zo')]),
        GenerationChunk("", index=1, tool_calls=[ToolCallDelta(0, arguments='"Paris"}')]),
        GenerationChunk("", index=1, tool_calls=[ToolCallDelta(1, arguments='ne": "UTC"}')]),
        GenerationChunk("", "tool_calls", 9, 20, index=1),
    ]
    first = Answer(0)
    first.add(GenerationChunk("Hello", index=0))
    first.add(GenerationChunk("", "length", 9, 20, index=0))
    second = Answer(1)
    for chunk in pieces:
        second.add(chunk)
    shape = Shape("chatcmpl-1", "bot", 7, chat=True, fingerprint="fp_x")
    full = json.loads(shape.answers([second, first], Usage.of(9, 20)).dump())
    check("CreateChatCompletionResponse", full)
    assert [c["index"] for c in full["choices"]] == [0, 1]
    assert full["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello",
        "refusal": None,
    }
    message = full["choices"][1]["message"]
    assert message["content"] is None  # OpenAI's null beside tool calls without text
    assert message["tool_calls"] == [
        {
            "id": "call-a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {
            "id": "call-b",
            "type": "function",
            "function": {"name": "get_time", "arguments": '{"zone": "UTC"}'},
        },
    ]
    assert full["choices"][1]["finish_reason"] == "tool_calls"
    assert full["choices"][1]["logprobs"] is None


def test_streamed_tool_call_pieces_carry_their_choice_index() -> None:
    shape = Shape("chatcmpl-1", "bot", 7, chat=True, fingerprint="fp_x", usage_chunk=True)
    first = _data(
        shape.event(None, index=1, tool_calls=[ToolCallDelta(0, "call-a", "get_weather", "")])
    )
    more = _data(shape.event(None, index=1, tool_calls=[ToolCallDelta(0, arguments="{}")]))
    finish = _data(shape.event(None, "tool_calls", index=1))
    for chunk in (first, more, finish):
        check("CreateChatCompletionStreamResponse", chunk)
        assert chunk["choices"][0]["index"] == 1  # type: ignore[index]
    assert first["choices"][0]["delta"] == {  # type: ignore[index]
        "tool_calls": [
            {
                "index": 0,
                "id": "call-a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ]
    }
    assert more["choices"][0]["delta"] == {  # type: ignore[index]
        "tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]
    }
    assert finish["choices"][0]["finish_reason"] == "tool_calls"  # type: ignore[index]


TOKENS = [
    TokenLogprob("He", -0.5, [72, 101], (TopLogprob("He", -0.5, [72, 101]), TopLogprob("A", -1.5))),
    TokenLogprob("llo", -0.25, None, (TopLogprob("llo", -0.25),)),
]


@pytest.mark.parametrize("openai", [True, False])
def test_chat_logprobs(openai: bool) -> None:
    shape = Shape("chatcmpl-1", "bot", 7, chat=True, fingerprint="fp_x", openai=openai,
                  logprobs=True)  # fmt: skip
    answer = Answer(0)
    answer.add(GenerationChunk("Hello", logprobs=TOKENS))
    answer.add(GenerationChunk("", "stop", 3, 2))
    full = json.loads(shape.answers([answer], Usage.of(3, 2)).dump())
    logprobs = full["choices"][0]["logprobs"]
    assert logprobs["content"] == [
        {
            "token": "He",
            "logprob": -0.5,
            "bytes": [72, 101],
            "top_logprobs": [
                {"token": "He", "logprob": -0.5, "bytes": [72, 101]},
                {"token": "A", "logprob": -1.5, "bytes": [65]},  # bytes from the token
            ],
        },
        {
            "token": "llo",
            "logprob": -0.25,
            "bytes": [108, 108, 111],
            "top_logprobs": [{"token": "llo", "logprob": -0.25, "bytes": [108, 108, 111]}],
        },
    ]
    if openai:
        assert logprobs["refusal"] is None
        check("CreateChatCompletionResponse", full)
        event = _data(shape.event("Hello", logprobs=TOKENS))
        check("CreateChatCompletionStreamResponse", event)
        assert event["choices"][0]["logprobs"] == logprobs  # type: ignore[index]
    else:
        assert "refusal" not in logprobs


def test_completion_logprobs_offsets_run_over_the_whole_choice() -> None:
    shape = Shape("cmpl-1", "bot", 7, chat=False, fingerprint="fp_x", logprobs=True)
    answer = Answer(0)
    assert answer.add(GenerationChunk("Hello", logprobs=TOKENS)) == 0
    more = [TokenLogprob(" world", -1.0, None, (TopLogprob(" world", -1.0),))]
    assert answer.add(GenerationChunk(" world", logprobs=more)) == 5  # starts after "Hello"
    answer.add(GenerationChunk("", "length", 2, 3))
    full = json.loads(shape.answers([answer], Usage.of(2, 3)).dump())
    check("CreateCompletionResponse", full)
    assert full["choices"][0]["logprobs"] == {
        "tokens": ["He", "llo", " world"],
        "token_logprobs": [-0.5, -0.25, -1.0],
        "top_logprobs": [{"He": -0.5, "A": -1.5}, {"llo": -0.25}, {" world": -1.0}],
        "text_offset": [0, 2, 5],
    }
    streamed = _data(shape.event(" world", logprobs=more, text_offset=5))
    assert streamed["choices"][0]["logprobs"]["text_offset"] == [5]  # type: ignore[index]
    # An echoed prompt's first token has nothing before it: null, as OpenAI's echo wrote it.
    echoed = [TokenLogprob("Once", None), *TOKENS]
    written = _data(shape.event("OnceHello", logprobs=echoed))
    assert written["choices"][0]["logprobs"]["token_logprobs"][0] is None  # type: ignore[index]
    assert written["choices"][0]["logprobs"]["top_logprobs"][0] is None  # type: ignore[index]


def test_without_logprobs_every_choice_has_null() -> None:
    shape = Shape("cmpl-1", "bot", 7, chat=False, fingerprint="fp_x")
    full = json.loads(shape.full("hi", "stop", Usage.of(1, 1)).dump())
    assert full["choices"][0]["logprobs"] is None


# --- the relay: vLLM's streamed events (as its entrypoints/openai serving writes them) --------


async def _relay(events: list[dict[str, Any]], kind: Kind, n: int = 1) -> list[GenerationChunk]:
    async def upstream() -> AsyncGenerator[dict[str, Any], None]:
        for event in events:
            yield event

    return [chunk async for chunk in relay(upstream(), kind, n)]


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip


async def test_relay_holds_each_choices_finish_to_the_end_with_the_total_usage() -> None:
    # n=2: per-choice running usage (vLLM's continuous_usage_stats counts one choice), then
    # the request's totals in a last event without choices.
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
         "usage": _usage(5, 0)},
        {"choices": [{"index": 1, "delta": {"role": "assistant", "content": ""}}],
         "usage": _usage(5, 0)},
        {"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}],
         "usage": _usage(5, 1)},
        {"choices": [{"index": 1, "delta": {"content": "b"}, "finish_reason": None}],
         "usage": _usage(5, 1)},
        {"choices": [{"index": 1, "delta": {"content": "c"}, "finish_reason": "length"}],
         "usage": _usage(5, 2)},
        {"choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}],
         "usage": _usage(5, 1)},
        {"choices": [], "usage": _usage(5, 3)},
    ]  # fmt: skip
    chunks = await _relay(events, "chat", n=2)
    assert [(c.index, c.text, c.finish_reason) for c in chunks] == [
        (0, "a", None),
        (1, "b", None),
        (1, "c", None),
        (0, "", "stop"),
        (1, "", "length"),
    ]
    assert [c.completion_tokens for c in chunks] == [1, 2, 3, 3, 3]  # summed over choices
    assert all(c.prompt_tokens == 5 for c in chunks)


async def test_relay_reads_tool_calls_and_logprobs() -> None:
    token = {"token": "{", "logprob": -0.1, "bytes": [123],
             "top_logprobs": [{"token": "{", "logprob": -0.1, "bytes": [123]}]}  # fmt: skip
    events = [
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "chatcmpl-tool-1", "type": "function",
             "function": {"name": "f", "arguments": ""}}]},
            "logprobs": {"content": [token]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "{}"}}]}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": _usage(4, 2)},
    ]  # fmt: skip
    chunks = await _relay(events, "chat")
    assert chunks[0].tool_calls == [ToolCallDelta(0, "chatcmpl-tool-1", "f", "")]
    assert chunks[0].logprobs == [TokenLogprob("{", -0.1, [123], (TopLogprob("{", -0.1, [123]),))]
    assert chunks[1].tool_calls == [ToolCallDelta(0, arguments="{}")]
    assert (chunks[2].finish_reason, chunks[2].completion_tokens) == ("tool_calls", 2)


async def test_relay_reads_completion_logprobs_and_prompt_lists() -> None:
    # Two prompts, n=1: choice index = prompt index; prompt tokens are per prompt.
    lp = {"tokens": ["Hi", "!"], "token_logprobs": [None, -0.5],
          "top_logprobs": [None, {"!": -0.5, "?": -1.0}], "text_offset": [0, 2]}  # fmt: skip
    events = [
        {"choices": [{"index": 0, "text": "Hi!", "logprobs": lp, "finish_reason": None}],
         "usage": _usage(3, 1)},
        {"choices": [{"index": 1, "text": "x", "finish_reason": "length"}],
         "usage": _usage(4, 1)},
        {"choices": [{"index": 0, "text": "", "finish_reason": "stop"}], "usage": _usage(3, 1)},
        {"choices": [], "usage": _usage(7, 2)},
    ]  # fmt: skip
    chunks = await _relay(events, "text")
    assert chunks[0].logprobs == [
        TokenLogprob("Hi", None),
        TokenLogprob("!", -0.5, None, (TopLogprob("!", -0.5), TopLogprob("?", -1.0))),
    ]
    assert (chunks[1].prompt_tokens, chunks[1].completion_tokens) == (7, 2)  # running sums
    assert [(c.index, c.finish_reason) for c in chunks[2:]] == [(0, "stop"), (1, "length")]
    assert all((c.prompt_tokens, c.completion_tokens) == (7, 2) for c in chunks[2:])
