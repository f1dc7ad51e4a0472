"""Chat and text completions: resolve the tenant's adapter, run the engine, shape the response.

The response shape is built here for every engine, so ids, errors and headers are the same on
the embedded engine and on vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import Request
from starlette.responses import Response

from adapters.registry import Resolved, engine_name, resolve
from feedback.tokens import issue
from gateway.api.deps import AuthContext
from gateway.api.openai.protocol import ChatCompletionRequest, CompletionRequest
from gateway.api.openai.responses import (
    Answer,
    ModelCard,
    Shape,
    Usage,
    adapter_model_card,
    base_model_card,
)
from gateway.api.streaming import EventStreamResponse
from gateway.core import logs, metrics
from gateway.core.errors import FlywheelError, InvalidRequest, RateLimited, RequestError
from gateway.core.ids import completion_id
from gateway.core.ratelimit import Limits
from gateway.engine.base import AdapterRef, GenerationChunk, GenerationRequest
from gateway.state import AppState

log = logging.getLogger("flywheel.completions")

Kind = Literal["chat", "text"]
ADAPTER_HEADER = "x-flywheel-adapter-version"
FEEDBACK_TOKEN_HEADER = "x-flywheel-feedback-token"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Call:
    """Book-keeping for one completion, turned into its log row at the end."""

    id: str
    kind: Kind
    auth: AuthContext
    body: ChatCompletionRequest | CompletionRequest
    resolved: Resolved
    estimate: int
    received_at: datetime
    fingerprint: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    answers: dict[int, Answer] = field(default_factory=dict)  # by choice index
    finished: int = 0  # choices that have their finish
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_at: datetime | None = None
    status: str = "ok"
    error_type: str | None = None
    # perf_counter stamps for the latency metrics
    t_received: float = field(default_factory=time.perf_counter)
    t_engine: float = 0.0
    t_first: float = 0.0

    def absorb(self, chunk: GenerationChunk) -> int:
        """Take ``chunk`` in; returns the text offset its logprob tokens start at."""
        if self.first_token_at is None and (chunk.text or chunk.tool_calls):
            self.first_token_at = _now()
            self.t_first = time.perf_counter()
        answer = self.answers.get(chunk.index)
        if answer is None:
            answer = self.answers[chunk.index] = Answer(chunk.index)
        start = answer.add(chunk)
        if chunk.finish_reason is not None:
            self.finished += 1
            self.prompt_tokens = chunk.prompt_tokens
            self.completion_tokens = chunk.completion_tokens
        elif chunk.completion_tokens:  # running counts: what a cancelled call is charged
            self.prompt_tokens = chunk.prompt_tokens
            self.completion_tokens = chunk.completion_tokens
        return start

    @property
    def first(self) -> Answer:
        """The first choice: what the completion log keeps (docs/api.md says why)."""
        return self.answers.get(0) or Answer(0)

    def usage(self) -> Usage:
        return Usage.of(self.prompt_tokens, self.completion_tokens)

    @functools.cached_property
    def shape(self) -> Shape:
        return Shape(
            self.id,
            self.body.model,
            self.created,
            chat=self.kind == "chat",
            fingerprint=self.fingerprint,
            usage_chunk=self.body.include_usage,
            logprobs=self.body.logprobs_requested(),
        )

    def log_row(self) -> dict[str, Any]:
        store = self.auth.tenant.store_content
        body = self.body
        # One prompt and one answer per row: a list of prompts logs the first prompt, and n
        # choices the first choice (index 0, which answers the first prompt).
        if isinstance(body, ChatCompletionRequest):
            request: dict[str, Any] = {"messages": body.engine_messages()}
            if body.tools:
                request["tools"] = body.tools
        else:
            request = {"prompt": body.prompts()[0]}
        params = body.logged_params()
        if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
            params["max_completion_tokens"] = body.max_completion_tokens
        adapter, version = self.resolved.adapter, self.resolved.version
        return {
            "id": self.id,
            "tenant_id": self.auth.tenant.id,
            "key_id": self.auth.key_id,
            "kind": self.kind,
            "model": body.model,
            "adapter_id": adapter.id if adapter else None,
            "adapter_version_id": version.id if version else None,
            "request": request if store else None,
            "params": params,
            # A choice that only called tools has no text: its finish says "tool_calls".
            "response_text": self.first.content if store else None,
            "finish_reason": self.first.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "status": self.status,
            "error_type": self.error_type,
            "end_user": body.user,
            "received_at": self.received_at,
            "first_token_at": self.first_token_at,
            "done_at": _now(),
        }


def system_fingerprint(base_model: str, resolved: Resolved) -> str:
    """OpenAI's ``system_fingerprint``: it changes when the serving base or adapter version does
    (a version id is never reused, so neither is a fingerprint)."""
    served = resolved.version.id if resolved.version is not None else "base"
    return "fp_" + hashlib.sha256(f"{base_model}\0{served}".encode()).hexdigest()[:12]


def model_card(model_id: str, base: str, resolved: Resolved, owner: str) -> ModelCard:
    """One ``/v1/models`` entry: the bare base, or an adapter at the version ``model_id`` names."""
    adapter, version = resolved.adapter, resolved.version
    if adapter is None or version is None:
        return base_model_card(base, model_id)
    return adapter_model_card(model_id, adapter.name, version, owner, base)


def _observe(call: _Call) -> None:
    done = time.perf_counter()
    tenant, adapter = metrics.tenant(call.auth.tenant.id), call.resolved.label
    metrics.REQUESTS.labels(tenant, adapter, call.status).inc()
    metrics.REQUEST_SECONDS.labels(tenant, adapter).observe(done - call.t_received)
    if call.t_first:
        metrics.TTFT_SECONDS.labels(tenant, adapter).observe(call.t_first - call.t_received)
    if call.t_engine:
        metrics.ENGINE_SECONDS.labels(adapter).observe(done - call.t_engine)
        # Before the engine: auth, routing, limits; the formatting after it is negligible.
        metrics.OVERHEAD_SECONDS.observe(call.t_engine - call.t_received)
    metrics.TOKENS.labels(tenant, adapter, "in").inc(call.prompt_tokens)
    metrics.TOKENS.labels(tenant, adapter, "out").inc(call.completion_tokens)


class OpenAIServing:
    def __init__(self, state: AppState) -> None:
        self.state = state

    def _limits(self, auth: AuthContext) -> Limits:
        s = self.state.settings
        return Limits(
            rpm=auth.tenant.rpm_limit or s.default_rpm, tpm=auth.tenant.tpm_limit or s.default_tpm
        )

    async def charge_refused(self, auth: AuthContext) -> None:
        """A request refused before it ran (a bad field, an unknown model) still takes one
        request from the tenant's limit: refusals must not be a free way to load the gateway.
        An empty bucket is not an error here; the refusal stands."""
        with contextlib.suppress(RateLimited):
            await self.state.limiter.acquire(auth.tenant.id, self._limits(auth), 0)

    async def retrieve_model(self, auth: AuthContext, model_id: str) -> ModelCard:
        """``GET /v1/models/{id}``: resolved within the tenant, so another tenant's adapter is
        the same 404 as a missing one."""
        resolved = await self._resolve(auth.tenant.id, model_id)
        return model_card(model_id, self.state.engine.base_model_name, resolved, auth.tenant.name)

    async def create(
        self,
        kind: Kind,
        auth: AuthContext,
        body: ChatCompletionRequest | CompletionRequest,
        disconnected: Callable[[], Awaitable[None]] | None = None,
        call_id: str | None = None,
    ) -> Response:
        """``disconnected`` returns once the client has gone (see ``client_gone``): a
        non-streamed generation is then cancelled, and logged and charged for what it made.
        ``call_id`` replaces the generated completion id (the Responses API's ``resp_...``, so
        its log row, headers and feedback use the id its client sees)."""
        settings = self.state.settings
        received_at, t_received = _now(), time.perf_counter()  # routing and limits count too
        limits = self._limits(auth)
        try:
            requested = body.requested_max_tokens()
            if requested is not None and requested > settings.max_tokens_limit:
                raise InvalidRequest(
                    f"max_tokens is {requested}, above this gateway's limit of "
                    f"{settings.max_tokens_limit}.",
                    param="max_completion_tokens" if kind == "chat" else "max_tokens",
                )
            # Every field the engine cannot honour is refused by name before anything runs.
            body.check(self.state.engine.capabilities)
            resolved = await self._resolve(auth.tenant.id, body.model)
        except RequestError:
            await self.charge_refused(auth)
            raise
        logs.bind(tenant_id=auth.tenant.id, adapter_version=resolved.label)
        sampling = body.sampling(settings.default_max_tokens)
        if isinstance(body, ChatCompletionRequest):
            prompt_chars = sum(len(m["content"]) for m in body.engine_messages())
        else:
            prompt_chars = body.prompt_chars()
        # ~4 characters per token is the usual estimate; real usage is settled afterwards.
        estimate = prompt_chars // 4 + sampling.max_tokens * body.choices()
        try:
            quota = await self.state.limiter.acquire(auth.tenant.id, limits, estimate)
        except RateLimited:
            tenant = metrics.tenant(auth.tenant.id)
            metrics.RATE_LIMITED.labels(tenant).inc()
            metrics.REQUESTS.labels(tenant, resolved.label, "rate_limited").inc()
            raise

        call = _Call(
            id=call_id or completion_id(kind),
            kind=kind,
            auth=auth,
            body=body,
            resolved=resolved,
            estimate=estimate,
            received_at=received_at,
            fingerprint=system_fingerprint(self.state.engine.base_model_name, resolved),
            t_received=t_received,
        )
        version = resolved.version
        gen_request = GenerationRequest(
            request_id=call.id,
            adapter=None
            if version is None
            else AdapterRef(engine_name(version), Path(version.path), version.id, version.use_dora),
            sampling=sampling,
            messages=body.engine_messages() if isinstance(body, ChatCompletionRequest) else None,
            prompt=body.prompt_text() if isinstance(body, CompletionRequest) else None,
            extra=body.engine_extra(),
        )
        self.state.completions.begin(call.id, auth.tenant.id)
        if self.state.pending is not None:  # other replicas accept feedback on it meanwhile
            self.state.pending.mark(auth.tenant.id, call.id)
        headers = self._headers(call)
        if quota is not None:  # OpenAI's x-ratelimit-* headers, after this request's share
            headers.update(quota.headers())
        call.t_engine = time.perf_counter()
        stream: AsyncGenerator[GenerationChunk, None] | None = None
        try:
            # generate() may refuse at once (a prompt too long, a bad chat template); then the
            # first chunk is awaited before any response starts, so load failures and engine
            # outages still get a real status code instead of a broken stream.  Either way the
            # call is finished: logged, settled with the limiter, its in-flight mark cleared.
            stream = self.state.engine.generate(gen_request)
            first = await anext(stream)
        except BaseException as exc:
            if stream is not None:
                await stream.aclose()
            await self._finish(call, limits, exc)
            raise
        if body.stream:
            return EventStreamResponse(
                self._sse(call, first, stream, limits),
                headers={**headers, "cache-control": "no-cache"},
            )

        async def collect() -> None:
            call.absorb(first)
            async for chunk in stream:
                call.absorb(chunk)

        try:
            if disconnected is None:
                await collect()
            elif await _unless_gone(collect(), disconnected):
                # The client hung up: the engine stopped (the stream is closed below); the
                # call is logged as cancelled with the tokens it made, and charged for those.
                await stream.aclose()
                await self._finish(call, limits, asyncio.CancelledError())
                return Response(status_code=499)  # nginx's "client closed request": unread
        except BaseException as exc:
            await self._finish(call, limits, exc)
            raise
        finally:
            await stream.aclose()
        await self._finish(call, limits, None)
        full = call.shape.answers(list(call.answers.values()), call.usage())
        return Response(full.dump(), headers=headers, media_type="application/json")

    async def _resolve(self, tenant_id: str, model: str) -> Resolved:
        async def load() -> Resolved:
            async with self.state.db.session() as session:
                return await resolve(session, tenant_id, model, self.state.engine.base_model_name)

        return await self.state.route_cache.get((tenant_id, model), load)

    def _headers(self, call: _Call) -> dict[str, str]:

        settings = self.state.settings
        token = issue(
            call.id,
            call.auth.tenant.id,
            settings.feedback_token_secret.get_secret_value(),
            settings.feedback_token_ttl_s,
        )
        return {
            ADAPTER_HEADER: call.resolved.label,
            "x-flywheel-completion-id": call.id,
            FEEDBACK_TOKEN_HEADER: token,
        }

    async def _finish(self, call: _Call, limits: Limits, exc: BaseException | None) -> None:
        if exc is not None:
            if isinstance(exc, FlywheelError):
                call.status, call.error_type = "error", exc.error_type
            elif isinstance(exc, Exception):
                call.status, call.error_type = "error", type(exc).__name__
            else:  # CancelledError or GeneratorExit (the stream closed): the client went away
                call.status, call.error_type = "cancelled", "client_disconnected"
        self.state.completions.submit(call.log_row())
        _observe(call)
        self._log(call)
        used = call.prompt_tokens + call.completion_tokens
        await self.state.limiter.settle(call.auth.tenant.id, limits, used - call.estimate)

    def _log(self, call: _Call) -> None:
        """One line per completion; prompt and answer only with FLYWHEEL_LOG_DEBUG_CONTENT."""
        if not log.isEnabledFor(logging.INFO):
            return  # the fields below cost a little on every request
        fields: dict[str, Any] = {
            "completion_id": call.id,
            "status": call.status,
            "error_type": call.error_type,
            "duration_ms": round((time.perf_counter() - call.t_received) * 1000, 2),
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": call.completion_tokens,
        }
        if self.state.settings.log_debug_content:
            body = call.body
            fields["prompt"] = (
                body.engine_messages()
                if isinstance(body, ChatCompletionRequest)
                else body.prompt_text()
            )
            fields["response"] = call.first.content
        log.info("completion %s", call.status, extra=fields)

    def _event(
        self,
        call: _Call,
        text: str | None,
        finish: str | None,
        role: bool = False,
        index: int = 0,
    ) -> str:
        usage = call.usage() if call.body.continuous_usage else None
        return call.shape.event(text, finish, role=role, usage=usage, index=index)

    def _delta_event(self, call: _Call, chunk: GenerationChunk, text_offset: int) -> str:
        """A chunk's text, logprobs and tool-call pieces, as one event of its choice."""
        usage = call.usage() if call.body.continuous_usage else None
        text: str | None = chunk.text
        if not text and call.kind == "chat":
            text = None  # a delta of tool-call pieces or logprobs only has no content
        return call.shape.event(
            text,
            usage=usage,
            index=chunk.index,
            logprobs=chunk.logprobs,
            text_offset=text_offset,
            tool_calls=chunk.tool_calls,
        )

    async def _sse(
        self,
        call: _Call,
        first: GenerationChunk,
        stream: AsyncGenerator[GenerationChunk, None],
        limits: Limits,
    ) -> AsyncGenerator[str, None]:
        exc: BaseException | None = None
        finished = False
        # One write per engine chunk: the events it makes (with the role first, and the
        # finish, usage and [DONE] last) go out together instead of one send each.
        choices = call.body.choices()
        events = (
            [self._event(call, "", None, role=True, index=i) for i in range(choices)]
            if call.kind == "chat"
            else []
        )
        try:
            chunk: GenerationChunk | None = first
            while chunk is not None:
                start = call.absorb(chunk)
                if chunk.text or chunk.logprobs or chunk.tool_calls:
                    events.append(self._delta_event(call, chunk, start))
                if chunk.finish_reason is not None:
                    events.append(self._event(call, None, chunk.finish_reason, index=chunk.index))
                    if call.finished >= choices:
                        break
                if events:
                    yield "".join(events)
                    events.clear()
                chunk = await anext(stream, None)
            if call.body.include_usage:
                events.append(call.shape.usage_event(call.usage()))
            events.append("data: [DONE]\n\n")
            # Logged (journaled) before [DONE] goes out: a stream its client saw complete is
            # never lost to a crash of this process.
            finished = True
            await self._finish(call, limits, None)
            yield "".join(events)
        except FlywheelError as err:
            exc = err
            # Headers are gone; OpenAI clients surface an in-stream error object.
            yield f"data: {json.dumps(err.to_dict())}\n\n"
        except BaseException as err:
            exc = err
            raise
        finally:
            await stream.aclose()
            if not finished:
                await self._finish(call, limits, exc)


async def _unless_gone(work: Awaitable[None], disconnected: Callable[[], Awaitable[None]]) -> bool:
    """Run ``work`` until it finishes (False) or the client disconnects first (True; the work
    is cancelled)."""
    job = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({job, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not job.done():
            job.cancel()
        watch.cancel()
        await asyncio.gather(job, watch, return_exceptions=True)
    if job.cancelled():
        return True
    job.result()  # the generation's own error, if it failed
    return False


def client_gone(request: Request) -> Callable[[], Awaitable[None]]:
    """Returns once the client disconnects (the body has been read, so the next ASGI message
    is the disconnect)."""

    async def wait() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return wait
