"""Drives a live gateway with LlamaIndex's ``OpenAILike`` and prints one JSON report of what each
call returned; tests/gateway/api/test_clients.py asserts on it.

It runs in a venv of its own (``make clients``): llama-index-llms-openai pins ``openai<3``, so
installing it beside the project's packages would downgrade the SDK the rest of the suite runs
on.  usage: python llamaindex_client.py BASE_URL API_KEY ADAPTER BASE_MODEL

No ``from __future__ import annotations``: FunctionTool reads get_weather's annotations at run
time.
"""

import json
import sys
from collections.abc import Callable
from importlib.metadata import version
from typing import Any, Literal

import openai
from llama_index.core.llms import ChatMessage
from llama_index.core.program import FunctionCallingProgram
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai_like import OpenAILike
from pydantic import BaseModel, Field

url, key, adapter, base_model = sys.argv[1:5]
HELLO = [ChatMessage(role="user", content="hello there")]
PROMPT = "The quick brown fox"


def llm(model: str, *, chat: bool = True, **kwargs: Any) -> OpenAILike:
    return OpenAILike(
        model=model,
        api_base=url,
        api_key=key,
        is_chat_model=chat,
        is_function_calling_model=True,
        context_window=2048,
        temperature=0,
        max_retries=0,
        **{"max_tokens": 8, **kwargs},
    )


def attempt(call: Callable[[], Any]) -> dict[str, Any]:
    """A call's result, or the exception it raised: its class, status and message."""
    try:
        return {"ok": call()}
    except openai.APIStatusError as exc:
        return {
            "error": {
                "class": type(exc).__name__,
                "module": type(exc).__module__,
                "status": exc.status_code,
                "message": str(exc),
            }
        }
    except Exception as exc:  # the report says what failed; the test decides
        return {"error": {"class": type(exc).__name__, "status": None, "message": str(exc)}}


def get_weather(city: Literal["Paris", "Oslo"]) -> str:
    """The weather in a city."""  # an enum: the random base would write a free string forever
    return f"sunny in {city}"


class Verdict(BaseModel):
    """A yes-or-no verdict with a digit (test_clients.Verdict)."""

    answer: Literal["yes", "no"]
    count: int = Field(ge=0, le=9)


def tool_call() -> dict[str, Any]:
    weather = FunctionTool.from_defaults(fn=get_weather)
    model = llm(adapter, max_tokens=128)
    response = model.chat_with_tools([weather], user_msg="Weather in Paris?", tool_required=True)
    calls = model.get_tool_calls_from_response(response, error_on_no_tool_call=False)
    choice = response.raw.choices[0] if response.raw else None
    return {
        "calls": [{"name": c.tool_name, "kwargs": c.tool_kwargs} for c in calls],
        "finish_reason": choice.finish_reason if choice else None,
        "message": choice.message.model_dump() if choice else None,
    }


def structured() -> dict[str, Any]:
    program = FunctionCallingProgram.from_defaults(
        output_cls=Verdict, prompt_template_str="Is {thing} blue?", llm=llm(adapter, max_tokens=128)
    )
    result = program(thing="the sky")
    return result.model_dump() if isinstance(result, BaseModel) else {"unexpected": repr(result)}


report: dict[str, Any] = {"version": version("llama-index-llms-openai-like")}
answer = llm(adapter).chat(HELLO)
report["chat"] = {"content": answer.message.content, "id": answer.raw.id if answer.raw else None}
report["baseChat"] = {"content": llm(base_model).chat(HELLO).message.content}
report["stream"] = {"content": "".join(r.delta or "" for r in llm(adapter).stream_chat(HELLO))}
report["complete"] = {"text": llm(adapter, chat=False).complete(PROMPT).text}
report["streamComplete"] = {
    "text": "".join(r.delta or "" for r in llm(adapter, chat=False).stream_complete(PROMPT))
}
report["unknownModel"] = attempt(lambda: llm("no-such-adapter").chat(HELLO).message.content)
report["badParam"] = attempt(
    lambda: llm(adapter, additional_kwargs={"presence_penalty": 3}).chat(HELLO).message.content
)
report["tools"] = attempt(tool_call)
report["structured"] = attempt(structured)
json.dump(report, sys.stdout)
