"""OpenAI's response objects, typed, and the one place that writes them.

Both OpenAI-shaped servers in this package answer with these models: the gateway
(``serving.py``) and ``flywheel engine local`` (``api/engine_server.py``, which answers the way
vLLM does).  vLLM's ``entrypoints/openai/protocol.py`` types its responses the same way.

Every model is dumped with ``exclude_unset``: a field appears when the writer set it, even to
``null``, and is absent otherwise.  That is how one model gives both dialects: the gateway sets
``system_fingerprint`` and ``message.refusal`` as OpenAI's spec wants, vLLM's shape sets
neither, and a chunk carries ``"usage": null`` only when the client asked for a usage chunk.

A stream writes one event per engine chunk, so :class:`Shape` writes the common one (a content
delta, no usage) from a prefix and suffix dumped once per call and ``json.dumps`` of the text:
a pydantic dump per token would be most of the relay's cost per token.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from gateway.core.db.models import AdapterVersion
from gateway.engine.base import GenerationChunk, TokenLogprob, ToolCallDelta


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def dump(self) -> str:
        """The JSON body: set fields only (see the module docstring)."""
        return self.model_dump_json(exclude_unset=True)


class Usage(_Out):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class TopLogprobOut(_Out):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(_Out):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprobOut]


class ChatLogprobs(_Out):
    """A chat choice's ``logprobs``: the content's tokens (OpenAI also sets ``refusal``)."""

    content: list[ChatTokenLogprob] | None
    refusal: list[ChatTokenLogprob] | None = None


class CompletionLogprobs(_Out):
    """A ``/v1/completions`` choice's ``logprobs``: parallel lists, one entry per token; an
    echoed prompt's first token has a ``null`` logprob and no top tokens."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class FunctionOut(_Out):
    name: str
    arguments: str  # JSON text, as the model wrote it


class ToolCallOut(_Out):
    id: str
    type: Literal["function"]
    function: FunctionOut


class FunctionDelta(_Out):
    name: str | None = None
    arguments: str | None = None


class ToolCallChunk(_Out):
    """A streamed piece of tool call ``index`` (OpenAI's ``ChatCompletionMessageToolCallChunk``)."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta | None = None


class AssistantMessage(_Out):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None = None  # OpenAI's field; vLLM leaves it out
    tool_calls: list[ToolCallOut] | None = None  # set only when the model called tools


class ChatChoice(_Out):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: str | None


class CompletionChoice(_Out):
    """A ``/v1/completions`` choice; streamed chunks have the same shape."""

    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None


class ChatDelta(_Out):
    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallChunk] | None = None


class ChatChunkChoice(_Out):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: str | None


class _Response(_Out):
    id: str
    created: int
    model: str
    system_fingerprint: str | None = None


class ChatCompletion(_Response):
    object: Literal["chat.completion"]
    choices: list[ChatChoice]
    usage: Usage


class Completion(_Response):
    object: Literal["text_completion"]
    choices: list[CompletionChoice]
    usage: Usage


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"]
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChunk(_Response):
    object: Literal["text_completion"]
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(_Out):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    parent: str | None
    max_model_len: int | None = None  # vLLM lists it on the base model


class ModelList(_Out):
    object: Literal["list"]
    data: list[ModelCard]


def base_model_card(base: str, model_id: str | None = None) -> ModelCard:
    """The gateway's card for the bare base model (every tenant may call it)."""
    return ModelCard(
        id=model_id or base, object="model", created=0, owned_by="flywheel", root=base, parent=None
    )


def adapter_model_card(
    model_id: str, adapter: str, version: AdapterVersion, owner: str, base: str
) -> ModelCard:
    """The gateway's card for a tenant's adapter: ``root`` names the version it resolves to."""
    created = version.created_at.timestamp() if version.created_at else time.time()
    return ModelCard(
        id=model_id,
        object="model",
        created=int(created),
        owned_by=owner,
        root=f"{adapter}@{version.version}",
        parent=base,
    )


R = TypeVar("R", bound=_Response)


@dataclass
class Answer:
    """One choice's whole answer, gathered from its engine chunks (a non-streamed response
    writes it; a stream uses it for the completions' ``text_offset``)."""

    index: int
    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    offset: int = 0  # characters of the tokens so far: the next token's text_offset
    _calls: dict[int, list[ToolCallDelta]] = field(default_factory=dict)

    def add(self, chunk: GenerationChunk) -> int:
        """Take ``chunk`` in; returns the text offset its first logprob token starts at."""
        start = self.offset
        self.text.append(chunk.text)
        if chunk.logprobs:
            self.logprobs.extend(chunk.logprobs)
            self.offset += sum(len(t.token) for t in chunk.logprobs)
        for piece in chunk.tool_calls or ():
            self._calls.setdefault(piece.index, []).append(piece)
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        return start

    @property
    def content(self) -> str:
        return "".join(self.text)

    def tool_calls(self) -> list[ToolCallOut]:
        """The calls, each put together from its pieces (id and name from the first)."""
        calls = []
        for index in sorted(self._calls):
            pieces = self._calls[index]
            call_id = next((p.id for p in pieces if p.id), f"call_{index}")
            name = next((p.name for p in pieces if p.name), "")
            arguments = "".join(p.arguments for p in pieces)
            calls.append(
                ToolCallOut(
                    id=call_id,
                    type="function",
                    function=FunctionOut(name=name, arguments=arguments),
                )
            )
        return calls


def chat_logprobs(tokens: list[TokenLogprob], openai: bool) -> ChatLogprobs:
    """``logprobs`` of a chat choice or chunk (``refusal: null`` in the gateway's dialect)."""
    shaped = ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=t.token,
                # OpenAI's floor for a token outside the top 20 (vLLM clamps -inf to it too).
                logprob=-9999.0 if t.logprob is None else t.logprob,
                bytes=list(t.token.encode()) if t.bytes is None else t.bytes,
                top_logprobs=[
                    TopLogprobOut(
                        token=top.token,
                        logprob=top.logprob,
                        bytes=list(top.token.encode()) if top.bytes is None else top.bytes,
                    )
                    for top in t.top
                ],
            )
            for t in tokens
        ]
    )
    if openai:
        shaped.refusal = None  # set, so it is written
    return shaped


def completion_logprobs(tokens: list[TokenLogprob], offset: int) -> CompletionLogprobs:
    """``logprobs`` of a text choice or chunk whose first token starts at ``offset``."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return CompletionLogprobs(
        tokens=[t.token for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[
            {top.token: top.logprob for top in t.top} if t.top or t.logprob is not None else None
            for t in tokens
        ],
        text_offset=offsets,
    )


def tool_call_chunks(pieces: list[ToolCallDelta]) -> list[ToolCallChunk]:
    """Streamed tool-call pieces in OpenAI's shape: id, type and name on a call's first."""
    chunks = []
    for piece in pieces:
        chunk = ToolCallChunk(index=piece.index)
        if piece.id is not None:
            chunk.id, chunk.type = piece.id, "function"
        function = FunctionDelta(arguments=piece.arguments)
        if piece.name is not None:
            function.name = piece.name
        chunk.function = function
        chunks.append(chunk)
    return chunks


# Text no engine emits, to cut a dumped chunk into the prefix and suffix around its content.
_MARK = "\x00flywheel-content\x00"
_MARK_JSON = json.dumps(_MARK)


@dataclass
class Shape:
    """The responses of one call, with its ids.

    ``openai`` is the gateway's dialect (``system_fingerprint``, ``refusal``, and ``"usage":
    null`` on chunks when a usage chunk will follow); without it, vLLM's.  ``logprobs``: the
    client asked for them, so every choice carries its ``logprobs`` object (else ``null``).
    """

    id: str
    model: str
    created: int
    chat: bool
    fingerprint: str | None = None
    openai: bool = True
    usage_chunk: bool = False  # stream_options.include_usage
    logprobs: bool = False
    _template: tuple[str, str] | None = field(default=None, init=False, repr=False)

    def _stamp(self, response: R) -> R:
        """Set ``system_fingerprint`` in the gateway's dialect (vLLM's has none)."""
        if self.openai:
            response.system_fingerprint = self.fingerprint
        return response

    def full(
        self, text: str, finish_reason: str | None, usage: Usage
    ) -> ChatCompletion | Completion:
        """The whole response with one choice of plain text."""
        answer = Answer(0, [text], finish_reason)
        return self.answers([answer], usage)

    def answers(self, answers: list[Answer], usage: Usage) -> ChatCompletion | Completion:
        """The whole response: one choice per answer, in index order."""
        ordered = sorted(answers, key=lambda a: a.index)
        if self.chat:
            return self._stamp(
                ChatCompletion(
                    id=self.id,
                    created=self.created,
                    model=self.model,
                    object="chat.completion",
                    choices=[self._chat_choice(a) for a in ordered],
                    usage=usage,
                )
            )
        return self._stamp(
            Completion(
                id=self.id,
                created=self.created,
                model=self.model,
                object="text_completion",
                choices=[
                    CompletionChoice(
                        index=a.index,
                        text=a.content,
                        logprobs=completion_logprobs(a.logprobs, 0) if self.logprobs else None,
                        finish_reason=a.finish_reason,
                    )
                    for a in ordered
                ],
                usage=usage,
            )
        )

    def _chat_choice(self, answer: Answer) -> ChatChoice:
        calls = answer.tool_calls()
        text = answer.content
        # OpenAI's content is null beside tool calls when the model wrote no text.
        message = AssistantMessage(role="assistant", content=text or (None if calls else ""))
        if self.openai:
            message.refusal = None  # set, so it is written
        if calls:
            message.tool_calls = calls
        logprobs = chat_logprobs(answer.logprobs, self.openai) if self.logprobs else None
        return ChatChoice(
            index=answer.index,
            message=message,
            logprobs=logprobs,
            finish_reason=answer.finish_reason,
        )

    def event(
        self,
        text: str | None,
        finish_reason: str | None = None,
        *,
        role: bool = False,
        usage: Usage | None = None,
        index: int = 0,
        logprobs: list[TokenLogprob] | None = None,
        text_offset: int = 0,
        tool_calls: list[ToolCallDelta] | None = None,
    ) -> str:
        """One SSE event with one choice: ``text`` (None: no content key), a finish, the role,
        its tokens' ``logprobs`` (completions: the first starting at ``text_offset`` of the
        choice's text) and tool-call pieces.

        ``usage`` is written when given (running counts); otherwise ``null`` where a usage chunk
        will follow in the gateway's dialect.
        """
        plain = not role and usage is None and finish_reason is None and text is not None
        if plain and index == 0 and not logprobs and not tool_calls:
            prefix, suffix = self._content_template()
            return prefix + json.dumps(text) + suffix
        return self._event(
            text,
            finish_reason,
            role=role,
            usage=usage,
            index=index,
            logprobs=logprobs,
            text_offset=text_offset,
            tool_calls=tool_calls,
        )

    def _event(
        self,
        text: str | None,
        finish_reason: str | None,
        *,
        role: bool,
        usage: Usage | None,
        index: int = 0,
        logprobs: list[TokenLogprob] | None = None,
        text_offset: int = 0,
        tool_calls: list[ToolCallDelta] | None = None,
    ) -> str:
        chunk: ChatCompletionChunk | CompletionChunk
        if self.chat:
            delta = ChatDelta()
            if role:
                delta.role = "assistant"
                if self.openai:
                    delta.refusal = None
            if text is not None:
                delta.content = text
            if tool_calls:
                delta.tool_calls = tool_call_chunks(tool_calls)
            choice = ChatChunkChoice(
                index=index,
                delta=delta,
                logprobs=chat_logprobs(logprobs, self.openai) if logprobs else None,
                finish_reason=finish_reason,
            )
            chunk = self._chunk([choice])
        else:
            text_choice = CompletionChoice(
                index=index,
                text=text or "",
                logprobs=completion_logprobs(logprobs, text_offset) if logprobs else None,
                finish_reason=finish_reason,
            )
            chunk = self._chunk([text_choice])
        if usage is not None or (self.openai and self.usage_chunk):
            chunk.usage = usage
        return f"data: {chunk.dump()}\n\n"

    def usage_event(self, usage: Usage) -> str:
        """The chunk with no choices that ends a stream whose client asked for usage."""
        chunk = self._chunk([])
        chunk.usage = usage
        return f"data: {chunk.dump()}\n\n"

    def _chunk(
        self, choices: list[ChatChunkChoice] | list[CompletionChoice]
    ) -> ChatCompletionChunk | CompletionChunk:
        if self.chat:
            chat_choices = [c for c in choices if isinstance(c, ChatChunkChoice)]
            return self._stamp(
                ChatCompletionChunk(
                    id=self.id,
                    created=self.created,
                    model=self.model,
                    object="chat.completion.chunk",
                    choices=chat_choices,
                )
            )
        text_choices = [c for c in choices if isinstance(c, CompletionChoice)]
        return self._stamp(
            CompletionChunk(
                id=self.id,
                created=self.created,
                model=self.model,
                object="text_completion",
                choices=text_choices,
            )
        )

    def _content_template(self) -> tuple[str, str]:
        if self._template is None:
            sample = self._event(_MARK, None, role=False, usage=None)
            at = sample.index(_MARK_JSON)
            self._template = (sample[:at], sample[at + len(_MARK_JSON) :])
        return self._template
