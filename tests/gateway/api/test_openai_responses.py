"""The typed OpenAI responses both servers write (gateway/api/openai/responses.py)."""

from __future__ import annotations

import json

import pytest

from gateway.api.openai.responses import Shape, Usage

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
