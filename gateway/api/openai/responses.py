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


class AssistantMessage(_Out):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None = None  # OpenAI's field; vLLM leaves it out


class ChatChoice(_Out):
    index: int
    message: AssistantMessage
    logprobs: None
    finish_reason: str | None


class CompletionChoice(_Out):
    """A ``/v1/completions`` choice; streamed chunks have the same shape."""

    index: int
    text: str
    logprobs: None
    finish_reason: str | None


class ChatDelta(_Out):
    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None


class ChatChunkChoice(_Out):
    index: int
    delta: ChatDelta
    logprobs: None
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

# Text no engine emits, to cut a dumped chunk into the prefix and suffix around its content.
_MARK = "\x00flywheel-content\x00"
_MARK_JSON = json.dumps(_MARK)


@dataclass
class Shape:
    """The responses of one call, with its ids.

    ``openai`` is the gateway's dialect (``system_fingerprint``, ``refusal``, and ``"usage":
    null`` on chunks when a usage chunk will follow); without it, vLLM's.
    """

    id: str
    model: str
    created: int
    chat: bool
    fingerprint: str | None = None
    openai: bool = True
    usage_chunk: bool = False  # stream_options.include_usage
    _template: tuple[str, str] | None = field(default=None, init=False, repr=False)

    def _stamp(self, response: R) -> R:
        """Set ``system_fingerprint`` in the gateway's dialect (vLLM's has none)."""
        if self.openai:
            response.system_fingerprint = self.fingerprint
        return response

    def full(
        self, text: str, finish_reason: str | None, usage: Usage
    ) -> ChatCompletion | Completion:
        if self.chat:
            message = AssistantMessage(role="assistant", content=text)
            if self.openai:
                message.refusal = None  # set, so it is written
            choice = ChatChoice(
                index=0, message=message, logprobs=None, finish_reason=finish_reason
            )
            return self._stamp(
                ChatCompletion(
                    id=self.id,
                    created=self.created,
                    model=self.model,
                    object="chat.completion",
                    choices=[choice],
                    usage=usage,
                )
            )
        text_choice = CompletionChoice(
            index=0, text=text, logprobs=None, finish_reason=finish_reason
        )
        return self._stamp(
            Completion(
                id=self.id,
                created=self.created,
                model=self.model,
                object="text_completion",
                choices=[text_choice],
                usage=usage,
            )
        )

    def event(
        self,
        text: str | None,
        finish_reason: str | None = None,
        *,
        role: bool = False,
        usage: Usage | None = None,
    ) -> str:
        """One SSE event with one choice: ``text`` (None: no content key), a finish, the role.

        ``usage`` is written when given (running counts); otherwise ``null`` where a usage chunk
        will follow in the gateway's dialect.
        """
        if not role and usage is None and finish_reason is None and text is not None:
            prefix, suffix = self._content_template()
            return prefix + json.dumps(text) + suffix
        return self._event(text, finish_reason, role=role, usage=usage)

    def _event(
        self, text: str | None, finish_reason: str | None, *, role: bool, usage: Usage | None
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
            choice = ChatChunkChoice(
                index=0, delta=delta, logprobs=None, finish_reason=finish_reason
            )
            chunk = self._chunk([choice])
        else:
            text_choice = CompletionChoice(
                index=0, text=text or "", logprobs=None, finish_reason=finish_reason
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
