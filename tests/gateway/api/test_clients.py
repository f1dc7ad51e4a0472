"""The five clients issue 13 names, against a real gateway over a socket.

The official ``openai`` Python SDK, LangChain (``langchain-openai``), LiteLLM, LlamaIndex
(``OpenAILike``) and the official OpenAI Node SDK, each as its user would point it at Flywheel:
a base URL and a tenant key.  Each one's cases: plain chat, streamed chat, a text completion
where the client has one, an error raised as the client's own exception type carrying the
gateway's message (an unknown model: 404; a value out of range: 400), and the tenant's adapter
chosen by ``model``.  Tools and structured output go through the clients that have them.

The gateway runs for real, on uvicorn over a socket in a thread of its own (the clients are
mostly synchronous and must not block its loop), with the embedded engine on the tiny random
demo base and SQLite.  What each answer should be comes from the same gateway over plain HTTP,
greedy: a client must hand back exactly the adapter's text, which differs from the base's.
LlamaIndex and the Node SDK run as processes of their own (installed by ``make clients``;
LlamaIndex in a venv of its own, since it pins ``openai<3``) and print a JSON report.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # else fetched at import

import httpx
import litellm
import openai
import pytest
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI
from langchain_openai import OpenAI as LangChainOpenAI
from pydantic import BaseModel, Field

from gateway.app import create_app
from tools.harness import make_settings, seed_tenant, serve_on_socket

HERE = Path(__file__).parent
CLIENTS_DIR = Path(
    os.environ.get("FLYWHEEL_TEST_CLIENTS_DIR")
    or Path.home() / ".cache" / "flywheel-test" / "clients"
)
ADAPTER = "support"
BASE = "demo-base"  # make_settings' base model name
HELLO = [{"role": "user", "content": "hello there"}]
PROMPT = "The quick brown fox"
MAX_TOKENS = 8
BAD_PARAM = {"presence_penalty": 3}  # OpenAI's range is -2 to 2

TOOL_TOKENS = 128  # the random base takes some 60 tokens over one call; 48 can cut it off
CITIES = ["Paris", "Oslo"]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": CITIES}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


class Verdict(BaseModel):
    """A structured answer small enough for the tiny base to finish within its tokens."""

    answer: Literal["yes", "no"]
    count: int = Field(ge=0, le=9)


@dataclass
class Gateway:
    url: str  # http://127.0.0.1:PORT, no /v1
    key: str  # tenant acme's, which has the adapter ADAPTER

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx.post(f"{self.v1}{path}", json=body, headers=headers, timeout=60)

    def chat_text(self, model: str) -> str:
        """The greedy answer to HELLO from ``model``, over plain HTTP."""
        resp = self.post(
            "/chat/completions",
            {"model": model, "messages": HELLO, "max_tokens": MAX_TOKENS, "temperature": 0},
        )
        assert resp.status_code == 200, resp.text
        return str(resp.json()["choices"][0]["message"]["content"])

    def completion_text(self) -> str:
        body = {"model": ADAPTER, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
        resp = self.post("/completions", body)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["choices"][0]["text"])

    def error(self, **fields: Any) -> dict[str, Any]:
        """The gateway's own error for a chat request with ``fields`` over HELLO."""
        body = {"model": ADAPTER, "messages": HELLO, "max_tokens": MAX_TOKENS, **fields}
        resp = self.post("/chat/completions", body)
        assert resp.status_code >= 400, resp.text
        return {"status": resp.status_code, **resp.json()["error"]}


@pytest.fixture(scope="module")
def gw(
    demo_base: Path, demo_adapters: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """The gateway on a socket, its loop in a thread; tenant acme with the adapter ADAPTER."""
    data = tmp_path_factory.mktemp("clients")
    settings = make_settings(data, f"sqlite+aiosqlite:///{data / 'flywheel.db'}", demo_base)
    started: concurrent.futures.Future[tuple[Gateway, asyncio.Event]] = concurrent.futures.Future()
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        try:
            stop = asyncio.Event()
            app = create_app(settings)
            async with serve_on_socket(app) as url:
                async with httpx.AsyncClient(base_url=url, timeout=120) as client:
                    assert (await client.get("/healthz")).status_code == 200  # lifespan ran
                tenant = await seed_tenant(
                    app.state.flywheel.db, settings, "acme", {ADAPTER: demo_adapters[0]}
                )
                started.set_result((Gateway(url, tenant.key), stop))
                await stop.wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    gateway, stop = started.result(timeout=300)
    try:
        yield gateway
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=60)
        loop.close()


@pytest.fixture(scope="module")
def expected(gw: Gateway) -> dict[str, str]:
    """The greedy answers a client must reproduce: the adapter's chat and text completion,
    and the base's chat, which must differ from the adapter's for routing to show."""
    texts = {"chat": gw.chat_text(ADAPTER), "base": gw.chat_text(BASE)}
    texts["completion"] = gw.completion_text()
    assert texts["chat"] != texts["base"]
    return texts


def assert_is_gateway_error(exc: Exception, status: int, gateway_error: dict[str, Any]) -> None:
    assert gateway_error["status"] == status
    assert gateway_error["message"] in str(exc)


# --- the official openai Python SDK ------------------------------------------------------------


def test_openai_sdk(gw: Gateway, expected: dict[str, str]) -> None:
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0)
    greedy: dict[str, Any] = {"max_tokens": MAX_TOKENS, "temperature": 0}
    raw = client.chat.completions.with_raw_response.create(model=ADAPTER, messages=HELLO, **greedy)
    assert raw.headers["x-flywheel-adapter-version"] == f"{ADAPTER}@1"
    assert raw.parse().choices[0].message.content == expected["chat"]
    base = client.chat.completions.create(model=BASE, messages=HELLO, **greedy)
    assert base.choices[0].message.content == expected["base"]
    stream = client.chat.completions.create(model=ADAPTER, messages=HELLO, stream=True, **greedy)
    assert (
        "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (expected["chat"])
    )
    text = client.completions.create(model=ADAPTER, prompt=PROMPT, **greedy)
    assert text.choices[0].text == expected["completion"]
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-adapter", messages=HELLO, **greedy)
    assert_is_gateway_error(missing.value, 404, gw.error(model="no-such-adapter"))
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=ADAPTER, messages=HELLO, **greedy, **BAD_PARAM)
    assert_is_gateway_error(bad.value, 400, gw.error(**BAD_PARAM))
    assert bad.value.body is not None and bad.value.body["param"] == "presence_penalty"  # type: ignore[index]


# --- LangChain ---------------------------------------------------------------------------------


def chat_model(gw: Gateway, model: str = ADAPTER, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model=model,
        base_url=gw.v1,
        api_key=gw.key,  # type: ignore[arg-type]
        temperature=0,
        max_retries=0,
        **{"max_tokens": MAX_TOKENS, **kwargs},
    )


def test_langchain_chat_and_routing(gw: Gateway, expected: dict[str, str]) -> None:
    answer = chat_model(gw, include_response_headers=True).invoke(HELLO)
    assert isinstance(answer, AIMessage)
    assert answer.content == expected["chat"]
    assert answer.response_metadata["headers"]["x-flywheel-adapter-version"] == f"{ADAPTER}@1"
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] >= 1
    assert chat_model(gw, BASE).invoke(HELLO).content == expected["base"]


def test_langchain_stream(gw: Gateway, expected: dict[str, str]) -> None:
    chunks = list(chat_model(gw, stream_usage=True).stream(HELLO))
    assert "".join(str(c.content) for c in chunks) == expected["chat"]
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert usage and usage[-1]["output_tokens"] >= 1


async def test_langchain_async(gw: Gateway, expected: dict[str, str]) -> None:
    model = chat_model(gw)
    assert (await model.ainvoke(HELLO)).content == expected["chat"]
    assert "".join([str(c.content) async for c in model.astream(HELLO)]) == expected["chat"]


def test_langchain_text_completion(gw: Gateway, expected: dict[str, str]) -> None:
    llm = LangChainOpenAI(
        model=ADAPTER,
        base_url=gw.v1,
        api_key=gw.key,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=MAX_TOKENS,
        max_retries=0,
    )
    assert llm.invoke(PROMPT) == expected["completion"]
    assert "".join(llm.stream(PROMPT)) == expected["completion"]


def test_langchain_errors(gw: Gateway) -> None:
    # LangChain lets the SDK's own exceptions through.
    with pytest.raises(openai.NotFoundError) as missing:
        chat_model(gw, "no-such-adapter").invoke(HELLO)
    assert_is_gateway_error(missing.value, 404, gw.error(model="no-such-adapter"))
    with pytest.raises(openai.BadRequestError) as bad:
        chat_model(gw, presence_penalty=3).invoke(HELLO)
    assert_is_gateway_error(bad.value, 400, gw.error(**BAD_PARAM))


@pytest.mark.parametrize("tool_choice", ["get_weather", "required"])
def test_langchain_bind_tools(gw: Gateway, tool_choice: str) -> None:
    # One call: with "required" and parallel calls allowed the random base calls on until
    # max_tokens.
    model = chat_model(gw, max_tokens=TOOL_TOKENS).bind_tools(
        [WEATHER_TOOL], tool_choice=tool_choice, parallel_tool_calls=False
    )
    answer = model.invoke("What is the weather in Paris?")
    assert isinstance(answer, AIMessage)
    assert [call["name"] for call in answer.tool_calls] == ["get_weather"]
    assert answer.tool_calls[0]["args"]["city"] in CITIES
    assert answer.invalid_tool_calls == []


def test_langchain_with_structured_output(gw: Gateway) -> None:
    model = chat_model(gw, max_tokens=TOOL_TOKENS).with_structured_output(
        Verdict, method="json_schema"
    )
    verdict = model.invoke("Is the sky blue? Answer yes or no, and a digit.")
    assert isinstance(verdict, Verdict)


# --- LiteLLM -------------------------------------------------------------------------------------


def litellm_args(gw: Gateway, model: str = ADAPTER) -> dict[str, Any]:
    """What LiteLLM needs for an OpenAI-compatible server: the `openai/` provider prefix and
    the base URL."""
    return {
        "model": f"openai/{model}",
        "api_base": gw.v1,
        "api_key": gw.key,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "num_retries": 0,
    }


def test_litellm_chat_and_routing(gw: Gateway, expected: dict[str, str]) -> None:
    answer = litellm.completion(messages=HELLO, **litellm_args(gw))
    assert answer.choices[0].message.content == expected["chat"]
    assert answer.usage.completion_tokens >= 1
    base = litellm.completion(messages=HELLO, **litellm_args(gw, BASE))
    assert base.choices[0].message.content == expected["base"]


def test_litellm_stream(gw: Gateway, expected: dict[str, str]) -> None:
    stream = litellm.completion(messages=HELLO, stream=True, **litellm_args(gw))
    assert (
        "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (expected["chat"])
    )


async def test_litellm_async(gw: Gateway, expected: dict[str, str]) -> None:
    answer = await litellm.acompletion(messages=HELLO, **litellm_args(gw))
    assert answer.choices[0].message.content == expected["chat"]
    stream = await litellm.acompletion(messages=HELLO, stream=True, **litellm_args(gw))
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces) == expected["chat"]


def test_litellm_text_completion(gw: Gateway, expected: dict[str, str]) -> None:
    # `text-completion-openai/` is LiteLLM's provider for an OpenAI-style /v1/completions.
    args = {**litellm_args(gw), "model": f"text-completion-openai/{ADAPTER}"}
    answer = litellm.text_completion(prompt=PROMPT, **args)
    assert answer.choices[0].text == expected["completion"]


def test_litellm_errors(gw: Gateway) -> None:
    with pytest.raises(litellm.NotFoundError) as missing:
        litellm.completion(messages=HELLO, **litellm_args(gw, "no-such-adapter"))
    assert missing.value.status_code == 404
    assert_is_gateway_error(missing.value, 404, gw.error(model="no-such-adapter"))
    with pytest.raises(litellm.BadRequestError) as bad:
        litellm.completion(messages=HELLO, **litellm_args(gw), **BAD_PARAM)
    assert bad.value.status_code == 400
    assert_is_gateway_error(bad.value, 400, gw.error(**BAD_PARAM))


def test_litellm_tools(gw: Gateway) -> None:
    answer = litellm.completion(
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        **{**litellm_args(gw), "max_tokens": TOOL_TOKENS},
    )
    calls = answer.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments)["city"] in CITIES


def test_litellm_json_schema(gw: Gateway) -> None:
    answer = litellm.completion(
        messages=[{"role": "user", "content": "Is the sky blue? Answer yes or no, and a digit."}],
        response_format=Verdict,
        **{**litellm_args(gw), "max_tokens": TOOL_TOKENS},
    )
    Verdict.model_validate_json(answer.choices[0].message.content)


# --- LlamaIndex and the Node SDK: their own processes --------------------------------------------


def required_tool(what: str, present: bool, how: str) -> None:
    """Like PostgreSQL: optional on a laptop (skip), required in CI (fail)."""
    if present:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required in CI ({how})")
    pytest.skip(f"{what} is not installed ({how})")


def run_report(argv: list[str]) -> dict[str, Any]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.fixture(scope="module")
def llamaindex(gw: Gateway) -> dict[str, Any]:
    python = CLIENTS_DIR / "llamaindex-venv" / "bin" / "python"
    required_tool("LlamaIndex's venv", python.exists(), f"make clients; looked for {python}")
    return run_report(
        [str(python), str(HERE / "llamaindex_client.py"), gw.v1, gw.key, ADAPTER, BASE]
    )


@pytest.mark.slow
def test_llamaindex(llamaindex: dict[str, Any], expected: dict[str, str], gw: Gateway) -> None:
    assert llamaindex["chat"]["content"] == expected["chat"]
    assert llamaindex["chat"]["id"].startswith("chatcmpl-")
    assert llamaindex["baseChat"]["content"] == expected["base"]
    assert llamaindex["stream"]["content"] == expected["chat"]
    assert llamaindex["complete"]["text"] == expected["completion"]
    assert llamaindex["streamComplete"]["text"] == expected["completion"]
    missing = llamaindex["unknownModel"]["error"]
    assert (missing["class"], missing["status"]) == ("NotFoundError", 404)
    assert gw.error(model="no-such-adapter")["message"] in missing["message"]
    bad = llamaindex["badParam"]["error"]
    assert (bad["class"], bad["status"]) == ("BadRequestError", 400)
    assert gw.error(**BAD_PARAM)["message"] in bad["message"]


@pytest.mark.slow
def test_llamaindex_tools(llamaindex: dict[str, Any]) -> None:
    call = llamaindex["tools"]
    assert "ok" in call, call
    assert [c["name"] for c in call["ok"]["calls"]] == ["get_weather"], call
    assert call["ok"]["calls"][0]["kwargs"]["city"] in CITIES


@pytest.mark.slow
def test_llamaindex_structured(llamaindex: dict[str, Any]) -> None:
    # FunctionCallingProgram asks for the model's fields as a call to a tool named after it.
    result = llamaindex["structured"]
    assert "ok" in result, result
    Verdict.model_validate(result["ok"])


@pytest.fixture(scope="module")
def node(gw: Gateway) -> dict[str, Any]:
    modules = CLIENTS_DIR / "js"
    required_tool("Node.js", shutil.which("node") is not None, "Debian's nodejs")
    sdk = modules / "node_modules" / "openai"
    required_tool("The OpenAI Node SDK", sdk.exists(), f"make clients; looked for {sdk}")
    script = HERE / "js" / "openai_client.mjs"
    cases = {
        "weatherTool": WEATHER_TOOL,
        "toolTokens": TOOL_TOKENS,
        "verdictSchema": {**Verdict.model_json_schema(), "additionalProperties": False},
    }
    argv = [str(modules), gw.v1, gw.key, ADAPTER, BASE, json.dumps(cases)]
    return run_report(["node", str(script), *argv])


@pytest.mark.slow
def test_node_sdk(node: dict[str, Any], expected: dict[str, str], gw: Gateway) -> None:
    locked = json.loads((HERE / "js" / "package-lock.json").read_text())
    assert node["sdkVersion"] == locked["packages"]["node_modules/openai"]["version"]
    assert node["chat"]["content"] == expected["chat"]
    assert node["chat"]["id"].startswith("chatcmpl-") and node["chat"]["model"] == ADAPTER
    assert node["chat"]["adapterVersion"] == f"{ADAPTER}@1"
    assert node["chat"]["usage"]["completion_tokens"] >= 1
    assert node["baseChat"]["content"] == expected["base"]
    assert node["stream"]["content"] == expected["chat"]
    assert node["stream"]["usage"]["completion_tokens"] >= 1
    assert node["streamHelper"]["content"] == expected["chat"]
    assert node["completion"] == {"object": "text_completion", "text": expected["completion"]}
    assert node["completionStream"]["text"] == expected["completion"]
    missing = node["unknownModel"]["error"]
    assert missing["isNotFound"] and missing["status"] == 404
    assert gw.error(model="no-such-adapter")["message"] in missing["message"]
    bad = node["badParam"]["error"]
    assert bad["isBadRequest"] and bad["status"] == 400 and bad["param"] == "presence_penalty"
    assert gw.error(**BAD_PARAM)["message"] in bad["message"]
    assert node["models"] == sorted([ADAPTER, BASE])


def assert_one_weather_call(answer: dict[str, Any], finish_reason: str) -> dict[str, Any]:
    """The Node report of a tool-call answer: one call to get_weather with a city of CITIES."""
    assert answer["finishReason"] == finish_reason, answer
    (call,) = answer["calls"]
    assert call["type"] == "function" and call["name"] == "get_weather", call
    assert answer["content"] is None  # no text beside the call
    assert call["id"].startswith("call_") and len(call["id"]) > len("call_"), call
    assert "ok" in call["parsed"], call  # JSON.parse took the arguments
    assert call["parsed"]["ok"]["city"] in CITIES, call
    assert json.loads(call["arguments"]) == call["parsed"]["ok"]
    return dict(call)


# A named tool's answer ends with "stop", as OpenAI's does; "required" with "tool_calls".
NODE_TOOL_FINISH = {"named": "stop", "required": "tool_calls"}


@pytest.mark.slow
@pytest.mark.parametrize("how", sorted(NODE_TOOL_FINISH))
def test_node_tools(node: dict[str, Any], how: str) -> None:
    assert_one_weather_call(node["tools"][how], NODE_TOOL_FINISH[how])


@pytest.mark.slow
@pytest.mark.parametrize("how", sorted(NODE_TOOL_FINISH))
def test_node_tools_streamed_and_reassembled(node: dict[str, Any], how: str) -> None:
    # chat.completions.stream(...).finalChatCompletion() puts the tool-call pieces together
    # into the call the same greedy request gets whole (under an id of its own).
    streamed = assert_one_weather_call(node["toolsStream"][how], NODE_TOOL_FINISH[how])
    whole = assert_one_weather_call(node["tools"][how], NODE_TOOL_FINISH[how])
    assert streamed["id"] != whole["id"]
    assert (streamed["name"], streamed["arguments"]) == (whole["name"], whole["arguments"])


@pytest.mark.slow
def test_node_structured_output(node: dict[str, Any]) -> None:
    structured = node["structured"]
    assert structured["finishReason"] == "stop", structured
    Verdict.model_validate_json(structured["content"])


def assert_node_responses(answers: dict[str, Any], status: str) -> str:
    """One request's answers through the Node SDK's Responses API (plain, streamed event by
    event, and through responses.stream's finalResponse): all the same text, with ``status``
    and the stream's last event ``response.<status>``.  Gives the text."""
    plain, stream = answers["plain"], answers["stream"]
    text = str(plain["outputText"])
    assert plain["id"].startswith("resp_") and plain["object"] == "response", plain
    assert (plain["model"], plain["status"]) == (ADAPTER, status), plain
    assert text != ""
    types = stream["eventTypes"]
    assert types[:2] == ["response.created", "response.in_progress"], types
    assert "response.output_text.delta" in types and types[-1] == f"response.{status}", types
    assert stream["text"] == text
    final = stream["final"]
    assert final["status"] == status and final["outputText"] == text, final
    assert final["id"].startswith("resp_") and final["id"] != plain["id"], final
    assert answers["streamHelper"] == {"status": status, "outputText": text}
    return text


@pytest.mark.slow
def test_node_responses(node: dict[str, Any], expected: dict[str, str]) -> None:
    # The Responses API runs the chat path: HELLO's greedy answer, under a response id.  The demo
    # base never stops by itself, so max_output_tokens (MAX_TOKENS) ends it: "incomplete".
    answers = node["responses"]["text"]
    assert assert_node_responses(answers, "incomplete") == expected["chat"]
    assert answers["plain"]["incompleteDetails"] == {"reason": "max_output_tokens"}
    assert answers["plain"]["outputTokens"] == MAX_TOKENS


@pytest.mark.slow
def test_node_responses_json_schema(node: dict[str, Any]) -> None:
    # text.format's schema holds the answer to a grammar, whose end ends it: "completed".
    answers = node["responses"]["verdict"]
    Verdict.model_validate_json(assert_node_responses(answers, "completed"))
    assert answers["plain"]["incompleteDetails"] is None
