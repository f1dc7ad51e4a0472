"""HTTP client for one vLLM OpenAI-compatible server (or a ``flywheel engine local`` process).

The quirks it absorbs, checked against vLLM's ``entrypoints/openai`` source:

* ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` answer success with HTTP 200 and a
  plain-text body ("Success: LoRA adapter 'x' added successfully."), not JSON.
* Errors are JSON.  vLLM >= 0.10 wraps them as ``{"error": {"message", "type", "param",
  "code"}}``; older releases put the same fields at the top level (``{"object": "error",
  "message", ..., "code"}``).  ``code`` is the integer HTTP status in both.
* Without ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` the adapter routes are never registered, so they
  answer FastAPI's own ``404 {"detail": "Not Found"}``, which is how :meth:`runtime_lora_enabled`
  tells "route missing" from "adapter missing" (a 404 in the error envelope).

Control calls (models, load, unload) go through httpx; completion streams, the hot path, through
the lean HTTP/1.1 pool in vllm_http.  Both end in the same SSE parsing (:func:`sse_events`) and
the same translation to GenerationChunks (:func:`relay`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import orjson

from gateway.core.errors import EngineError
from gateway.engine.base import (
    GenerationChunk,
    GenerationRequest,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
)
from gateway.engine.vllm_http import ConnectionFailed, StreamPool

Kind = Literal["chat", "text"]

# Statuses that say "this replica cannot take the request now", not "this request is wrong".
_REPLICA_STATUSES = frozenset({502, 503, 504})
# A name no adapter ever has; unloading it probes whether the runtime adapter routes exist.
_PROBE_NAME = "flywheel-runtime-lora-probe"


class ReplicaDown(Exception):
    """The replica could not be reached or dropped the connection: try another one."""


@dataclass
class UpstreamError(Exception):
    """An HTTP error answer from the replica, with vLLM's message."""

    status: int
    message: str
    type: str | None = None
    param: str | None = None
    route_missing: bool = False

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}"


@dataclass(frozen=True)
class ModelList:
    """``/v1/models`` split into the base model and the LoRA cards (``parent`` set)."""

    base: str | None
    adapters: dict[str, str] = field(default_factory=dict)  # engine-side name -> root (path)


def parse_error(response: httpx.Response) -> UpstreamError:
    """Read vLLM's error body, whichever envelope its version uses."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        if isinstance(body.get("detail"), str) and "error" not in body:
            # FastAPI's own 404/405: the route itself does not exist.
            return UpstreamError(response.status_code, body["detail"], route_missing=True)
        err = body["error"] if isinstance(body.get("error"), dict) else body
        message = err.get("message")
        if isinstance(message, str):
            param = err.get("param")
            kind = err.get("type")
            return UpstreamError(
                response.status_code,
                message,
                type=kind if isinstance(kind, str) else None,
                param=param if isinstance(param, str) else None,
            )
    text = response.text.strip() or response.reason_phrase
    return UpstreamError(response.status_code, text[:500])


class VLLMClient:
    """One replica's HTTP API.  Transport failures surface as :class:`ReplicaDown`."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        control_timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        # The read timeout bounds the gap between two streamed chunks, so a replica that hangs
        # (rather than dies, which resets the connection at once) still ends the request.
        self._http = httpx.AsyncClient(
            base_url=url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(control_timeout_s, 2.0)),
            # uvicorn (which vLLM serves on) closes a keep-alive connection idle for 5 s, as
            # long as httpx's default keeps one: a request on it races the close and fails
            # with "Server disconnected without sending a response".  With health checks every
            # 5 s that took a healthy replica out of rotation under the overhead benchmark.
            limits=httpx.Limits(
                max_connections=1024, max_keepalive_connections=256, keepalive_expiry=2.0
            ),
            transport=transport,
        )
        self._control_timeout = httpx.Timeout(control_timeout_s)
        # Streams (the hot path) go over the lean HTTP/1.1 pool, unless a test injected an
        # httpx transport; see vllm_http for why.
        self._pool = (
            None
            if transport is not None
            else StreamPool(
                url,
                headers=headers,
                connect_timeout_s=min(control_timeout_s, 2.0),
                read_timeout_s=timeout_s,
            )
        )

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._pool is not None:
            await self._pool.aclose()

    async def _request(
        self, method: str, path: str, *, body: Any = None, control: bool = True
    ) -> httpx.Response:
        timeout = self._control_timeout if control else httpx.USE_CLIENT_DEFAULT
        try:
            try:
                response = await self._http.request(method, path, json=body, timeout=timeout)
            except httpx.RemoteProtocolError:
                if method != "GET":
                    raise
                # The server closed a pooled connection as it was reused (the keep-alive race
                # above, or a restart): once more on a fresh one before calling the replica down.
                response = await self._http.request(method, path, json=body, timeout=timeout)
        except httpx.TransportError as exc:
            raise ReplicaDown(f"{self.url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code in _REPLICA_STATUSES:
            raise ReplicaDown(f"{self.url}: {parse_error(response)}")
        return response

    async def models(self) -> ModelList:
        response = await self._request("GET", "/v1/models")
        if response.status_code != 200:
            raise parse_error(response)
        base: str | None = None
        adapters: dict[str, str] = {}
        for card in response.json().get("data", []):
            if card.get("parent"):
                adapters[card["id"]] = str(card.get("root") or "")
            elif base is None:
                base = card["id"]
        return ModelList(base, adapters)

    async def runtime_lora_enabled(self) -> bool:
        """Whether the server was started with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True.

        Unloading a name nobody has is side-effect free: with the routes it is a 404 (or 400 on
        some versions) in vLLM's error envelope; without them, FastAPI's bare 404.
        """
        response = await self._request(
            "POST", "/v1/unload_lora_adapter", body={"lora_name": _PROBE_NAME}
        )
        if response.status_code in (401, 403):
            raise parse_error(response)
        return not (response.status_code in (404, 405) and parse_error(response).route_missing)

    async def load_lora(self, name: str, path: str) -> None:
        """Load an adapter; success is a 200 with a plain-text body, anything else raises."""
        response = await self._request(
            "POST",
            "/v1/load_lora_adapter",
            body={"lora_name": name, "lora_path": path},
            control=False,  # loading reads the weights from disk: the long timeout applies
        )
        if response.status_code != 200:
            raise parse_error(response)

    async def unload_lora(self, name: str) -> bool:
        """Unload an adapter; False when the replica did not have it (404)."""
        response = await self._request(
            "POST", "/v1/unload_lora_adapter", body={"lora_name": name}, control=False
        )
        if response.status_code == 200:
            return True
        error = parse_error(response)
        if response.status_code == 404 and not error.route_missing:
            return False
        raise error

    async def stream(
        self, kind: Kind, payload: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any], None]:
        """POST a streaming completion and yield each SSE event's JSON until ``[DONE]``."""
        path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
        if self._pool is None:
            async for event in self._stream_httpx(path, payload):
                yield event
            return
        try:
            async with self._pool.post(path, json.dumps(payload).encode()) as response:
                if response.status != 200:
                    error = httpx.Response(
                        response.status, headers=response.headers, content=await response.read()
                    )
                    raise self._status_error(error)
                async for event in sse_events(response.chunks(), self.url):
                    yield event
        except ConnectionFailed as exc:
            raise ReplicaDown(f"{self.url}: {exc}") from exc

    async def _stream_httpx(
        self, path: str, payload: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any], None]:
        # The same stream through httpx, for an injected transport (httpx.MockTransport).
        try:
            async with self._http.stream("POST", path, json=payload) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise self._status_error(response)
                async for event in sse_events(response.aiter_bytes(), self.url):
                    yield event
        except httpx.TransportError as exc:
            raise ReplicaDown(f"{self.url}: {type(exc).__name__}: {exc}") from exc

    def _status_error(self, response: httpx.Response) -> Exception:
        if response.status_code in _REPLICA_STATUSES:
            return ReplicaDown(f"{self.url}: {parse_error(response)}")
        return parse_error(response)


async def sse_events(
    chunks: AsyncIterator[bytes], url: str
) -> AsyncGenerator[dict[str, Any], None]:
    """Server-sent events' ``data:`` JSON, up to ``[DONE]``; the body is read to its end."""
    pending = b""
    done = False
    async for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            # Blank separators and ": keep-alive" comments carry no data.  After [DONE] the
            # rest is still read, so the connection can go back to the keep-alive pool.
            if done or not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                continue
            yield _loads(data)
    if not done:
        # A stream that ends without [DONE] was cut off (the server went away mid-answer).
        raise ReplicaDown(f"{url}: the stream ended before [DONE]")


def _loads(data: bytes) -> Any:
    """One event's JSON: orjson (a fifth of the relay's CPU per token at the instant upstream
    of bench_relay, issue 17), or the standard library for what orjson refuses and it reads
    (an escaped lone surrogate).  Not msgspec: on the upstream's own event bytes
    (``python -m bench.bench_http_client``, 2026-12-02) its untyped decode took x0.89-0.93 of
    orjson's CPU, about 60 ns of an event's ~4 µs on the client side (json.loads: x4.1-5.4),
    too little for a second JSON dependency."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def upstream_body(request: GenerationRequest) -> dict[str, Any]:
    """The OpenAI request vLLM gets, always streamed with usage on the last event.

    Sampling extras go under vLLM's names (entrypoints/openai ``ChatCompletionRequest`` and
    ``CompletionRequest`` take the same ones), and only when they differ from vLLM's defaults;
    ``request.extra`` (response_format, chat-template flags, n, logprobs, tools, echo, a list
    of prompts) is passed as the client sent it.
    """
    s = request.sampling
    body: dict[str, Any] = {
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "stream": True,
        # Usage on every chunk (vLLM's continuous_usage_stats), so a stream cut short still
        # knows how many tokens it cost.
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    if s.stop:
        body["stop"] = list(s.stop)
    if s.seed is not None:
        body["seed"] = s.seed
    if s.top_k:
        body["top_k"] = s.top_k
    if s.min_p:
        body["min_p"] = s.min_p
    if s.repetition_penalty != 1.0:
        body["repetition_penalty"] = s.repetition_penalty
    if s.presence_penalty:
        body["presence_penalty"] = s.presence_penalty
    if s.frequency_penalty:
        body["frequency_penalty"] = s.frequency_penalty
    if s.logit_bias:
        # JSON object keys are strings; vLLM turns them back into token ids.
        body["logit_bias"] = {str(token): bias for token, bias in s.logit_bias}
    if s.min_tokens:
        body["min_tokens"] = s.min_tokens
    if request.messages is not None:
        body["messages"] = request.messages
    else:
        body["prompt"] = request.prompt
    body.update(request.extra)  # a list of prompts replaces the one text
    return body


async def relay(
    events: AsyncGenerator[dict[str, Any], None], kind: Kind, n: int = 1
) -> AsyncGenerator[GenerationChunk, None]:
    """Upstream SSE events -> GenerationChunks.

    Each choice's finish is held back to the end of the stream, where the usage (sent after
    the last finish) joins it: one finish chunk per choice, in index order.  ``n`` maps a
    choice to its prompt (index // n), for the running counts: vLLM's continuous usage is per
    choice (completion tokens) and per prompt (prompt tokens), summed here over the request.
    """
    finishes: dict[int, str] = {}
    usage: dict[str, Any] | None = None
    completion_tokens: dict[int, int] = {}  # choice index -> tokens so far
    prompt_tokens: dict[int, int] = {}  # prompt index -> its tokens
    async with contextlib.aclosing(events):
        async for event in events:
            error = event.get("error")
            if isinstance(error, dict):
                raise EngineError(f"vLLM: {error.get('message', error)}")
            choices = event.get("choices") or ()
            counts = event.get("usage")
            if counts and not choices:
                usage = counts  # the request's totals, after the last finish
            for choice in choices:
                index = int(choice.get("index") or 0)
                if counts:
                    completion_tokens[index] = int(counts.get("completion_tokens", 0))
                    prompt_tokens[index // max(n, 1)] = int(counts.get("prompt_tokens", 0))
                chunk = _choice_chunk(choice, kind, index)
                reason = choice.get("finish_reason")
                if reason is not None:
                    finishes[index] = reason
                if chunk is not None:
                    chunk.prompt_tokens = sum(prompt_tokens.values())
                    chunk.completion_tokens = sum(completion_tokens.values())
                    yield chunk
    if not finishes:
        raise ReplicaDown("the upstream stream ended without a finish_reason")
    total = usage or {}
    for index in sorted(finishes):
        yield GenerationChunk(
            "",
            finish_reason=finishes[index],
            prompt_tokens=int(total.get("prompt_tokens", sum(prompt_tokens.values()))),
            completion_tokens=int(total.get("completion_tokens", sum(completion_tokens.values()))),
            index=index,
        )


def _choice_chunk(choice: dict[str, Any], kind: Kind, index: int) -> GenerationChunk | None:
    """One upstream choice's text, logprobs and tool-call pieces; None when it has none."""
    if kind == "chat":
        delta = choice.get("delta") or {}
        text = delta.get("content") or ""
        tool_calls = [_tool_call(c) for c in delta.get("tool_calls") or ()] or None
        logprobs = _chat_logprobs(choice.get("logprobs"))
    else:
        text = choice.get("text") or ""
        tool_calls = None
        logprobs = _text_logprobs(choice.get("logprobs"))
    if not text and not tool_calls and not logprobs:
        return None
    return GenerationChunk(text, index=index, logprobs=logprobs, tool_calls=tool_calls)


def _tool_call(delta: dict[str, Any]) -> ToolCallDelta:
    function = delta.get("function") or {}
    return ToolCallDelta(
        index=int(delta.get("index") or 0),
        id=delta.get("id"),
        name=function.get("name"),
        arguments=function.get("arguments") or "",
    )


def _chat_logprobs(logprobs: dict[str, Any] | None) -> list[TokenLogprob] | None:
    """vLLM's chat logprobs (OpenAI's ``logprobs.content``)."""
    if not logprobs or not logprobs.get("content"):
        return None
    return [
        TokenLogprob(
            token=item["token"],
            logprob=item["logprob"],
            bytes=item.get("bytes"),
            top=tuple(
                TopLogprob(top["token"], top["logprob"], top.get("bytes"))
                for top in item.get("top_logprobs") or ()
            ),
        )
        for item in logprobs["content"]
    ]


def _text_logprobs(logprobs: dict[str, Any] | None) -> list[TokenLogprob] | None:
    """vLLM's /v1/completions logprobs (parallel lists; the offsets are recomputed when the
    answer is written, from the tokens' lengths, as vLLM computes them)."""
    if not logprobs or not logprobs.get("tokens"):
        return None
    tops = logprobs.get("top_logprobs") or [None] * len(logprobs["tokens"])
    return [
        TokenLogprob(
            token=token,
            logprob=logprob,
            top=tuple(TopLogprob(t, lp) for t, lp in (top or {}).items()),
        )
        for token, logprob, top in zip(
            logprobs["tokens"], logprobs["token_logprobs"], tops, strict=True
        )
    ]
