"""VLLMEngine against vLLM-shaped HTTP answers (httpx.MockTransport), one quirk per test.

A fake stands in for vLLM here because vLLM needs a GPU.  ``FakeVLLM`` answers the way
vLLM's entrypoints/openai code does (checked against its source): plain-text 200 on
load/unload, errors as ``{"error": {..., "code": int}}`` (or the pre-0.10 flat envelope),
400 for a name already loaded, 404 for a bad path, FastAPI's ``{"detail": "Not Found"}``
when the runtime LoRA routes are off.  The same behaviour against real processes is in
test_vllm_local.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.core.config import Settings
from gateway.core.errors import AdapterLoadRefused, EngineError, EngineUnavailable, InvalidRequest
from gateway.engine.base import AdapterRef, GenerationChunk, GenerationRequest, SamplingParams
from gateway.engine.vllm import VLLMEngine
from gateway.engine.vllm_client import parse_error, sse_events

pytestmark = pytest.mark.asyncio(loop_scope="session")

WORDS = ["Hello", " from", " the", " fake", " vLLM"]


@dataclass
class FakeVLLM:
    """One vLLM replica's HTTP behaviour (a stand-in: vLLM needs a GPU)."""

    host: str
    base: str = "demo-base"
    runtime_lora: bool = True
    legacy_errors: bool = False
    loaded: dict[str, str] = field(default_factory=dict)
    refuse: dict[str, tuple[int, str]] = field(default_factory=dict)  # path -> (status, msg)
    missing_paths: set[str] = field(default_factory=set)
    down: bool = False
    die_after_events: int | None = None  # drop the connection after this many SSE events
    stall_after_events: int | None = None  # then send nothing more, the connection kept open
    log: list[tuple[str, ...]] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def error(
        self, status: int, message: str, kind: str, param: str | None = None
    ) -> httpx.Response:
        err = {"message": message, "type": kind, "param": param, "code": status}
        body = {"object": "error", **err} if self.legacy_errors else {"error": err}
        return httpx.Response(status, json=body)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        path = request.url.path
        body = json.loads(request.content) if request.content else {}
        if path == "/v1/models":
            cards = [
                {"id": self.base, "object": "model", "root": f"/models/{self.base}", "parent": None}
            ]
            cards += [
                {"id": n, "object": "model", "root": p, "parent": self.base}
                for n, p in self.loaded.items()
            ]
            return httpx.Response(200, json={"object": "list", "data": cards})
        if path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            if not self.runtime_lora:
                return httpx.Response(404, json={"detail": "Not Found"})
            name = body.get("lora_name", "")
            if path.endswith("unload_lora_adapter"):
                if name not in self.loaded:
                    return self.error(
                        404, f"The lora adapter '{name}' cannot be found.", "NotFoundError"
                    )
                del self.loaded[name]
                self.log.append(("unload", self.host, name))
                return httpx.Response(
                    200, text=f"Success: LoRA adapter '{name}' removed successfully."
                )
            lora_path = body["lora_path"]
            self.log.append(("load", self.host, name))
            if name in self.loaded:
                return self.error(
                    400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput"
                )
            if lora_path in self.missing_paths:
                return self.error(
                    404,
                    f"Loading lora {name} failed: No adapter found for {lora_path}",
                    "NotFoundError",
                )
            if lora_path in self.refuse:
                status, message = self.refuse[lora_path]
                return self.error(status, message, "BadRequestError")
            self.loaded[name] = lora_path
            return httpx.Response(200, text=f"Success: LoRA adapter '{name}' added successfully.")
        if path in ("/v1/chat/completions", "/v1/completions"):
            return self.complete(request, body, chat=path.endswith("chat/completions"))
        return httpx.Response(404, json={"detail": "Not Found"})

    def complete(
        self, request: httpx.Request, body: dict[str, Any], *, chat: bool
    ) -> httpx.Response:
        self.bodies.append(body)
        model = body["model"]
        if model != self.base and model not in self.loaded:
            return self.error(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        if body.get("max_tokens", 16) > 1000:
            return self.error(
                400, "This model's maximum context length is 1024 tokens.", "BadRequestError"
            )
        self.log.append(("generate", self.host, model))

        def event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
            data: dict[str, Any] = {
                "id": "upstream-id",
                "object": "x",
                "model": model,
                "choices": choices,
            }
            if usage is not None:
                data["usage"] = usage
            return f"data: {json.dumps(data)}\n\n".encode()

        def choice(text: str, finish: str | None) -> dict[str, Any]:
            if chat:
                return {"index": 0, "delta": {"content": text}, "finish_reason": finish}
            return {"index": 0, "text": text, "finish_reason": finish}

        events = (
            [
                event(
                    [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                        }
                    ]
                )
            ]
            if chat
            else []
        )
        events += [event([choice(w, None)]) for w in WORDS[:-1]]
        events.append(event([choice(WORDS[-1], "stop")]))
        events.append(
            event([], {"prompt_tokens": 7, "completion_tokens": len(WORDS), "total_tokens": 12})
        )
        events.append(b"data: [DONE]\n\n")
        cut, stall = self.die_after_events, self.stall_after_events

        async def stream() -> AsyncIterator[bytes]:
            for i, chunk in enumerate(events):
                if cut is not None and i >= cut:
                    raise httpx.RemoteProtocolError("peer closed connection", request=request)
                if stall is not None and i >= stall:
                    await asyncio.Event().wait()  # frozen: never answers, never closes
                yield chunk

        return httpx.Response(200, content=stream(), headers={"content-type": "text/event-stream"})


def transport(*fakes: FakeVLLM) -> httpx.MockTransport:
    by_host = {f.host: f for f in fakes}
    return httpx.MockTransport(lambda request: by_host[request.url.host].handle(request))


def settings(tmp_path: Path, hosts: list[str], **over: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "engine": "vllm",
        "vllm_urls": ",".join(f"http://{h}:8000" for h in hosts),
        "vllm_max_adapters_per_replica": 2,
        "vllm_health_interval_s": 3600,  # the tests run health checks themselves
        "base_model_name": "",
    }
    values.update(over)
    return Settings(**values)


@dataclass
class Spy:
    """A Verifier that records what it was asked, and the fakes' load log at that moment."""

    fakes: tuple[FakeVLLM, ...]
    calls: list[str] = field(default_factory=list)

    def __call__(self, ref: AdapterRef) -> None:
        self.calls.append(ref.engine_name)
        for fake in self.fakes:
            fake.log.append(("verify", "-", ref.engine_name))


async def make_engine(tmp_path: Path, *fakes: FakeVLLM, **kw: Any) -> tuple[VLLMEngine, Spy]:
    over = {k: kw.pop(k) for k in list(kw) if k.startswith("vllm_")}
    spy = Spy(fakes)
    engine = VLLMEngine(
        settings(tmp_path, [f.host for f in fakes], **over),
        verifier=spy,
        transport=transport(*fakes),
        **kw,
    )
    await engine.start()
    return engine, spy


def ref(i: int, *, dora: bool = False) -> AdapterRef:
    return AdapterRef(f"fw-av{i}", Path(f"/artifacts/a{i}"), f"av{i}", use_dora=dora)


def chat(adapter: AdapterRef | None, max_tokens: int = 16) -> GenerationRequest:
    return GenerationRequest(
        "req",
        adapter,
        SamplingParams(max_tokens=max_tokens, temperature=0),
        messages=[{"role": "user", "content": "hi"}],
    )


async def collect(engine: VLLMEngine, request: GenerationRequest) -> list[GenerationChunk]:
    return [c async for c in engine.generate(request)]


# --- wire format ---------------------------------------------------------------------------


async def test_error_envelopes_both_versions() -> None:
    new = httpx.Response(
        400,
        json={"error": {"message": "bad", "type": "BadRequestError", "param": "x", "code": 400}},
    )
    old = httpx.Response(
        404,
        json={
            "object": "error",
            "message": "gone",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        },
    )
    route = httpx.Response(404, json={"detail": "Not Found"})
    text = httpx.Response(500, text="Internal Server Error")
    assert (parse_error(new).message, parse_error(new).param, parse_error(new).route_missing) == (
        "bad",
        "x",
        False,
    )
    assert (parse_error(old).message, parse_error(old).status, parse_error(old).route_missing) == (
        "gone",
        404,
        False,
    )
    assert parse_error(route).route_missing
    assert parse_error(text).message == "Internal Server Error"


async def test_events_are_read_as_the_standard_library_reads_them() -> None:
    # orjson refuses an escaped lone surrogate, which json reads (and a replica may send).
    events = [b'{"choices": [{"index": 0, "text": "\\ud800 \\u00e9"}]}', b'{"usage": null}']

    async def body() -> AsyncIterator[bytes]:
        for event in events:
            yield b"data: " + event + b"\n\n"
        yield b"data: [DONE]\n\n"

    assert [e async for e in sse_events(body(), "u")] == [json.loads(e) for e in events]


async def test_stream_relay_carries_usage_on_the_last_chunk(tmp_path: Path) -> None:
    a = FakeVLLM("a")
    engine, _ = await make_engine(tmp_path, a)
    try:
        chunks = await collect(engine, chat(ref(1)))
        assert "".join(c.text for c in chunks) == "".join(WORDS)
        assert all(c.finish_reason is None for c in chunks[:-1])
        last = chunks[-1]
        assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == (
            "stop",
            7,
            len(WORDS),
        )
        sent = a.bodies[-1]
        assert sent["model"] == "fw-av1" and sent["stream"] is True
        assert sent["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
        text = GenerationRequest(
            "r", None, SamplingParams(max_tokens=4, stop=("x",), seed=3), prompt="Once"
        )
        chunks = await collect(engine, text)
        assert "".join(c.text for c in chunks) == "".join(WORDS)
        assert a.bodies[-1]["model"] == "demo-base" and a.bodies[-1]["prompt"] == "Once"
        assert a.bodies[-1]["stop"] == ["x"] and a.bodies[-1]["seed"] == 3
        assert engine.base_model_name == "demo-base"  # discovered from /v1/models
    finally:
        await engine.stop()


async def test_upstream_400_is_invalid_request(tmp_path: Path) -> None:
    engine, _ = await make_engine(tmp_path, FakeVLLM("a"))
    try:
        with pytest.raises(InvalidRequest, match="maximum context length"):
            await collect(engine, chat(None, max_tokens=5000))
    finally:
        await engine.stop()


# --- adapter loading quirks ----------------------------------------------------------------


async def test_load_success_is_plain_text_and_verified_first(tmp_path: Path) -> None:
    a = FakeVLLM("a")
    engine, _ = await make_engine(tmp_path, a)
    try:
        await engine.load_adapter(ref(1))
        await engine.load_adapter(ref(1))  # idempotent
        assert a.log == [("verify", "-", "fw-av1"), ("load", "a", "fw-av1")]
        assert engine.loads == 1 and engine.loaded_adapters() == ["fw-av1"]
    finally:
        await engine.stop()


async def test_already_loaded_400_is_loaded_once_models_confirms(tmp_path: Path) -> None:
    a = FakeVLLM("a")
    engine, _ = await make_engine(tmp_path, a)
    try:
        a.loaded["fw-av1"] = "/artifacts/a1"  # loaded behind this gateway's back (another gateway)
        await engine.load_adapter(ref(1))
        assert ("load", "a", "fw-av1") in a.log and engine.loaded_adapters() == ["fw-av1"]
        # A 400 that /v1/models does not confirm is a refusal with vLLM's message.
        a.refuse["/artifacts/a2"] = (400, "LoRA rank 128 is greater than max_lora_rank 64.")
        with pytest.raises(
            AdapterLoadRefused, match="LoRA rank 128 is greater than max_lora_rank 64"
        ):
            await engine.load_adapter(ref(2))
        assert "fw-av2" not in engine.loaded_adapters()
    finally:
        await engine.stop()


@pytest.mark.parametrize("status", [400, 500])  # 500: the newest vLLM for add_lora failures
async def test_rank_refusal(tmp_path: Path, status: int) -> None:
    a = FakeVLLM("a", legacy_errors=status == 400)
    a.refuse["/artifacts/a1"] = (status, "LoRA rank 128 is greater than max_lora_rank 64.")
    engine, _ = await make_engine(tmp_path, a)
    try:
        with pytest.raises(AdapterLoadRefused, match="max_lora_rank 64"):
            await collect(engine, chat(ref(1)))
        assert a.loaded == {}
    finally:
        await engine.stop()


async def test_refused_loads_are_counted_and_say_why(tmp_path: Path) -> None:
    """vLLM 0.32's own answers (seen against its CPU build): a rank above --max-lora-rank is a
    500 wrapped in "Worker failed with error '...'", a missing path a 404; both are
    adapter_load_refused with the reason alone, counted as refused by the engine."""
    from prometheus_client import REGISTRY

    def refused() -> float:
        value = REGISTRY.get_sample_value("flywheel_refused_loads_total", {"reason": "engine"})
        return value or 0.0

    a = FakeVLLM("a", missing_paths={"/artifacts/a2"})
    a.refuse["/artifacts/a1"] = (
        500,
        "Call to add_lora method failed: Worker failed with error 'LoRA rank 32 is greater "
        "than max_lora_rank 16.', please check the stack trace above for the root cause",
    )
    engine, _ = await make_engine(tmp_path, a)
    before = refused()
    try:
        with pytest.raises(AdapterLoadRefused) as big:
            await collect(engine, chat(ref(1)))
        assert big.value.message.endswith(
            "refused adapter version av1: LoRA rank 32 is greater than max_lora_rank 16."
        )
        with pytest.raises(AdapterLoadRefused, match="found no adapter at /artifacts/a2"):
            await collect(engine, chat(ref(2)))
        with pytest.raises(AdapterLoadRefused, match="DoRA"):
            await collect(engine, chat(ref(3, dora=True)))
        assert refused() == before + 3
        assert a.loaded == {} and engine.replicas[0].usable  # the replica stays in rotation
        assert (await collect(engine, chat(ref(4))))[-1].finish_reason == "stop"
    finally:
        await engine.stop()


async def test_bad_path_404(tmp_path: Path) -> None:
    a = FakeVLLM("a", missing_paths={"/artifacts/a1"})
    engine, _ = await make_engine(tmp_path, a)
    try:
        with pytest.raises(AdapterLoadRefused, match="found no adapter at /artifacts/a1"):
            await engine.load_adapter(ref(1))
    finally:
        await engine.stop()


async def test_dora_refused_before_any_call(tmp_path: Path) -> None:
    a = FakeVLLM("a")
    engine, spy = await make_engine(tmp_path, a)
    try:
        with pytest.raises(AdapterLoadRefused, match="DoRA"):
            await collect(engine, chat(ref(1, dora=True)))
        assert spy.calls == [] and not any(e[0] == "load" for e in a.log)
    finally:
        await engine.stop()


async def test_missing_routes_detected_at_startup(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "flywheel.engine.vllm")
    engine = VLLMEngine(
        settings(tmp_path, ["a"]), transport=transport(FakeVLLM("a", runtime_lora=False))
    )
    try:
        with pytest.raises(EngineError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"):
            await engine.start()
        lines = [r for r in caplog.records if "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in r.getMessage()]
        assert len(lines) == 1 and lines[0].levelno == logging.ERROR
    finally:
        await engine.stop()


async def test_replica_without_routes_is_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "flywheel.engine.vllm")
    a, b = FakeVLLM("a", runtime_lora=False), FakeVLLM("b")
    engine, _ = await make_engine(tmp_path, a, b)
    try:
        await collect(engine, chat(ref(1)))
        await engine.replicas[0].check()  # later checks do not repeat the log line
        assert [r.usable for r in engine.replicas] == [False, True]
        assert (
            sum("VLLM_ALLOW_RUNTIME_LORA_UPDATING" in r.getMessage() for r in caplog.records) == 1
        )
    finally:
        await engine.stop()


async def test_concurrent_first_requests_load_once(tmp_path: Path) -> None:
    a, b = FakeVLLM("a"), FakeVLLM("b")
    engine, spy = await make_engine(tmp_path, a, b)
    try:
        results = await asyncio.gather(*(collect(engine, chat(ref(1))) for _ in range(20)))
        assert all(r[-1].finish_reason == "stop" for r in results)
        loads = [e for e in a.log + b.log if e[0] == "load"]
        assert len(loads) == 1 and spy.calls == ["fw-av1"]
    finally:
        await engine.stop()


async def test_verifier_runs_before_every_load_on_every_replica(tmp_path: Path) -> None:
    a, b = FakeVLLM("a"), FakeVLLM("b")
    engine, spy = await make_engine(tmp_path, a, b)
    try:
        await collect(engine, chat(ref(1)))
        holder, other = (a, b) if "fw-av1" in a.loaded else (b, a)
        holder.down = True  # its next request fails over and loads on the other replica
        await collect(engine, chat(ref(1)))
        assert spy.calls == ["fw-av1", "fw-av1"]
        for fake in (a, b):
            events = [e for e in fake.log if e[0] in ("verify", "load")]
            for i, event in enumerate(events):
                if event[0] == "load":
                    assert events[i - 1] == ("verify", "-", "fw-av1")
        assert "fw-av1" in other.loaded
    finally:
        await engine.stop()


# --- residency -----------------------------------------------------------------------------


async def test_eviction_unloads_the_least_recently_used(tmp_path: Path) -> None:
    a = FakeVLLM("a")
    engine, _ = await make_engine(tmp_path, a)
    try:
        for i in (1, 2, 1, 3):  # a1 used again, so a2 is the least recently used
            await collect(engine, chat(ref(i)))
        assert sorted(a.loaded) == ["fw-av1", "fw-av3"]
        assert ("unload", "a", "fw-av2") in a.log and engine.evictions == 1
    finally:
        await engine.stop()


async def test_busy_adapter_is_never_evicted(tmp_path: Path) -> None:
    a = FakeVLLM("a")
    engine, _ = await make_engine(tmp_path, a, vllm_max_adapters_per_replica=1)
    try:
        busy = engine.generate(chat(ref(1)))
        await anext(busy)  # a1 is in flight
        waiting = asyncio.create_task(collect(engine, chat(ref(2))))
        await asyncio.sleep(0.05)
        assert not waiting.done() and list(a.loaded) == ["fw-av1"]
        await busy.aclose()  # a1 goes idle: a2 may take its slot
        assert (await asyncio.wait_for(waiting, 5))[-1].finish_reason == "stop"
        assert list(a.loaded) == ["fw-av2"]
    finally:
        await engine.stop()


async def test_request_racing_an_unload_neither_hangs_nor_loses_it(tmp_path: Path) -> None:
    a = FakeVLLM("a")
    engine, _ = await make_engine(tmp_path, a)
    try:
        busy = engine.generate(chat(ref(1)))
        await anext(busy)  # av1 in flight
        unload = asyncio.create_task(engine.unload_adapter("fw-av1"))
        while "fw-av1" in engine.replicas[0].residency:
            await asyncio.sleep(0)  # until the unload has taken it out of placement
        # A request for the same version now has to place (and load) it again.  An unload
        # that waited for idleness while holding the name's lock hung both forever.
        again = asyncio.create_task(collect(engine, chat(ref(1))))
        await busy.aclose()
        async with asyncio.timeout(10):
            assert (await again)[-1].finish_reason == "stop"
            await unload
        assert "fw-av1" in a.loaded  # wanted again: the unload left it loaded
    finally:
        await engine.stop()


async def test_health_check_during_a_drain_does_not_keep_the_old_version(
    tmp_path: Path,
) -> None:
    """The replica still lists a draining version until its unload; a health check meanwhile
    adopted it back, and the drain then kept it ("wanted again"): seen against real vLLM."""
    a = FakeVLLM("a")
    engine, _ = await make_engine(tmp_path, a)
    try:
        busy = engine.generate(chat(ref(1)))
        await anext(busy)  # av1 in flight: its drain waits
        unload = asyncio.create_task(engine.unload_adapter("fw-av1"))
        while "fw-av1" in engine.replicas[0].residency:
            await asyncio.sleep(0)
        await engine.replicas[0].check()  # /v1/models still lists fw-av1
        assert "fw-av1" not in engine.replicas[0].residency
        await busy.aclose()
        await asyncio.wait_for(unload, 5)
        assert "fw-av1" not in a.loaded and ("unload", "a", "fw-av1") in a.log
    finally:
        await engine.stop()


async def test_all_busy_waits_then_503(tmp_path: Path) -> None:
    a = FakeVLLM("a")
    engine, _ = await make_engine(
        tmp_path, a, vllm_max_adapters_per_replica=1, placement_wait_s=0.2
    )
    try:
        busy = engine.generate(chat(ref(1)))
        await anext(busy)
        started = time.monotonic()
        with pytest.raises(EngineUnavailable, match="adapter budget"):
            await collect(engine, chat(ref(2)))
        assert time.monotonic() - started < 2
        await busy.aclose()
    finally:
        await engine.stop()


async def test_restart_recovery_adopts_what_replicas_hold(tmp_path: Path) -> None:
    a = FakeVLLM("a", loaded={"fw-av1": "/artifacts/a1", "fw-av2": "/elsewhere/a2"})
    engine, spy = await make_engine(tmp_path, a)
    try:
        assert engine.loaded_adapters() == ["fw-av1", "fw-av2"]
        await collect(engine, chat(ref(1)))
        assert not any(e[0] == "load" for e in a.log)  # adopted, not reloaded...
        assert spy.calls == ["fw-av1"]  # ...but verified before first use
        # Same immutable name from another path: not our artifact, so it is replaced.
        await collect(engine, chat(ref(2)))
        assert ("unload", "a", "fw-av2") in a.log and a.loaded["fw-av2"] == "/artifacts/a2"
    finally:
        await engine.stop()


async def test_adapter_lost_by_a_restarted_replica_is_reloaded(tmp_path: Path) -> None:
    a = FakeVLLM("a")
    engine, _ = await make_engine(tmp_path, a)
    try:
        await collect(engine, chat(ref(1)))
        a.loaded.clear()  # vLLM restarted between two health checks
        chunks = await collect(engine, chat(ref(1)))
        assert chunks[-1].finish_reason == "stop"
        assert [e for e in a.log if e[0] == "load"] == [("load", "a", "fw-av1")] * 2
    finally:
        await engine.stop()


# --- failures ------------------------------------------------------------------------------


async def test_connection_failure_retries_on_another_replica(tmp_path: Path) -> None:
    a, b = FakeVLLM("a"), FakeVLLM("b")
    engine, _ = await make_engine(tmp_path, a, b)
    try:
        a.down = True
        for _ in range(3):
            assert (await collect(engine, chat(None)))[-1].finish_reason == "stop"
        assert not engine.replicas[0].usable and engine.replicas[1].usable
        a.down = False
        assert await engine.replicas[0].check() is True  # the health check puts it back
        assert engine.replicas[0].usable
    finally:
        await engine.stop()


async def test_cut_before_first_token_retries_after_first_token_fails(tmp_path: Path) -> None:
    a, b = FakeVLLM("a", die_after_events=1), FakeVLLM("b")  # a: only the role event, then gone
    engine, _ = await make_engine(tmp_path, a, b)
    try:
        chunks = await collect(engine, chat(None))
        assert "".join(c.text for c in chunks) == "".join(WORDS)
        assert [e[1] for e in a.log + b.log if e[0] == "generate"] == ["a", "b"]
        b.die_after_events = 3  # tokens reached the client: no silent retry
        with pytest.raises(EngineError, match="failed while streaming"):
            await collect(engine, chat(None))
    finally:
        await engine.stop()


async def _down_soon(engine: VLLMEngine, replica: int, after_s: float = 0.05) -> None:
    await asyncio.sleep(after_s)
    engine.replicas[replica].mark_down("health check failed")


async def test_replica_leaving_rotation_mid_stream_ends_it_at_once(tmp_path: Path) -> None:
    """A frozen replica: tokens sent, then silence; the health check takes it out of rotation,
    and the stream ends with an error then, not at the read timeout (10 minutes)."""
    a = FakeVLLM("a", stall_after_events=3)  # the role event and two words, then frozen
    engine, _ = await make_engine(tmp_path, a)
    try:
        stream = engine.generate(chat(None))
        assert (await anext(stream)).text == WORDS[0]
        assert (await anext(stream)).text == WORDS[1]
        down = asyncio.create_task(_down_soon(engine, 0))
        started = time.monotonic()
        with pytest.raises(EngineError, match="failed while streaming"):
            await anext(stream)
        assert time.monotonic() - started < 1
        await down
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # the watcher's cancel was taken back
    finally:
        await engine.stop()


async def test_replica_leaving_rotation_while_a_chunk_is_held_ends_at_the_next_read(
    tmp_path: Path,
) -> None:
    a = FakeVLLM("a")
    engine, _ = await make_engine(tmp_path, a)
    try:
        stream = engine.generate(chat(None))
        assert (await anext(stream)).text == WORDS[0]
        engine.replicas[0].mark_down("health check failed")  # while the consumer holds a chunk
        for _ in range(3):
            await asyncio.sleep(0)  # the waiter hears it
        with pytest.raises(EngineError, match="failed while streaming"):
            await anext(stream)
    finally:
        await engine.stop()


async def test_replica_leaving_rotation_before_the_first_token_retries(tmp_path: Path) -> None:
    a, b = FakeVLLM("a", stall_after_events=1), FakeVLLM("b")  # a: the role event, then frozen
    engine, _ = await make_engine(tmp_path, a, b)
    try:
        down = asyncio.create_task(_down_soon(engine, 0))
        started = time.monotonic()
        chunks = await collect(engine, chat(None))
        assert time.monotonic() - started < 1
        assert "".join(c.text for c in chunks) == "".join(WORDS)
        assert [e[1] for e in a.log + b.log if e[0] == "generate"] == ["a", "b"]
        await down
    finally:
        await engine.stop()


async def test_a_cancel_from_outside_stays_a_cancel(tmp_path: Path) -> None:
    """The client hanging up while the stream waits on its replica: cancelled, replica kept."""
    a = FakeVLLM("a", stall_after_events=2)
    engine, _ = await make_engine(tmp_path, a)
    try:
        reading = asyncio.create_task(collect(engine, chat(None)))
        await asyncio.sleep(0.05)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert engine.replicas[0].usable and engine.replicas[0].in_flight == 0
    finally:
        await engine.stop()


async def test_every_replica_down_is_503_not_a_hang(tmp_path: Path) -> None:
    a, b = FakeVLLM("a", down=True), FakeVLLM("b", down=True)
    engine, _ = await make_engine(tmp_path, a, b)  # starting with nothing reachable is allowed
    try:
        assert not engine.ready()
        started = time.monotonic()
        with pytest.raises(EngineUnavailable) as info:
            await collect(engine, chat(ref(1)))
        assert time.monotonic() - started < 1 and info.value.retry_after >= 1
        a.down = False
        await engine.replicas[0].check()
        assert engine.ready() and (await collect(engine, chat(ref(1))))[-1].finish_reason == "stop"
    finally:
        await engine.stop()
