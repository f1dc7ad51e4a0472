"""``POST /v1/responses``: run as a chat completion, answered as a response.

The chat path (:class:`OpenAIServing`) runs the request under the response's id (``resp_...``),
so the completion log row, the ``x-flywheel-completion-id`` header, the feedback token and
feedback by id all use the id the client sees.  Its answer is translated here: the chat
completion into a response object, and the chat stream, chunk by chunk, into the Responses
API's events (``event:`` lines with ``sequence_number``).  Reading back the chat path's JSON
costs a parse per chunk; what it buys is that everything before the first byte (auth,
routing, limits, refusals, the log) and cancellation are the chat path's own code.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from starlette.responses import Response

from gateway.api.deps import AuthContext
from gateway.api.errors import validation_error
from gateway.api.openai.protocol import ChatCompletionRequest
from gateway.api.openai.responses_api.protocol import (
    FunctionCall,
    IncompleteDetails,
    OutputMessage,
    OutputText,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
)
from gateway.api.openai.serving import OpenAIServing
from gateway.api.streaming import EventStreamResponse
from gateway.core.errors import FlywheelError, InvalidRequest, RequestError

# The chat request's names for the Responses API's fields, to name the latter in errors.
PARAMS = {
    "messages": "input",
    "max_completion_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
}

Item = OutputMessage | FunctionCall


def response_id() -> str:
    """Also the completion id it is logged under: as long as a chat completion's."""
    return f"resp_{uuid.uuid4().hex}"


def _item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponsesServing:
    def __init__(self, serving: OpenAIServing) -> None:
        self.serving = serving

    async def create(
        self,
        auth: AuthContext,
        body: ResponsesRequest,
        disconnected: Callable[[], Awaitable[None]] | None = None,
    ) -> Response:
        try:
            chat = self.chat_request(body)
        except RequestError:
            await self.serving.charge_refused(auth)
            raise
        started = ResponseObject.started(response_id(), int(time.time()), body)
        try:
            answer = await self.serving.create("chat", auth, chat, disconnected, call_id=started.id)
        except RequestError as exc:
            rename_param(exc)
            raise
        headers = {
            k: v for k, v in answer.headers.items() if k not in ("content-length", "content-type")
        }
        if isinstance(answer, EventStreamResponse):
            return EventStreamResponse(EventWriter(started).events(answer.events), headers=headers)
        if answer.status_code != 200:
            return answer  # the client has gone (499): nobody reads it
        response = from_chat_completion(started, json.loads(bytes(answer.body)))
        return Response(
            json.dumps(response.as_dict()), headers=headers, media_type="application/json"
        )

    def chat_request(self, body: ResponsesRequest) -> ChatCompletionRequest:
        """The chat request, or a 400 naming the Responses API's field."""
        body.refuse_unsupported()
        state = self.serving.state
        limit = state.settings.max_tokens_limit
        if body.max_output_tokens is not None and body.max_output_tokens > limit:
            raise InvalidRequest(
                f"max_output_tokens is {body.max_output_tokens}, above this gateway's limit of "
                f"{limit}.",
                param="max_output_tokens",
            )
        fmt, capabilities = body.format(), state.engine.capabilities
        if fmt.type != "text" and "response_format" not in capabilities.fields:
            raise InvalidRequest(
                f"'text.format' of type '{fmt.type}' is not supported on this gateway's "
                f"{capabilities.engine} engine; docs/api.md lists what each engine honours.",
                param="text.format",
                code="unsupported_parameter",
            )
        try:
            return ChatCompletionRequest.model_validate(body.chat_body())
        except ValidationError as exc:
            error = validation_error(exc)
            rename_param(error)
            raise error from None


def rename_param(exc: FlywheelError) -> None:
    """Name the Responses API's field where the chat path named its own (``messages.0`` is
    ``input.0``, ``max_completion_tokens`` ``max_output_tokens``, ...)."""
    if exc.param is None:
        return
    head, dot, rest = exc.param.partition(".")
    if head in PARAMS:
        exc.message = exc.message.replace(f"'{head}'", f"'{PARAMS[head]}'")
        exc.param = PARAMS[head] + dot + rest


def _usage(usage: dict[str, Any] | None) -> ResponseUsage | None:
    if usage is None:
        return None
    return ResponseUsage.of(usage["prompt_tokens"], usage["completion_tokens"])


def _finished(
    started: ResponseObject,
    output: list[Item],
    finish_reason: str | None,
    usage: ResponseUsage | None,
) -> ResponseObject:
    """The response once generation ended: ``incomplete`` when max_output_tokens cut it."""
    cut = finish_reason == "length"
    status = "incomplete" if cut else "completed"
    return started.model_copy(
        update={
            "status": status,
            "completed_at": None if cut else int(time.time()),
            "incomplete_details": IncompleteDetails(reason="max_output_tokens") if cut else None,
            "output": [item.model_copy(update={"status": status}) for item in output],
            "usage": usage,
        }
    )


def from_chat_completion(started: ResponseObject, completion: dict[str, Any]) -> ResponseObject:
    choice = completion["choices"][0]
    message = choice["message"]
    calls = message.get("tool_calls") or []
    output: list[Item] = []
    if message.get("content") or not calls:
        text = OutputText(text=message.get("content") or "")
        output.append(OutputMessage(id=_item_id("msg"), status="completed", content=[text]))
    for call in calls:
        function = call["function"]
        output.append(
            FunctionCall(
                id=_item_id("fc"),
                call_id=call["id"],
                name=function["name"],
                arguments=function["arguments"],
                status="completed",
            )
        )
    return _finished(started, output, choice["finish_reason"], _usage(completion.get("usage")))


class EventWriter:
    """The Responses API's stream events for one response, from the chat path's stream.

    Items are opened as their first delta arrives (a message, or a function call per chat
    tool-call index), and all closed when the chat stream ends, then ``response.completed``
    (or ``response.incomplete``).  An error event of the chat stream becomes ``error`` and
    ``response.failed``.
    """

    def __init__(self, started: ResponseObject) -> None:
        self.response = started
        self.sequence = 0
        self.output: list[Item] = []
        self.message: OutputMessage | None = None
        self.calls: dict[int, FunctionCall] = {}  # by the chat tool-call index
        self.finish_reason: str | None = None
        self.usage: ResponseUsage | None = None

    async def events(self, chat: AsyncGenerator[str, None]) -> AsyncGenerator[str, None]:
        try:
            started = self.response.as_dict()
            yield self.event("response.created", response=started) + self.event(
                "response.in_progress", response=started
            )
            async for text in chat:
                out = "".join(self.translate(data) for data in _data_lines(text))
                if out:
                    yield out
        finally:
            await chat.aclose()  # the chat path logs and settles the call, or cancels it

    def event(self, kind: str, **fields: Any) -> str:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n"

    def translate(self, data: str) -> str:
        """The events for one chat stream event (a chunk, an error, or ``[DONE]``)."""
        if data == "[DONE]":
            return self.done()
        chunk = json.loads(data)
        if "error" in chunk:
            return self.failed(chunk["error"])
        if chunk.get("usage"):
            self.usage = _usage(chunk["usage"])
        out: list[str] = []
        for choice in chunk["choices"]:
            delta = choice["delta"]
            if delta.get("content"):
                out.append(self.text(delta["content"]))
            for call in delta.get("tool_calls") or []:
                out.append(self.call(call))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return "".join(out)

    def _open(self, item: Item) -> str:
        self.output.append(item)
        return self.event(
            "response.output_item.added",
            output_index=len(self.output) - 1,
            item=item.model_dump(mode="json"),
        )

    def _open_message(self) -> tuple[OutputMessage, str]:
        message = OutputMessage(id=_item_id("msg"), status="in_progress", content=[])
        out = self._open(message) + self.event(
            "response.content_part.added",
            item_id=message.id,
            output_index=len(self.output) - 1,
            content_index=0,
            part=OutputText(text="").model_dump(mode="json"),
        )
        message.content.append(OutputText(text=""))
        self.message = message
        return message, out

    def text(self, delta: str) -> str:
        out = ""
        message = self.message
        if message is None:
            message, out = self._open_message()
        message.content[0].text += delta
        return out + self.event(
            "response.output_text.delta",
            item_id=message.id,
            output_index=self.output.index(message),
            content_index=0,
            delta=delta,
            logprobs=[],
        )

    def call(self, delta: dict[str, Any]) -> str:
        out = ""
        function = delta.get("function") or {}
        item = self.calls.get(delta["index"])
        if item is None:
            item = FunctionCall(
                id=_item_id("fc"),
                call_id=delta.get("id") or _item_id("call"),
                name=function.get("name") or "",
                arguments="",
                status="in_progress",
            )
            self.calls[delta["index"]] = item
            out = self._open(item)
        arguments = function.get("arguments")
        if not arguments:
            return out
        item.arguments += arguments
        return out + self.event(
            "response.function_call_arguments.delta",
            item_id=item.id,
            output_index=self.output.index(item),
            delta=arguments,
        )

    def done(self) -> str:
        out: list[str] = []
        if not self.output:  # nothing was generated: still one (empty) message
            out.append(self._open_message()[1])
        final = _finished(self.response, self.output, self.finish_reason, self.usage)
        for index, item in enumerate(final.output):
            if isinstance(item, OutputMessage):
                part = item.content[0].model_dump(mode="json")
                common = {"item_id": item.id, "output_index": index, "content_index": 0}
                out.append(
                    self.event(
                        "response.output_text.done", **common, text=part["text"], logprobs=[]
                    )
                )
                out.append(self.event("response.content_part.done", **common, part=part))
            else:
                out.append(
                    self.event(
                        "response.function_call_arguments.done",
                        item_id=item.id,
                        output_index=index,
                        name=item.name,
                        arguments=item.arguments,
                    )
                )
            out.append(
                self.event(
                    "response.output_item.done",
                    output_index=index,
                    item=item.model_dump(mode="json"),
                )
            )
        kind = "response.incomplete" if final.status == "incomplete" else "response.completed"
        out.append(self.event(kind, response=final.as_dict()))
        return "".join(out)

    def failed(self, error: dict[str, Any]) -> str:
        """The chat stream's in-stream error: OpenAI's ``error`` event, then the response
        ``failed`` with what it had generated."""
        message = str(error.get("message") or "The response failed.")
        failed = self.response.model_copy(
            update={
                "status": "failed",
                "error": ResponseError(code="server_error", message=message),
                "output": [
                    item.model_copy(update={"status": "incomplete"}) for item in self.output
                ],
                "usage": self.usage,
            }
        )
        return self.event(
            "error", code=error.get("code"), message=message, param=error.get("param")
        ) + self.event("response.failed", response=failed.as_dict())


def _data_lines(text: str) -> list[str]:
    """The ``data:`` payloads of the chat path's SSE text (one or several events)."""
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]
