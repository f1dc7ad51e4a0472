"""EventStreamResponse: writes coalesced, waits and cancels where they belong.

First on its own, with a recording ``send`` and a scripted ``receive`` for the ASGI server;
then through the gateway over real sockets, in front of a vLLM-shaped upstream (a stand-in:
vLLM needs a GPU) whose answer arrives in one burst or paced.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.types import Message

from gateway.api.streaming import EventStreamResponse
from tests.gateway.api.socket_gateway import gateway_before, reply

pytestmark = pytest.mark.asyncio(loop_scope="session")

SCOPE: dict[str, Any] = {"type": "http", "method": "POST", "path": "/"}


@dataclass
class Server:
    """Records each body write; ``slow_first`` makes the first one wait for the client to drain
    (as uvicorn does under back-pressure, before it writes)."""

    slow_first: float = 0.0
    hang_up: asyncio.Event = field(default_factory=asyncio.Event)
    writes: list[bytes] = field(default_factory=list)
    ended: bool = False

    async def send(self, message: Message) -> None:
        if message["type"] != "http.response.body":
            return
        if self.slow_first and not self.writes:
            delay, self.slow_first = self.slow_first, 0.0
            await asyncio.sleep(delay)
        self.writes.append(message["body"])
        self.ended = not message["more_body"]

    async def receive(self) -> Message:
        await self.hang_up.wait()
        return {"type": "http.disconnect"}


async def test_events_ready_together_go_out_in_one_write_each_event_whole() -> None:
    async def events() -> AsyncGenerator[str, None]:
        for i in range(5):  # ready at once: one upstream read holding five tokens
            yield f"data: {i}\n\n"
        await asyncio.sleep(0.01)  # the next read must wait
        yield "data: 5\n\n"
        yield "data: [DONE]\n\n"

    server = Server()
    await EventStreamResponse(events())(SCOPE, server.receive, server.send)
    assert server.writes == [
        b"".join(b"data: %d\n\n" % i for i in range(5)),  # written before the wait, together
        b"data: 5\n\ndata: [DONE]\n\n",  # the last ones with the end of the body
    ]
    assert server.ended


async def test_a_long_burst_is_written_in_parts_between_turns_of_the_loop() -> None:
    """A read that holds a whole answer does not keep the loop from other streams."""
    turns: list[int] = []
    server = Server()

    async def other_stream() -> None:
        while True:
            turns.append(len(server.writes))
            await asyncio.sleep(0)

    async def events() -> AsyncGenerator[str, None]:
        for i in range(200):
            yield f"data: {i}\n\n"

    other = asyncio.create_task(other_stream())
    await asyncio.sleep(0)
    await EventStreamResponse(events())(SCOPE, server.receive, server.send)
    other.cancel()
    assert [w.count(b"data: ") for w in server.writes] == [64, 64, 64, 8]
    assert {1, 2, 3} <= set(turns)  # it ran between the writes


async def test_the_first_event_is_not_held_back() -> None:
    written_before_wait: list[int] = []
    server = Server()

    async def events() -> AsyncGenerator[str, None]:
        yield "data: first\n\n"
        await asyncio.sleep(0.01)
        written_before_wait.append(len(server.writes))
        yield "data: [DONE]\n\n"

    await EventStreamResponse(events())(SCOPE, server.receive, server.send)
    assert written_before_wait == [1]


async def test_a_cancel_landing_in_a_write_goes_to_the_waiting_engine() -> None:
    """The vLLM engine cancels the task it saw reading when a replica leaves rotation; that
    read may be parked while held events are written to a slow client.  The cancel reaches the
    read, which turns it into its error event, and the answer carries on."""

    async def events() -> AsyncGenerator[str, None]:
        yield "data: a\n\n"
        reader = asyncio.current_task()
        assert reader is not None
        asyncio.get_running_loop().call_later(0.01, reader.cancel)  # while "a" is written
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            assert reader.uncancel() == 0  # it was this read's own cancel
            yield "data: replica down\n\n"

    server = Server(slow_first=0.05)
    task = asyncio.current_task()
    assert task is not None
    await EventStreamResponse(events())(SCOPE, server.receive, server.send)
    assert b"".join(server.writes) == b"data: a\n\ndata: replica down\n\n" and server.ended
    assert task.cancelling() == 0


async def test_a_cancel_from_outside_during_a_parked_write_stays_a_cancel() -> None:
    closed: list[str] = []

    async def events() -> AsyncGenerator[str, None]:
        try:
            yield "data: a\n\n"
            await asyncio.sleep(10)
            yield "data: never\n\n"
        finally:
            closed.append("closed")

    server = Server(slow_first=1.0)
    running = asyncio.create_task(EventStreamResponse(events())(SCOPE, server.receive, server.send))
    await asyncio.sleep(0.02)
    running.cancel()  # shutdown
    with pytest.raises(asyncio.CancelledError):
        await running
    assert closed == ["closed"]


async def test_hanging_up_during_a_parked_write_closes_the_generator() -> None:
    closed: list[str] = []

    async def events() -> AsyncGenerator[str, None]:
        try:
            yield "data: a\n\n"
            await asyncio.sleep(10)
            yield "data: never\n\n"
        except asyncio.CancelledError:
            closed.append("read cancelled")
            raise
        finally:
            closed.append("closed")

    server = Server(slow_first=1.0)
    running = asyncio.create_task(EventStreamResponse(events())(SCOPE, server.receive, server.send))
    await asyncio.sleep(0.02)
    server.hang_up.set()
    await asyncio.wait_for(running, 1)  # ends quietly, well before the slow write would
    assert closed == ["read cancelled", "closed"]


# --- through the gateway, over real sockets ---------------------------------------------------

TOKENS = 12


@dataclass
class BurstUpstream:
    """A vLLM-shaped upstream whose answer comes in one write (``burst``), so the gateway's
    reads hold many events, or in one write per event with a pause between them."""

    burst: bool = True

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        path = scope["path"]
        if path == "/v1/models":
            cards = [{"id": "demo-base", "object": "model", "root": "demo-base", "parent": None}]
            return await reply(send, 200, {"object": "list", "data": cards})
        if path == "/v1/unload_lora_adapter":
            err = {"message": "cannot be found", "type": "NotFoundError", "code": 404}
            return await reply(send, 404, {"error": err})
        if path != "/v1/chat/completions":
            return await reply(send, 200, {})
        events = [_event({"role": "assistant", "content": ""}, None, 0)]
        events += [_event({"content": f" t{k}"}, None, k) for k in range(1, TOKENS + 1)]
        events += [_event({"content": ""}, "length", TOKENS), b"data: [DONE]\n\n"]
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for body in [b"".join(events)] if self.burst else events:
            await send({"type": "http.response.body", "body": body, "more_body": True})
            if not self.burst:
                await asyncio.sleep(0.005)
        await send({"type": "http.response.body", "body": b""})


def _event(delta: dict[str, str], finish: str | None, k: int) -> bytes:
    usage = {"prompt_tokens": 3, "completion_tokens": k, "total_tokens": 3 + k}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + json.dumps({"choices": [choice], "usage": usage}).encode() + b"\n\n"


async def test_a_burst_from_the_engine_is_still_one_event_per_token_with_ids_and_usage(
    tmp_path: Path, demo_base: Path
) -> None:
    """The same answer, burst (coalesced writes) and paced (one write per token), gives the
    same events: one per token, each with the completion's id, usage as before."""
    upstream = BurstUpstream()
    answers = []
    async with gateway_before(upstream, tmp_path, demo_base) as gw:
        for burst in (True, False):
            upstream.burst = burst
            response = await gw.client.post(
                "/v1/chat/completions",
                headers={"authorization": f"Bearer {gw.key}"},
                json={
                    "model": "demo-base",
                    "messages": [{"role": "user", "content": "hi"}],
                    "stream": True,
                    "stream_options": {"include_usage": True, "continuous_usage_stats": True},
                },
            )
            assert response.status_code == 200
            completion_id = response.headers["x-flywheel-completion-id"]
            assert response.text.endswith("data: [DONE]\n\n")
            events = [
                json.loads(part[len("data: ") :])
                for part in response.text.split("\n\n")
                if part.startswith("data: {")
            ]
            assert {e["id"] for e in events} == {completion_id}
            answers.append([{**e, "id": "-", "created": 0} for e in events])
    burst_events, paced_events = answers
    assert burst_events == paced_events
    texts = [c["delta"].get("content") for e in burst_events for c in e["choices"]]
    assert texts[1 : TOKENS + 1] == [f" t{k}" for k in range(1, TOKENS + 1)]  # one per token
    assert burst_events[-1]["usage"]["completion_tokens"] == TOKENS
