"""The Responses API's request, translated into a chat completion request, and its objects.

What the request asks is mapped onto the chat request's fields (``instructions`` becomes a
system message, ``max_output_tokens`` ``max_completion_tokens``, ``text.format``
``response_format``, function ``tools`` chat tools), so the chat path's capability check
honours or refuses it exactly as it does for chat.  What only the Responses API has and this
gateway does not serve (stored responses and conversations, background runs, reasoning,
built-in tools, ``include``) is refused here by name, unless sent at its no-op value.
Unknown fields are ignored, as on chat.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.core.errors import InvalidRequest

# --- the request -------------------------------------------------------------------------------


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


# The content part types that carry text: what a client writes (input_text), and what it sends
# back when it replays an earlier answer as conversation history (output_text).
TEXT_PARTS = ("input_text", "output_text")


class InputMessage(_Lenient):
    """One message of ``input``; its content is a string or text parts, joined."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, v: object) -> object:
        # Before pydantic's union check, whose errors would name the union's members.
        if not isinstance(v, list):
            return v
        texts: list[str] = []
        for part in v:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind not in TEXT_PARTS:
                raise ValueError(
                    f"only text content parts (input_text) are supported, not {kind!r}"
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise ValueError("a text content part needs its text, a string")
            texts.append(text)
        return "".join(texts)


class JsonSchemaText(_Lenient):
    """``text.format`` of type ``json_schema``: the schema sits beside ``type``, not under it."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    type: Literal["json_schema"]
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class PlainText(_Lenient):
    type: Literal["text", "json_object"]


class TextConfig(_Lenient):
    format: Annotated[PlainText | JsonSchemaText, Field(discriminator="type")] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class FunctionTool(_Lenient):
    """A function tool in the Responses API's flat shape (chat nests it under ``function``)."""

    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def chat(self) -> dict[str, Any]:
        function = self.model_dump(exclude={"type"}, exclude_none=True)
        return {"type": "function", "function": function}

    def echo(self) -> dict[str, Any]:
        """As the response lists it: ``parameters`` and ``strict`` always (null if unset)."""
        return self.model_dump(exclude={"description"} if self.description is None else None)


# Fields of the Responses API this gateway does not serve, with the values that ask nothing.
REFUSED: dict[str, tuple[tuple[object, ...], str]] = {
    "previous_response_id": (
        (None,),
        "this gateway does not store responses: send the whole conversation in 'input'",
    ),
    "conversation": (
        (None,),
        "this gateway does not store conversations: send the whole conversation in 'input'",
    ),
    "background": ((None, False), "background responses are not supported"),
    "include": ((None, []), "no extra output data ('include') is available"),
    "reasoning": ((None, {}), "reasoning options are not supported"),
    "prompt": ((None,), "stored prompt templates are not supported"),
    "truncation": ((None, "disabled"), "only truncation 'disabled' is supported"),
    "top_logprobs": ((None, 0), "log probabilities are not supported"),
}


class ResponsesRequest(_Lenient):
    model: str = Field(min_length=1)
    input: list[InputMessage] = Field(min_length=1)
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    text: TextConfig | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(
        default=None, max_length=16
    )
    user: str | None = Field(default=None, max_length=256)
    stream: bool = False
    store: bool | None = None  # accepted; nothing is stored for retrieval (docs/api.md)
    previous_response_id: Any = None
    conversation: Any = None
    background: Any = None
    include: Any = None
    reasoning: Any = None
    prompt: Any = None
    truncation: Any = None
    top_logprobs: Any = None

    @field_validator("input", mode="before")
    @classmethod
    def _messages(cls, v: object) -> object:
        if isinstance(v, str):
            return [{"role": "user", "content": v}]
        if isinstance(v, list):
            for item in v:
                kind = item.get("type", "message") if isinstance(item, dict) else None
                if kind != "message":
                    raise ValueError(
                        f"only message items (role and content) are supported, not {kind!r}"
                    )
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata_keys(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and any(len(key) > 64 for key in v):
            raise ValueError("metadata keys are at most 64 characters")
        return v

    def refuse_unsupported(self) -> None:
        """Refuse, by name, what only the Responses API has and this gateway does not serve."""
        for name, (neutral, why) in REFUSED.items():
            value = getattr(self, name)
            if value in neutral or (name == "reasoning" and _all_none(value)):
                continue
            raise InvalidRequest(
                f"'{name}' is not supported by this gateway's Responses API: {why}.",
                param=name,
                code="unsupported_parameter",
            )
        if self.text is not None and self.text.verbosity not in (None, "medium"):
            raise InvalidRequest(
                "'text.verbosity' is not supported by this gateway's Responses API.",
                param="text.verbosity",
                code="unsupported_parameter",
            )

    def format(self) -> PlainText | JsonSchemaText:
        return (self.text and self.text.format) or PlainText(type="text")

    def chat_tools(self) -> list[dict[str, Any]] | None:
        if self.tools is None:
            return None
        tools: list[dict[str, Any]] = []
        for i, tool in enumerate(self.tools):
            kind = tool.get("type")
            if kind != "function":
                raise InvalidRequest(
                    f"Built-in tools are not supported by this gateway, only function tools: "
                    f"tools[{i}] is of type {kind!r}.",
                    param="tools",
                    code="unsupported_parameter",
                )
            try:
                tools.append(FunctionTool.model_validate(tool).chat())
            except ValueError as exc:
                raise InvalidRequest(
                    f"Invalid function tool tools[{i}]: {exc}", param="tools", code="invalid_value"
                ) from None
        return tools

    def chat_tool_choice(self) -> str | dict[str, Any] | None:
        choice = self.tool_choice
        if choice is None or isinstance(choice, str):
            return choice
        if choice.get("type") == "function" and isinstance(choice.get("name"), str):
            return {"type": "function", "function": {"name": choice["name"]}}
        raise InvalidRequest(
            "Only 'none', 'auto', 'required' or a function ({'type': 'function', 'name': ...}) "
            "are supported as 'tool_choice'.",
            param="tool_choice",
            code="unsupported_parameter",
        )

    def chat_body(self) -> dict[str, Any]:
        """The chat completion request this one asks for (validated by the chat model)."""
        messages = [{"role": "system", "content": self.instructions}] if self.instructions else []
        messages += [{"role": m.role, "content": m.content} for m in self.input]
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": self.stream}
        if self.stream:
            body["stream_options"] = {"include_usage": True}  # for response.completed's usage
        optional = {
            "max_completion_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "user": self.user,
            "tools": self.chat_tools(),
            "tool_choice": self.chat_tool_choice(),
            "parallel_tool_calls": self.parallel_tool_calls,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        fmt = self.format()
        if isinstance(fmt, JsonSchemaText):
            schema = fmt.model_dump(by_alias=True, exclude={"type"}, exclude_none=True)
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif fmt.type == "json_object":
            body["response_format"] = {"type": "json_object"}
        return body


def _all_none(value: object) -> bool:
    return isinstance(value, dict) and all(v is None for v in value.values())


# --- the response ------------------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OutputText(_Out):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(_Out):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


class FunctionCall(_Out):
    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


class InputTokensDetails(_Out):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(_Out):
    reasoning_tokens: int = 0


class ResponseUsage(_Out):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int

    @classmethod
    def of(cls, input_tokens: int, output_tokens: int) -> ResponseUsage:
        return cls(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
        )


class ResponseError(_Out):
    code: Literal["server_error"]  # limits are taken before a stream starts
    message: str


class IncompleteDetails(_Out):
    reason: Literal["max_output_tokens"]


Status = Literal["in_progress", "completed", "incomplete", "failed"]


class ResponseObject(_Out):
    """OpenAI's response object.  ``output_text`` is left to the SDKs, which compute it."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Status
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputMessage | FunctionCall] = Field(default_factory=list)
    parallel_tool_calls: bool
    previous_response_id: None = None
    reasoning: None = None
    background: bool = False
    temperature: float
    top_p: float
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    truncation: Literal["disabled"] = "disabled"
    # The spec types these as present or absent, never null: left out until known or sent.
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str]

    @classmethod
    def started(cls, id: str, created_at: int, request: ResponsesRequest) -> ResponseObject:
        """The response in progress: what the request asked, echoed, and no output yet."""
        return cls(
            id=id,
            created_at=created_at,
            status="in_progress",
            instructions=request.instructions,
            max_output_tokens=request.max_output_tokens,
            model=request.model,
            parallel_tool_calls=request.parallel_tool_calls is not False,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            text={"format": request.format().model_dump(by_alias=True, exclude_none=True)},
            tool_choice=request.tool_choice or "auto",
            tools=[FunctionTool.model_validate(tool).echo() for tool in request.tools or []],
            user=request.user,
            metadata=request.metadata or {},
        )

    def as_dict(self) -> dict[str, Any]:
        absent = {name for name in ("usage", "user") if getattr(self, name) is None}
        return self.model_dump(mode="json", exclude=absent)
