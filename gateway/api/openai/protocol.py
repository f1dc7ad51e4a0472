"""Request models for the OpenAI-compatible endpoints.

Every request field has one of two fates: the engine serving the request honours it, or the
request is refused with a 400 whose ``param`` names the field.  Types and ranges are checked
here by pydantic (each error carries its field as ``param``); :meth:`_SamplingRequest.check`
then refuses the fields the serving engine cannot honour (its :class:`Capabilities`).  Unknown
fields are ignored: the SDKs and frameworks send vendor extensions.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.core.errors import InvalidRequest
from gateway.engine.base import Capabilities, SamplingParams


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    # A conversation with tools sends back the assistant's calls and each tool's answer.
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, v: object) -> object:
        # Before pydantic's union check, whose first error would name "content.str" even for
        # an image part; this names the content and says what is not served.
        if isinstance(v, list):
            for part in v:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                if kind != "text":
                    raise ValueError(f"only text content parts are supported, not {kind!r}")
                if not isinstance(part.get("text"), str):
                    raise ValueError("a text content part needs its text, a string")
        elif v is not None and not isinstance(v, str):
            raise ValueError("content must be a string or a list of text parts")
        return v

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Lenient):
    include_usage: bool = False
    # vLLM's extension: the running usage on every chunk, not only on the last event.
    continuous_usage_stats: bool = False


class JsonSchemaFormat(_Lenient):
    """``response_format.json_schema``: OpenAI's shape (``schema`` is a pydantic name)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("a response_format of type json_schema needs its json_schema")
        return self

    @property
    def constrains(self) -> bool:
        """False for ``text``, which asks for nothing beyond the default."""
        return self.type != "text"


PositiveInt = Annotated[int, Field(ge=1)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
# OpenAI documents logit_bias values from -100 to 100 (vLLM clamps to the same range).
LOGIT_BIAS_LIMIT = 100.0


# vLLM's own request extensions that change the answer, with the value that changes nothing.
# The gateway does not pass these on (yet): set to anything else, each is refused by name
# rather than dropped.  Other unknown fields stay ignored, as the OpenAI SDKs send some.
VLLM_ONLY_NEUTRAL: dict[str, tuple[object, ...]] = {
    "guided_json": (None,),
    "guided_regex": (None,),
    "guided_choice": (None,),
    "guided_grammar": (None,),
    "guided_decoding_backend": (None,),
    "guided_whitespace_pattern": (None,),
    "structured_outputs": (None,),
    "stop_token_ids": (None, []),
    "bad_words": (None, []),
    "allowed_token_ids": (None,),
    "ignore_eos": (None, False),
    "include_stop_str_in_output": (None, False),
    "skip_special_tokens": (None, True),
    "spaces_between_special_tokens": (None, True),
    "truncate_prompt_tokens": (None,),
    "prompt_logprobs": (None,),
    "use_beam_search": (None, False),
    "length_penalty": (None, 1, 1.0),
    "priority": (None, 0),
    "chat_template": (None,),
    "chat_template_kwargs": (None, {}),
    "documents": (None,),
    "mm_processor_kwargs": (None,),
    "return_tokens_as_token_ids": (None, False),
}


# What a refusal calls a field whose name alone would not say what was asked.
_REFUSED_WHAT = {"prompt": "A list of prompts or token-id prompts ('prompt')"}


class _SamplingRequest(_Lenient):
    # Extras are kept (not dropped) so the vLLM-only ones above can be refused by name.
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    max_tokens: PositiveInt | None = None
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    # The range torch.Generator.manual_seed accepts (OpenAI documents no range).
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    user: str | None = Field(default=None, max_length=256)
    n: PositiveInt = 1
    best_of: PositiveInt | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None  # narrowed by each endpoint
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[int, float] | None = None
    response_format: ResponseFormat | None = None
    # vLLM's extra sampling parameters, under vLLM's names and ranges.
    top_k: int | None = Field(default=None, ge=-1)  # -1 and 0 turn it off
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    min_tokens: int | None = Field(default=None, ge=0)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _logit_bias(cls, v: object) -> object:
        # JSON keys are strings; each must be a token id, each value within OpenAI's range.
        if not isinstance(v, dict):
            return v
        bias: dict[int, float] = {}
        for key, value in v.items():
            token = str(key)
            if not token.isdigit():
                raise ValueError(f"keys must be token ids (non-negative integers), got {key!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"the bias of token {token} must be a number, got {value!r}")
            if not -LOGIT_BIAS_LIMIT <= value <= LOGIT_BIAS_LIMIT:
                raise ValueError(f"the bias of token {token} is {value}, outside [-100, 100]")
            bias[int(token)] = float(value)
        return bias

    # --- what the request asks of the engine ------------------------------------------------

    def logprobs_requested(self) -> bool:
        # Chat takes a boolean; /v1/completions an integer, where 0 already asks for the
        # sampled tokens' logprobs: so only None and False ask for nothing.
        return self.logprobs is not None and self.logprobs is not False

    def requested_fields(self) -> list[str]:
        """The optional fields this request sets to a value that changes the answer."""
        fields: list[str] = []
        if self.n != 1:
            fields.append("n")
        if self.best_of not in (None, 1):
            fields.append("best_of")
        if self.logprobs_requested():
            fields.append("logprobs")
        if self.top_logprobs:
            fields.append("top_logprobs")
        if self.top_k not in (None, 0, -1):
            fields.append("top_k")
        if self.min_p not in (None, 0.0):
            fields.append("min_p")
        if self.repetition_penalty not in (None, 1.0):
            fields.append("repetition_penalty")
        if self.presence_penalty not in (None, 0.0):
            fields.append("presence_penalty")
        if self.frequency_penalty not in (None, 0.0):
            fields.append("frequency_penalty")
        if self.logit_bias:
            fields.append("logit_bias")
        if self.min_tokens:
            fields.append("min_tokens")
        if self.response_format is not None and self.response_format.constrains:
            fields.append("response_format")
        return fields

    def check(self, capabilities: Capabilities) -> None:
        """Refuse (400, ``param`` set) what is inconsistent, or what the engine cannot honour."""
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest(
                "The 'stream_options' parameter is only allowed when 'stream' is true.",
                param="stream_options",
                code="invalid_value",
            )
        if self.top_logprobs and not self.logprobs_requested():
            raise InvalidRequest(
                "'top_logprobs' needs 'logprobs' set to true.",
                param="top_logprobs",
                code="invalid_value",
            )
        for name, neutral in VLLM_ONLY_NEUTRAL.items():
            value = (self.model_extra or {}).get(name)
            if value not in neutral:
                raise InvalidRequest(
                    f"'{name}' (a vLLM extension) is not supported by this gateway yet; "
                    "docs/api.md lists what each engine honours.",
                    param=name,
                    code="unsupported_parameter",
                )
        for name in self.requested_fields():
            if name not in capabilities.fields:
                what = _REFUSED_WHAT.get(name, f"'{name}'")
                raise InvalidRequest(
                    f"{what} is not supported on this gateway's {capabilities.engine} engine; "
                    "docs/api.md lists what each engine honours.",
                    param=name,
                    code="unsupported_parameter",
                )

    def choices(self) -> int:
        """How many choices the answer has (OpenAI numbers them 0 to choices - 1)."""
        return self.n

    # --- translation for the engine ---------------------------------------------------------

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def _max_tokens_param(self) -> str:
        return "max_tokens"

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        stop: tuple[str, ...]
        if self.stop is None:
            stop = ()
        elif isinstance(self.stop, str):
            stop = (self.stop,)
        else:
            stop = tuple(s for s in self.stop if s)
        max_tokens = self.requested_max_tokens() or default_max_tokens
        min_tokens = self.min_tokens or 0
        if min_tokens > max_tokens:
            raise InvalidRequest(
                f"min_tokens ({min_tokens}) is above {self._max_tokens_param()} ({max_tokens}).",
                param="min_tokens",
                code="invalid_value",
            )
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
            seed=self.seed,
            top_k=max(self.top_k or 0, 0),
            min_p=self.min_p or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            logit_bias=tuple(sorted((self.logit_bias or {}).items())),
            min_tokens=min_tokens,
        )

    def engine_extra(self) -> dict[str, Any]:
        """Fields passed on to the engine as sent (see GenerationRequest.extra)."""
        extra: dict[str, Any] = {}
        if self.response_format is not None and self.response_format.constrains:
            extra["response_format"] = self.response_format.model_dump(
                by_alias=True, exclude_none=True
            )
        if self.n != 1:
            extra["n"] = self.n
        if self.logprobs_requested():
            extra["logprobs"] = self.logprobs
        return extra

    def logged_params(self) -> dict[str, Any]:
        """The parameters stored with the completion row (they shaped the answer).

        The row holds one answer: the first choice (index 0) when ``n`` or a list of prompts
        asks for several; ``n`` is stored so the row says so."""
        params = self.model_dump(
            mode="json",
            by_alias=True,
            include={
                "max_tokens",
                "temperature",
                "top_p",
                "stop",
                "seed",
                "stream",
                "top_k",
                "min_p",
                "repetition_penalty",
                "presence_penalty",
                "frequency_penalty",
                "logit_bias",
                "min_tokens",
                "response_format",
                "top_logprobs",
            },
            exclude_none=True,
        )
        if self.n != 1:
            params["n"] = self.n
        if self.logprobs_requested():
            params["logprobs"] = self.logprobs
        return params

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return self.include_usage and bool(
            self.stream_options and self.stream_options.continuous_usage_stats
        )


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool | None = None
    # Checked by the engine that honours them (vLLM validates the tools and the choice).
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    # vLLM's chat-template extras.
    continue_final_message: bool = False
    add_generation_prompt: bool = True

    def requested_fields(self) -> list[str]:
        fields = super().requested_fields()
        if self.tools:
            fields.append("tools")
        if self.tool_choice not in (None, "none"):
            fields.append("tool_choice")
        if self.functions:
            fields.append("functions")
        if self.function_call not in (None, "none"):
            fields.append("function_call")
        if self.continue_final_message:
            fields.append("continue_final_message")
        if not self.add_generation_prompt:
            fields.append("add_generation_prompt")
        return fields

    def check(self, capabilities: Capabilities) -> None:
        if self.continue_final_message and self.add_generation_prompt:
            # vLLM's rule: continuing the last message and opening a new one contradict.
            raise InvalidRequest(
                "'continue_final_message' needs 'add_generation_prompt' set to false.",
                param="continue_final_message",
                code="invalid_value",
            )
        super().check(capabilities)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def _max_tokens_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens else "max_tokens"

    def engine_extra(self) -> dict[str, Any]:
        extra = super().engine_extra()
        if self.top_logprobs:
            extra["top_logprobs"] = self.top_logprobs
        if self.tools:
            extra["tools"] = self.tools
            if self.parallel_tool_calls is not None:
                extra["parallel_tool_calls"] = self.parallel_tool_calls
        if self.tool_choice is not None and (self.tools or self.tool_choice != "none"):
            extra["tool_choice"] = self.tool_choice
        if self.continue_final_message:
            extra["continue_final_message"] = True
        if not self.add_generation_prompt:
            extra["add_generation_prompt"] = False
        return extra

    def engine_messages(self) -> list[dict[str, Any]]:
        # "developer" is OpenAI's newer name for "system"; chat templates know "system".
        messages: list[dict[str, Any]] = []
        for m in self.messages:
            message: dict[str, Any] = {
                "role": "system" if m.role == "developer" else m.role,
                "content": m.text(),
            }
            if m.tool_calls:
                message["tool_calls"] = m.tool_calls
            if m.tool_call_id is not None:
                message["tool_call_id"] = m.tool_call_id
            messages.append(message)
        return messages

    def logged_params(self) -> dict[str, Any]:
        params = super().logged_params()
        if self.tool_choice is not None:
            params["tool_choice"] = self.tool_choice
        if self.parallel_tool_calls is not None:
            params["parallel_tool_calls"] = self.parallel_tool_calls
        return params


Prompt = str | list[str] | list[int] | list[list[int]]


def _token_ids(v: object) -> bool:
    return (
        isinstance(v, list)
        and bool(v)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in v)
    )


class CompletionRequest(_SamplingRequest):
    # One text, several texts, token ids, or several lists of token ids (OpenAI's four forms).
    prompt: Prompt
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_form(cls, v: object) -> object:
        # Before pydantic's own union check, whose errors would name "prompt.list[int].0".
        if isinstance(v, str):
            return v
        if isinstance(v, list) and v and all(isinstance(p, str) for p in v):
            return v[0] if len(v) == 1 else v
        if _token_ids(v) or (isinstance(v, list) and v and all(_token_ids(p) for p in v)):
            return v
        raise ValueError(
            "the prompt must be a text, a list of texts, a list of token ids, or a list of "
            "lists of token ids (none of them empty)"
        )

    def requested_fields(self) -> list[str]:
        fields = super().requested_fields()
        if self.echo:
            fields.append("echo")
        if self.suffix:
            fields.append("suffix")
        if not isinstance(self.prompt, str):
            fields.append("prompt")
        return fields

    def check(self, capabilities: Capabilities) -> None:
        if self.top_logprobs:
            # Chat's field; here vLLM (and OpenAI) would drop it without a word.
            raise InvalidRequest(
                "'top_logprobs' is a chat field; on /v1/completions 'logprobs' is the number "
                "of most likely tokens returned.",
                param="top_logprobs",
                code="invalid_value",
            )
        super().check(capabilities)

    def choices(self) -> int:
        return self.n * len(self.prompts())

    def prompts(self) -> list[str] | list[list[int]]:
        """The prompts as sent: texts, or token-id lists."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if _token_ids(prompt):
            return [cast(list[int], prompt)]
        return cast(list[str] | list[list[int]], prompt)

    def prompt_text(self) -> str:
        """The prompt, when it is one text: the only form every engine takes."""
        return self.prompt if isinstance(self.prompt, str) else ""

    def prompt_chars(self) -> int:
        """The prompts' length in characters, ~4 per token id, for the rate limit's estimate."""
        return sum(len(p) if isinstance(p, str) else 4 * len(p) for p in self.prompts())

    def engine_extra(self) -> dict[str, Any]:
        extra = super().engine_extra()
        if self.echo:
            extra["echo"] = True
        if not isinstance(self.prompt, str):
            extra["prompt"] = self.prompt
        return extra

    def logged_params(self) -> dict[str, Any]:
        params = super().logged_params()
        if self.echo:
            params["echo"] = True
        return params
