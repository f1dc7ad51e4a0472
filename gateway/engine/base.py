"""What the gateway needs from an engine, whichever runs underneath (embedded or vLLM).

The gateway resolves ``model`` to an :class:`AdapterRef` (or ``None`` for the bare base),
builds a :class:`GenerationRequest`, and formats the :class:`GenerationChunk` stream as OpenAI
responses itself, so ids, errors and headers are the same on every engine.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class AdapterRef:
    """One adapter version as an engine sees it.

    ``engine_name`` is immutable per version (derived from the version id): engines cache
    weights by name, so new weights always get a new name.
    """

    engine_name: str
    path: Path
    version_id: str
    use_dora: bool = False


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens.  Every field past ``seed`` is off at its default; an engine gets a
    non-default value only when its :class:`Capabilities` name the field."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) pairs
    min_tokens: int = 0

    @property
    def greedy(self) -> bool:
        # Like vLLM (_SAMPLING_EPS): a temperature this small is greedy; dividing the logits by
        # it would overflow to inf and turn the softmax into NaN.
        return self.temperature < 1e-5


@dataclass
class GenerationRequest:
    """Exactly one of ``messages`` (chat) or ``prompt`` (text completion) is set.

    ``extra`` holds request fields an engine passes on as the client sent them (vLLM:
    ``response_format``, ``continue_final_message``, ``add_generation_prompt``, ``n``,
    ``logprobs``, ``top_logprobs``, ``tools``, ``tool_choice``, ``echo``, and ``prompt`` when it
    is a list of prompts or token ids); the gateway sets one only when the engine's
    :class:`Capabilities` name it.
    """

    request_id: str
    adapter: AdapterRef | None
    sampling: SamplingParams
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TopLogprob:
    """One of the most likely tokens at a position."""

    token: str
    logprob: float
    bytes: list[int] | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log probability and the most likely alternatives at its position.

    ``logprob`` is None only for an echoed prompt's first token, which has nothing before it.
    """

    token: str
    logprob: float | None
    bytes: list[int] | None = None
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of one tool call, OpenAI's streamed shape: the first piece of call ``index``
    has its ``id`` and ``name``, the rest more ``arguments`` (JSON text, split anywhere)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class GenerationChunk:
    """A delta of one choice.  Each choice ends with one chunk whose ``finish_reason`` is set
    ("stop" | "length" | "tool_calls"); ``index`` is OpenAI's choice index (several with ``n``
    or a list of prompts; 0 otherwise).  Token counts are the whole request's so far."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    index: int = 0
    logprobs: list[TokenLogprob] | None = None
    tool_calls: list[ToolCallDelta] | None = None


@dataclass(frozen=True)
class ReplicaStats:
    """Adapter residency of one engine replica, for metrics."""

    resident: int
    loads: int
    evictions: int


@dataclass(frozen=True)
class Capabilities:
    """The optional request fields an engine honours.

    A request that sets any other optional field to a value that changes the answer is refused
    with a 400 naming that field (``param``), so nothing a client asks for is silently dropped.
    The names are the OpenAI (or vLLM extra) request fields: ``top_k``, ``logit_bias``, ...
    """

    engine: str  # how the engine is called in error messages: "embedded", "vLLM"
    fields: frozenset[str]
    dora: bool = False  # serves DoRA adapters (PEFT use_dora=True)


# A base directory holding this file is the random-weight demo base (adapters/demo.py builds
# it): the engine keeps it in float32, where random weights stay well-behaved.
DEMO_MARKER = "flywheel-demo.json"


def is_demo_base(path: Path) -> bool:
    return (path / DEMO_MARKER).exists()


# Called before any adapter is loaded; raises AdapterLoadRefused when it must not be.
Verifier = Callable[[AdapterRef], None]


class Engine(Protocol):
    """The engine contract.  Implementations: embedded.EmbeddedEngine, vllm.VLLMEngine."""

    base_model_name: str
    capabilities: Capabilities

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def ready(self) -> bool: ...

    async def load_adapter(self, adapter: AdapterRef) -> None:
        """Verify and load ``adapter``; idempotent; concurrent calls for one name load once."""

    async def unload_adapter(self, engine_name: str) -> None: ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Stream deltas.  Closing the iterator (client gone) cancels the generation."""
        ...

    def loaded_adapters(self) -> list[str]: ...

    def stats(self) -> dict[str, ReplicaStats]:
        """Residency per replica (one entry, "embedded", for the embedded engine)."""
        ...
