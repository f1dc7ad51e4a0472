"""A server-sent-events response that closes its generator the moment the client hangs up,
and writes together the events that are ready together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Generator, Mapping
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

# Events held for one write at most, and relayed between two turns of the event loop.
_MAX_HELD = 64


class _Step:
    """``anext(events)`` run now as far as it goes without waiting.

    ``done`` says whether the next item was there already (it is then ``value``; None at the
    end).  Otherwise the step is parked where it must wait (for the engine) until awaited,
    which resumes it exactly where ``await anext(events)`` would have been.
    """

    __slots__ = ("_exc", "_it", "_signal", "done", "value")

    def __init__(self, events: AsyncGenerator[str, None]) -> None:
        self._it: Generator[Any, Any, str] = anext(events).__await__()
        self._signal: Any = None
        self._exc: BaseException | None = None
        self.done, self.value = True, None
        try:
            self._signal = self._it.send(None)
        except StopIteration as stop:
            self.value = stop.value
        except StopAsyncIteration:
            pass
        else:
            self.done = False

    def interrupt(self, exc: BaseException) -> None:
        """Awaiting the parked step next delivers ``exc`` where it waits (as Task.cancel)."""
        self._exc = exc

    def __await__(self) -> Generator[Any, Any, str | None]:
        it, signal, exc = self._it, self._signal, self._exc
        self.done = True
        try:
            if exc is not None:
                if isinstance(signal, asyncio.Future):
                    signal.cancel()  # what it waits on, as Task.cancel would
                signal = it.throw(exc)
            while True:
                # The Task protocol, passed through: what the step waits on goes to the task,
                # and what the task sends or throws back goes to the step.
                try:
                    sent = yield signal
                except GeneratorExit:
                    it.close()
                    raise
                except BaseException as err:
                    signal = it.throw(err)
                else:
                    signal = it.send(sent)
        except StopIteration as stop:
            value: str = stop.value
            self.value = value
            return value
        except StopAsyncIteration:
            return None


class EventStreamResponse(StreamingResponse):
    """``text/event-stream`` from an async generator of ``data:`` lines.

    Starlette's StreamingResponse watches for the disconnect through an anyio task group per
    response (a tenth of the gateway's own CPU per streamed request in the overhead benchmark)
    and leaves the abandoned generator to the garbage collector.  This one watches with a
    single asyncio task, and on a disconnect cancels the send loop and closes the generator
    itself, so the engine request is cancelled and the completion logged at once.

    Events that are ready together (an upstream read that held several tokens) go out in one
    write: each next event is asked for without waiting (``_Step``), and what is held is
    written only when the generator must wait.  A write to the client socket was a third of
    the gateway's CPU per streamed token (issue 17); each event stays its own SSE event.
    """

    def __init__(
        self, events: AsyncGenerator[str, None], headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self.events = events
        self._hung_up = False
        self._parked: _Step | None = None  # a step waiting while held events are written

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        finished = False

        async def watch() -> None:
            # After the last body message uvicorn answers "http.disconnect" too: only a
            # disconnect before that is the client going away.
            while (await receive())["type"] != "http.disconnect":
                pass
            if not finished:
                self._hung_up = True
                task.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not self._hung_up or task.uncancel() > 0:
                raise  # cancelled from outside (shutdown), not by the watcher
        except OSError:
            pass  # the client's connection broke under a send: nobody is left to answer
        finally:
            finished = True
            watcher.cancel()
            parked, self._parked = self._parked, None
            if parked is not None:
                # Stop the engine wait it holds, as a cancelled task would have; it ends
                # either way, and nobody is left to answer.
                parked.interrupt(asyncio.CancelledError())
                with contextlib.suppress(BaseException):
                    await parked
            await self.events.aclose()

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        held: list[str] = []
        while True:
            step = _Step(self.events)
            if not step.done and held:
                await self._write_parked(send, _body("".join(held)), step)
                held.clear()
            item = step.value if step.done else await step
            if item is None:
                break
            held.append(item)
            if len(held) >= _MAX_HELD:
                await send(_body("".join(held)))
                held.clear()
                # A read that held a whole answer would otherwise keep the loop until all of
                # it is relayed, while other streams' first chunks wait.
                await asyncio.sleep(0)
        await send(_body("".join(held), more=False))

    async def _write_parked(self, send: Send, message: Message, step: _Step) -> None:
        """Write while ``step`` is parked.

        The engine below cancels the task it last saw reading (a replica leaving rotation, a
        read timeout) and the read is parked here, so a cancel that lands in this write
        (waiting for the client to drain) may be the step's: it is delivered there, and the
        step raises it again if it was not its own.  Servers wait for the drain before they
        write, so the message is then written again.
        """
        self._parked = step  # left set if this raises: the caller's cleanup resumes it
        try:
            await send(message)
        except asyncio.CancelledError as exc:
            if self._hung_up:
                raise
            self._parked = None
            step.interrupt(exc)
            await step  # raises the cancel again unless it was the step's
            await send(message)
        self._parked = None


def _body(text: str, *, more: bool = True) -> Message:
    return {"type": "http.response.body", "body": text.encode(), "more_body": more}
