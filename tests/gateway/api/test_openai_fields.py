"""Every request field is honoured or refused by name, on each engine (issue 13).

The embedded engine runs for real on the tiny random demo base, driven through the app with
the official ``openai`` client.  Honoured fields are checked by their effect: token ids the
engine generated (its ``recent`` stats) against a greedy reference decoded here with the
plain model and the field's formula written out, or against plain greedy output.  The vLLM
engine is checked by the request the gateway sends upstream, captured by test_vllm_engine's
FakeVLLM (vLLM needs a GPU or its CPU build; test_vllm_cpu.py covers the real one).  The
database is SQLite only: nothing here depends on the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
import torch
from fastapi import FastAPI

from gateway.api.engine_server import create_local_app
from gateway.app import create_app
from gateway.core.config import Settings
from gateway.engine.base import GenerationRequest, SamplingParams
from gateway.engine.embedded import EmbeddedEngine
from gateway.engine.vllm import VLLMEngine, generation_error
from gateway.engine.vllm_client import UpstreamError, upstream_body
from tests.engine.test_vllm_engine import FakeVLLM, transport
from tools.harness import SeededTenant, make_settings, running_app, seed_tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")

PROMPT = "The quick brown fox"
CHAT = [{"role": "user", "content": "hello there"}]


@dataclass
class Gateway:
    app: FastAPI
    client: openai.AsyncOpenAI
    other: openai.AsyncOpenAI  # another tenant's key
    raw: httpx.AsyncClient
    a: SeededTenant


def openai_client(app: FastAPI, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://flywheel/v1",
        api_key=key,
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=app)),
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gw(
    demo_base: Path, demo_adapters: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    data = tmp_path_factory.mktemp("fields")
    settings = make_settings(data, f"sqlite+aiosqlite:///{data / 'flywheel.db'}", demo_base)
    app = create_app(settings)
    async with running_app(app) as raw:
        db = app.state.flywheel.db
        a = await seed_tenant(db, settings, "acme", {"support": demo_adapters[0]})
        b = await seed_tenant(db, settings, "globex", {"private": demo_adapters[1]})
        yield Gateway(app, openai_client(app, a.key), openai_client(app, b.key), raw, a)


@pytest.fixture(scope="module")
def reference(demo_base: Path) -> Iterator[Reference]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(demo_base, dtype=torch.float32).eval()
    yield Reference(model, AutoTokenizer.from_pretrained(demo_base))


Adjust = Callable[[torch.Tensor, list[int], list[int]], torch.Tensor]


@dataclass
class Reference:
    """Greedy decoding with the plain model, recomputing the whole sequence each step, with a
    logits adjustment written out here from the field's definition."""

    model: Any
    tokenizer: Any

    def prompt_ids(self, prompt: str) -> list[int]:
        # What the engine feeds a text completion: the encoding with BOS in front.
        ids = list(self.tokenizer.encode(prompt))
        bos = self.tokenizer.bos_token_id
        if bos is not None and ids[:1] != [bos]:
            ids.insert(0, bos)
        return ids

    def greedy(self, prompt: str, steps: int, adjust: Adjust | None = None) -> list[int]:
        prompt_ids = self.prompt_ids(prompt)
        out: list[int] = []
        with torch.no_grad():
            for _ in range(steps):
                logits = self.model(torch.tensor([prompt_ids + out])).logits[0, -1].float()
                if adjust is not None:
                    logits = adjust(logits, prompt_ids, out)
                out.append(int(logits.argmax()))
        return out


def generated_ids(gw: Gateway, completion_id: str) -> list[int]:
    """The token ids the embedded engine generated for one completion."""
    engine = gw.app.state.flywheel.engine
    stats = [s for s in engine.recent if s.request_id == completion_id]
    assert len(stats) == 1, completion_id
    return list(stats[0].token_ids)


async def complete(gw: Gateway, max_tokens: int = 12, **fields: Any) -> tuple[str, list[int]]:
    resp = await gw.client.completions.create(
        model="demo-base",
        prompt=PROMPT,
        max_tokens=max_tokens,
        temperature=0,
        extra_body=fields.pop("extra_body", None),
        **fields,
    )
    return resp.choices[0].text, generated_ids(gw, resp.id)


# --- refused on the embedded engine, by name ------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": {"type": "bogus"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"n": 0}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 500}}, "logit_bias"),
        ({"logit_bias": {"99999999": 5}}, "logit_bias"),  # outside the vocabulary
        ({"extra_body": {"best_of": 3}}, "best_of"),
        ({"extra_body": {"top_k": -5}}, "top_k"),
        ({"extra_body": {"min_p": 1.5}}, "min_p"),
        ({"extra_body": {"repetition_penalty": 0}}, "repetition_penalty"),
        ({"extra_body": {"min_tokens": 50}}, "min_tokens"),  # above max_tokens
        ({"extra_body": {"continue_final_message": True}}, "continue_final_message"),
        (
            {"extra_body": {"continue_final_message": True, "add_generation_prompt": False}},
            "continue_final_message",
        ),
        ({"extra_body": {"add_generation_prompt": False}}, "add_generation_prompt"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                ]
            },
            "messages.0.content",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content"),
    ],
)
async def test_chat_fields_refused_on_embedded(
    gw: Gateway, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await gw.client.chat.completions.create(
            **{"model": "support", "messages": CHAT, "max_tokens": 8, **fields}
        )
    assert err.value.status_code == 400
    assert err.value.param == param, err.value.message
    assert err.value.type == "invalid_request_error"
    assert "None" not in err.value.message


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"echo": True}, "echo"),
        ({"suffix": "end"}, "suffix"),
        ({"best_of": 2}, "best_of"),
        ({"stream_options": {"include_usage": False}}, "stream_options"),
    ],
)
async def test_completion_fields_refused_on_embedded(
    gw: Gateway, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await gw.client.completions.create(model="demo-base", prompt=PROMPT, max_tokens=4, **fields)
    assert err.value.param == param, err.value.message


@pytest.mark.parametrize("prompt", [["a", "b"], [1, 2, 3], [[1, 2]]])
async def test_several_or_token_id_prompts_are_refused_by_name(gw: Gateway, prompt: Any) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await gw.client.completions.create(model="demo-base", prompt=prompt, max_tokens=4)
    assert err.value.param == "prompt"


async def test_defaults_sent_explicitly_change_nothing(gw: Gateway) -> None:
    """Fields at their no-op values (what SDKs and frameworks often send) are accepted."""
    plain = await complete(gw)
    same = await complete(
        gw,
        presence_penalty=0,
        frequency_penalty=0,
        logprobs=None,
        n=1,
        best_of=1,
        extra_body={
            "top_k": -1,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "min_tokens": 0,
            "response_format": {"type": "text"},
        },
    )
    assert same == plain


# --- honoured on the embedded engine, by their effect ----------------------------------------


async def test_logit_bias_plus_100_makes_greedy_pick_that_token(
    gw: Gateway, reference: Reference
) -> None:
    token = reference.tokenizer.encode(" fox")[-1]
    text, ids = await complete(gw, max_tokens=6, logit_bias={str(token): 100})
    assert ids == [token] * 6
    assert text == reference.tokenizer.decode([token] * 6)


async def test_logit_bias_minus_100_bans_the_greedy_token(
    gw: Gateway, reference: Reference
) -> None:
    _, plain = await complete(gw, max_tokens=8)
    banned = plain[0]
    _, ids = await complete(gw, max_tokens=8, logit_bias={str(banned): -100})
    assert banned not in ids

    def ban(logits: torch.Tensor, _: list[int], __: list[int]) -> torch.Tensor:
        logits[banned] -= 100
        return logits

    assert ids == reference.greedy(PROMPT, len(ids), ban)


async def test_repetition_penalty_matches_its_definition(gw: Gateway, reference: Reference) -> None:
    _, plain = await complete(gw, max_tokens=16)
    _, ids = await complete(gw, max_tokens=16, extra_body={"repetition_penalty": 1.8})
    assert ids != plain

    def penalize(logits: torch.Tensor, prompt: list[int], out: list[int]) -> torch.Tensor:
        # Over prompt and output: positive logits divided, negative ones multiplied.
        for token in set(prompt + out):
            value = logits[token]
            logits[token] = value / 1.8 if value > 0 else value * 1.8
        return logits

    assert ids == reference.greedy(PROMPT, len(ids), penalize)


@pytest.mark.parametrize(("presence", "frequency"), [(2.0, 0.0), (0.0, 2.0), (1.0, 1.0)])
async def test_presence_and_frequency_penalties_match_their_definition(
    gw: Gateway, reference: Reference, presence: float, frequency: float
) -> None:
    _, plain = await complete(gw, max_tokens=16)
    _, ids = await complete(
        gw, max_tokens=16, presence_penalty=presence, frequency_penalty=frequency
    )
    assert ids != plain

    def penalize(logits: torch.Tensor, _: list[int], out: list[int]) -> torch.Tensor:
        # OpenAI's formula over the generated tokens only.
        for token in set(out):
            logits[token] -= presence + frequency * out.count(token)
        return logits

    assert ids == reference.greedy(PROMPT, len(ids), penalize)


async def test_min_tokens_holds_off_eos(gw: Gateway, reference: Reference) -> None:
    eos = reference.tokenizer.eos_token_id
    bias = {str(eos): 100}
    early = await gw.client.completions.create(
        model="demo-base", prompt=PROMPT, max_tokens=12, temperature=0, logit_bias=bias
    )
    assert early.usage is not None and early.usage.completion_tokens == 1  # EOS at once
    held = await gw.client.completions.create(
        model="demo-base",
        prompt=PROMPT,
        max_tokens=12,
        temperature=0,
        logit_bias=bias,
        extra_body={"min_tokens": 5},
    )
    assert held.usage is not None and held.usage.completion_tokens == 6  # 5, then EOS
    assert held.choices[0].finish_reason == "stop"
    ids = generated_ids(gw, held.id)
    assert eos not in ids[:5] and ids[5] == eos


async def test_min_tokens_holds_off_stop_strings(gw: Gateway) -> None:
    text, ids = await complete(gw, max_tokens=8)
    stop = text[:2]
    assert stop.strip(), text  # the first characters of the plain answer
    resp = await gw.client.completions.create(
        model="demo-base", prompt=PROMPT, max_tokens=8, temperature=0, stop=[stop]
    )
    assert resp.choices[0].text == ""
    held = await gw.client.completions.create(
        model="demo-base",
        prompt=PROMPT,
        max_tokens=8,
        temperature=0,
        stop=[stop],
        extra_body={"min_tokens": 4},
    )
    assert held.usage is not None and held.usage.completion_tokens >= 4
    assert generated_ids(gw, held.id)[:4] == ids[:4]


@pytest.mark.parametrize("extra", [{"top_k": 1}, {"min_p": 1.0}])
async def test_top_k_1_and_min_p_1_sample_the_greedy_token(
    gw: Gateway, extra: dict[str, Any]
) -> None:
    _, greedy = await complete(gw, max_tokens=10)
    for seed in (1, 2, 3):
        resp = await gw.client.completions.create(
            model="demo-base",
            prompt=PROMPT,
            max_tokens=10,
            temperature=1.5,
            seed=seed,
            extra_body=extra,
        )
        assert generated_ids(gw, resp.id) == greedy


async def test_top_k_limits_sampling_to_the_k_best(gw: Gateway, reference: Reference) -> None:
    """With top_k=2 at a high temperature every sampled token is one of the two best."""
    resp = await gw.client.completions.create(
        model="demo-base",
        prompt=PROMPT,
        max_tokens=10,
        temperature=2.0,
        seed=7,
        extra_body={"top_k": 2},
    )
    ids = generated_ids(gw, resp.id)
    prompt_ids = reference.prompt_ids(PROMPT)
    with torch.no_grad():
        for i, token in enumerate(ids):
            logits = reference.model(torch.tensor([prompt_ids + ids[:i]])).logits[0, -1]
            assert token in logits.topk(2).indices.tolist()


async def test_mixed_batch_keeps_each_rows_settings(gw: Gateway) -> None:
    """Rows with and without processors decode in one batch, each as it does alone."""
    engine: EmbeddedEngine = gw.app.state.flywheel.engine

    def request(name: str, **sampling: Any) -> GenerationRequest:
        params = SamplingParams(max_tokens=16, temperature=0, **sampling)
        return GenerationRequest(name, None, params, prompt=PROMPT)

    async def run(req: GenerationRequest) -> list[int]:
        async for _ in engine.generate(req):
            pass
        (stats,) = [s for s in engine.recent if s.request_id == req.request_id]
        return list(stats.token_ids)

    first = (await run(request("first")))[0]
    settings: list[dict[str, Any]] = [
        {},
        {"frequency_penalty": 2.0, "repetition_penalty": 1.3},
        {"logit_bias": ((first, -100.0),), "top_k": 3},
    ]
    alone = [await run(request(f"alone-{i}", **kw)) for i, kw in enumerate(settings)]
    assert len({tuple(ids) for ids in alone}) == 3  # the settings change the answers
    # Started in one event-loop iteration, they share a wave (see embedded.py).
    together = await asyncio.gather(
        *(run(request(f"together-{i}", **kw)) for i, kw in enumerate(settings))
    )
    waves = {s.wave for s in engine.recent if s.request_id.startswith("together-")}
    assert len(waves) == 1
    assert together == alone


# --- the rest of the surface -----------------------------------------------------------------


async def test_chat_message_shape_refusal_and_fingerprint(gw: Gateway) -> None:
    resp = await gw.client.chat.completions.create(
        model="support", messages=CHAT, max_tokens=4, temperature=0
    )
    assert resp.choices[0].message.refusal is None
    raw = await gw.raw.post(
        "/v1/chat/completions",
        json={"model": "support", "messages": CHAT, "max_tokens": 4},
        headers={"Authorization": f"Bearer {gw.a.key}"},
    )
    assert raw.json()["choices"][0]["message"]["refusal"] is None
    fingerprint = resp.system_fingerprint
    assert isinstance(fingerprint, str) and fingerprint.startswith("fp_")
    again = await gw.client.chat.completions.create(model="support", messages=CHAT, max_tokens=4)
    base = await gw.client.chat.completions.create(model="demo-base", messages=CHAT, max_tokens=4)
    assert again.system_fingerprint == fingerprint
    assert isinstance(base.system_fingerprint, str) and base.system_fingerprint != fingerprint
    stream = await gw.client.chat.completions.create(
        model="support", messages=CHAT, max_tokens=4, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks and all(c.system_fingerprint == fingerprint for c in chunks)


async def test_over_long_prompt_is_context_length_exceeded(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await gw.client.chat.completions.create(model="support", messages=CHAT, max_tokens=2048)
    assert err.value.code == "context_length_exceeded"
    assert err.value.param == "messages"


async def test_retrieve_model_is_tenant_scoped(gw: Gateway) -> None:
    card = await gw.client.models.retrieve("support")
    assert (card.id, card.object, card.owned_by) == ("support", "model", "acme")
    base = await gw.client.models.retrieve("demo-base")
    assert base.id == "demo-base"
    listed = {m.id: m for m in (await gw.client.models.list()).data}
    assert listed["support"].model_dump() == card.model_dump()
    pinned = await gw.client.models.retrieve("support@1")
    assert pinned.id == "support@1"
    for model in ("private", "private@1", "nope", "globex/private"):
        with pytest.raises(openai.NotFoundError) as err:
            await gw.client.models.retrieve(model)
        assert err.value.code == "model_not_found", model
    assert (await gw.other.models.retrieve("private")).id == "private"


# --- vLLM: what the gateway passes upstream -------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def vllm_gw(
    demo_base: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[openai.AsyncOpenAI, FakeVLLM]]:
    """The gateway on the vLLM engine, its replica a FakeVLLM (vLLM needs a GPU here)."""
    data = tmp_path_factory.mktemp("fields-vllm")
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

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("gateway.app.build_engine", build)
        app = create_app(settings)
        async with running_app(app):
            tenant = await seed_tenant(app.state.flywheel.db, settings, "acme", {})
            yield openai_client(app, tenant.key), fake


async def test_vllm_gets_the_sampling_extras_and_response_format(
    vllm_gw: tuple[openai.AsyncOpenAI, FakeVLLM],
) -> None:
    client, fake = vllm_gw
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    resp = await client.chat.completions.create(
        model="demo-base",
        messages=CHAT,
        max_tokens=9,
        temperature=0.5,
        seed=4,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logit_bias={"17": -100, "3": 2.5},
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": True},
        },
        extra_body={
            "top_k": 20,
            "min_p": 0.05,
            "repetition_penalty": 1.2,
            "min_tokens": 2,
            "continue_final_message": True,
            "add_generation_prompt": False,
        },
    )
    assert resp.choices[0].message.content
    sent = fake.bodies[-1]
    assert {k: v for k, v in sent.items() if k not in ("messages", "model")} == {
        "max_tokens": 9,
        "temperature": 0.5,
        "top_p": 1.0,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "seed": 4,
        "top_k": 20,
        "min_p": 0.05,
        "repetition_penalty": 1.2,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logit_bias": {"3": 2.5, "17": -100.0},
        "min_tokens": 2,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": True},
        },
        "continue_final_message": True,
        "add_generation_prompt": False,
    }
    await client.completions.create(
        model="demo-base",
        prompt=PROMPT,
        max_tokens=4,
        extra_body={"response_format": {"type": "json_object"}, "top_k": 5},
    )
    sent = fake.bodies[-1]
    assert sent["response_format"] == {"type": "json_object"} and sent["top_k"] == 5
    assert sent["prompt"] == PROMPT


async def test_vllm_plain_request_sends_no_extras(
    vllm_gw: tuple[openai.AsyncOpenAI, FakeVLLM],
) -> None:
    client, fake = vllm_gw
    await client.chat.completions.create(
        model="demo-base", messages=CHAT, max_tokens=3, response_format={"type": "text"}
    )
    assert set(fake.bodies[-1]) == {
        "model",
        "messages",
        "max_tokens",
        "temperature",
        "top_p",
        "stream",
        "stream_options",
    }


async def test_vllm_gets_n_logprobs_tools_echo_and_prompt_lists(
    vllm_gw: tuple[openai.AsyncOpenAI, FakeVLLM],
) -> None:
    """What vLLM honours and the gateway shapes back is passed as the client sent it
    (tests/e2e/test_vllm_cpu.py checks the answers with the real vLLM)."""
    client, fake = vllm_gw
    tools: Any = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    history: Any = [
        *CHAT,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
    ]  # fmt: skip
    await client.chat.completions.create(
        model="demo-base",
        messages=history,
        max_tokens=3,
        n=2,
        logprobs=True,
        top_logprobs=4,
        tools=tools,
        tool_choice="required",
        parallel_tool_calls=False,
    )
    sent = fake.bodies[-1]
    assert (sent["n"], sent["logprobs"], sent["top_logprobs"]) == (2, True, 4)
    assert (sent["tools"], sent["tool_choice"], sent["parallel_tool_calls"]) == (
        tools,
        "required",
        False,
    )
    assert sent["messages"][1]["tool_calls"] == history[1]["tool_calls"]
    assert sent["messages"][2] == {"role": "tool", "content": "done", "tool_call_id": "c1"}

    for prompt in (["a", "b"], [1, 2, 3], [[1, 2], [3]]):
        await client.completions.create(
            model="demo-base", prompt=prompt, max_tokens=3, echo=True, logprobs=0
        )
        sent = fake.bodies[-1]
        assert (sent["prompt"], sent["echo"], sent["logprobs"]) == (prompt, True, 0)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"extra_body": {"best_of": 2}}, "best_of"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs
    ],
)
async def test_vllm_refuses_what_it_does_not_honour(
    vllm_gw: tuple[openai.AsyncOpenAI, FakeVLLM], fields: dict[str, Any], param: str
) -> None:
    client, fake = vllm_gw
    sent = len(fake.bodies)
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(
            model="demo-base", messages=CHAT, max_tokens=3, **fields
        )
    assert err.value.param == param
    assert "None" not in err.value.message
    assert len(fake.bodies) == sent  # refused before anything went upstream


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"suffix": "end"}, "suffix"),
        ({"extra_body": {"top_logprobs": 2}, "logprobs": 2}, "top_logprobs"),  # chat's field
        ({"prompt": []}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": ["a", 1]}, "prompt"),
    ],
)
async def test_vllm_refuses_these_completion_fields(
    vllm_gw: tuple[openai.AsyncOpenAI, FakeVLLM], fields: dict[str, Any], param: str
) -> None:
    client, _ = vllm_gw
    with pytest.raises(openai.BadRequestError) as err:
        await client.completions.create(
            **{"model": "demo-base", "prompt": PROMPT, "max_tokens": 3, **fields}
        )
    assert err.value.param == param, err.value.message


async def test_vllm_context_length_is_context_length_exceeded(
    vllm_gw: tuple[openai.AsyncOpenAI, FakeVLLM],
) -> None:
    client, _ = vllm_gw
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model="demo-base", messages=CHAT, max_tokens=4000)
    assert err.value.code == "context_length_exceeded"
    assert err.value.param == "messages"


async def test_upstream_400_names_the_field_vllm_blames() -> None:
    """vLLM raises many checks as plain ValueErrors (no ``param``): the field its message
    opens with is named."""
    request = GenerationRequest(
        "r", None, SamplingParams(max_tokens=4, min_tokens=9, min_p=0.5), prompt="x"
    )
    body = upstream_body(request)
    error = UpstreamError(400, "min_tokens must be less than or equal to max_tokens=4, got 9.")
    assert generation_error(None, error, body).param == "min_tokens"  # type: ignore[arg-type]
    named = UpstreamError(400, "bad", param="logit_bias")
    assert generation_error(None, named, body).param == "logit_bias"  # type: ignore[arg-type]
    vague = UpstreamError(400, "something else went wrong")
    assert generation_error(None, vague, body).param is None  # type: ignore[arg-type]


async def test_local_engine_refuses_what_the_embedded_engine_cannot_do(tmp_path: Path) -> None:
    """``flywheel engine local`` answers the vLLM API but runs the embedded engine: fields vLLM
    would honour and it cannot are a 400 with ``param``, which the gateway relays."""
    engine = EmbeddedEngine(tmp_path, base_model_name="demo-base")  # refused before it runs
    app = create_local_app(engine, base_name="demo-base", base_root=str(tmp_path))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://local"
    ) as local:
        for field, value in (
            ("response_format", {"type": "json_object"}),
            ("continue_final_message", True),
            ("presence_penalty", 7),
        ):
            body = {"model": "demo-base", "messages": CHAT, field: value}
            if field == "continue_final_message":
                body["add_generation_prompt"] = False
            r = await local.post("/v1/chat/completions", json=body)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["param"] == field


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"guided_json": {"type": "object"}}, "guided_json"),
        ({"guided_choice": ["yes", "no"]}, "guided_choice"),
        ({"stop_token_ids": [2]}, "stop_token_ids"),
        ({"ignore_eos": True}, "ignore_eos"),
        ({"skip_special_tokens": False}, "skip_special_tokens"),
        ({"use_beam_search": True}, "use_beam_search"),
    ],
)
def test_vllm_only_extensions_are_refused_by_name_not_dropped(
    extra: dict[str, Any], param: str
) -> None:
    from gateway.api.openai.protocol import ChatCompletionRequest
    from gateway.core.errors import InvalidRequest
    from gateway.engine.base import Capabilities
    from gateway.engine.capabilities import SAMPLING_EXTRAS

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    for caps in (Capabilities("embedded", SAMPLING_EXTRAS), Capabilities("vLLM", SAMPLING_EXTRAS)):
        with pytest.raises(InvalidRequest) as refused:
            ChatCompletionRequest.model_validate(body).check(caps)
        assert refused.value.param == param


def test_neutral_vllm_extensions_and_unknown_fields_pass() -> None:
    from gateway.api.openai.protocol import ChatCompletionRequest
    from gateway.engine.base import Capabilities
    from gateway.engine.capabilities import SAMPLING_EXTRAS

    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "ignore_eos": False,
        "skip_special_tokens": True,
        "stop_token_ids": [],
        "some_sdk_field": 1,  # unknown fields stay ignored (the SDKs send some)
    }
    ChatCompletionRequest.model_validate(body).check(Capabilities("embedded", SAMPLING_EXTRAS))
