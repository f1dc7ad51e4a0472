"""The vLLM engine: route each request to one of several vLLM servers, loading adapters there.

vLLM replicas (FLYWHEEL_VLLM_URLS) serve the OpenAI API; adapters are loaded at run time
through ``/v1/load_lora_adapter`` (the servers run with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).
This module decides where each request runs (replicas.place), keeps each replica within its
adapter budget (residency.Residency), loads and evicts through the HTTP API
(vllm_client.VLLMClient), and turns the upstream SSE stream into GenerationChunks.  The
gateway formats the client's response itself, so ids, errors and headers match the embedded
engine.  Policies and failure handling are written down in docs/vllm.md.

Failure handling: a replica that refuses a connection, drops one, or fails a health check
leaves the rotation; the request goes to another replica when no token has reached the
client yet, otherwise it ends with an in-stream error.  The health loop puts replicas back,
rebuilding their residency from ``/v1/models``.  With no replica left, EngineUnavailable (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from gateway.core import metrics
from gateway.core.config import Settings
from gateway.core.errors import (
    AdapterLoadRefused,
    EngineError,
    EngineUnavailable,
    FlywheelError,
    InvalidRequest,
)
from gateway.engine.base import (
    AdapterRef,
    GenerationChunk,
    GenerationRequest,
    ReplicaStats,
    Verifier,
)
from gateway.engine.capabilities import VLLM
from gateway.engine.replicas import Replica, missing_routes_message, place
from gateway.engine.residency import Residency
from gateway.engine.vllm_client import (
    Kind,
    ReplicaDown,
    UpstreamError,
    VLLMClient,
    relay,
    upstream_body,
)

log = logging.getLogger("flywheel.engine.vllm")


class _PlaceAgain(Exception):
    """The slot reserved for an adapter vanished before its load; decide again."""


class VLLMEngine:
    """Implements gateway.engine.base.Engine on top of vLLM OpenAI-compatible servers."""

    capabilities = VLLM  # gateway/engine/capabilities.py says why each field is there

    def __init__(
        self,
        settings: Settings,
        *,
        verifier: Verifier | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        hot_threshold: int = 32,
        placement_wait_s: float = 30.0,
    ) -> None:
        urls = settings.vllm_url_list
        if not urls:
            raise EngineError("FLYWHEEL_ENGINE=vllm needs FLYWHEEL_VLLM_URLS (comma separated)")
        self._configured_name = settings.base_model_name
        self._named = False
        self.base_model_name = settings.base_model_name or settings.base_model or "base"
        key = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None
        control_timeout = max(1.0, min(5.0, settings.vllm_health_interval_s))
        self._replicas = [
            Replica(
                url,
                VLLMClient(
                    url,
                    api_key=key,
                    timeout_s=settings.vllm_request_timeout_s,
                    control_timeout_s=control_timeout,
                    transport=transport,
                ),
                Residency(settings.vllm_max_adapters_per_replica),
            )
            for url in urls
        ]
        self._verifier = verifier
        self._interval = settings.vllm_health_interval_s
        self._hot_threshold = hot_threshold
        self._placement_wait_s = placement_wait_s
        self._changed = asyncio.Event()
        self._health_task: asyncio.Task[None] | None = None
        self._started = False
        # Metrics.
        self.unloads = 0
        self.decision_seconds: deque[float] = deque(maxlen=100_000)

    @property
    def replicas(self) -> list[Replica]:
        return list(self._replicas)

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Probe every replica, rebuild residency from their /v1/models, start health checks."""
        if self._started:
            return
        await asyncio.gather(*(self._check(r) for r in self._replicas))
        if not any(r.usable for r in self._replicas):
            missing = [r.url for r in self._replicas if r.healthy and r.lora_api is False]
            if missing:
                raise EngineError(missing_routes_message(", ".join(missing)))
            log.warning(
                "no vLLM replica is usable yet (%s); requests get 503 until one is",
                "; ".join(f"{r.url}: {r.last_error}" for r in self._replicas),
            )
        self._started = True
        self._health_task = asyncio.create_task(self._health_loop(), name="vllm-health")

    async def stop(self) -> None:
        self._started = False
        task, self._health_task = self._health_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for replica in self._replicas:
            replica.healthy = False
            await replica.client.aclose()

    def ready(self) -> bool:
        return self._started and any(r.usable for r in self._replicas)

    def loaded_adapters(self) -> list[str]:
        names = {n for r in self._replicas if r.usable for n in r.residency.loaded()}
        return sorted(names)

    @property
    def loads(self) -> int:
        """Adapter loads over all replicas (each replica counts its own, for the metrics)."""
        return sum(r.loads for r in self._replicas)

    @property
    def evictions(self) -> int:
        return sum(r.evictions for r in self._replicas)

    def stats(self) -> dict[str, ReplicaStats]:
        """Residency per replica, keyed by its URL (the ``replica`` label of the metrics)."""
        return {r.url: ReplicaStats(len(r.residency), r.loads, r.evictions) for r in self._replicas}

    # --- health --------------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await asyncio.gather(*(self._check(r) for r in self._replicas))

    async def _check(self, replica: Replica) -> None:
        came_back = await replica.check()
        if replica.usable and not self._configured_name and not self._named and replica.base_name:
            # Clients call the bare base what the first replica calls it (unless configured).
            self.base_model_name, self._named = replica.base_name, True
        if came_back:
            self._wake()

    def _wake(self) -> None:
        """Tell placement waiters that something changed (an adapter went idle, a replica up)."""
        self._changed.set()
        self._changed = asyncio.Event()

    # --- adapters ------------------------------------------------------------------------------

    async def load_adapter(self, adapter: AdapterRef) -> None:
        """Make ``adapter`` resident on a replica (verified first); idempotent."""
        replica = await self._acquire(adapter, set())
        self._release(replica, adapter.engine_name)

    async def unload_adapter(self, engine_name: str) -> None:
        """Unload from every replica, each once its requests for it have finished."""
        for replica in self._replicas:
            res = replica.residency
            if engine_name not in res:
                continue
            async with res.lock(engine_name):
                res.drain(engine_name)  # no new request is placed on it from here on
            try:
                await self._unload_when_idle(replica, engine_name)
            finally:
                res.drained(engine_name)

    async def _unload_when_idle(self, replica: Replica, engine_name: str) -> None:
        res = replica.residency
        while True:
            # Wait *outside* the name's lock: a request placed for the name counts itself in
            # flight before it may wait on that lock to load it again, so waiting under the
            # lock deadlocks.
            while res.in_flight(engine_name) and engine_name not in res:
                await self._changed.wait()
            async with res.lock(engine_name):
                if engine_name in res:
                    return  # wanted again and (re)loaded meanwhile: keep it
                if res.in_flight(engine_name):
                    continue
                if not replica.healthy:
                    return
                try:
                    await replica.client.unload_lora(engine_name)
                    self.unloads += 1
                except ReplicaDown as exc:
                    replica.mark_down(str(exc))
                except UpstreamError as exc:
                    log.warning("unloading %s from %s failed: %s", engine_name, replica.url, exc)
                return

    async def _acquire(self, adapter: AdapterRef | None, exclude: set[str]) -> Replica:
        """A replica for the request, counted in flight, with ``adapter`` loaded there."""
        if adapter is not None and adapter.use_dora:
            metrics.REFUSED_LOADS.labels("engine").inc()
            raise AdapterLoadRefused(
                f"adapter version {adapter.version_id} uses DoRA, which vLLM cannot serve "
                "('vLLM does not yet support DoRA'); retrain it with use_dora=False or serve it "
                "on the embedded engine"
            )
        name = adapter.engine_name if adapter is not None else None
        while True:
            replica = await self._place(adapter, exclude)
            if adapter is None:
                return replica
            try:
                await self._ensure_loaded(replica, adapter)
                return replica
            except ReplicaDown as exc:
                self._release(replica, name)
                replica.mark_down(str(exc))
                exclude.add(replica.url)
            except _PlaceAgain:
                self._release(replica, name)
            except BaseException:
                self._release(replica, name)
                raise

    async def _place(self, adapter: AdapterRef | None, exclude: set[str]) -> Replica:
        """Pick a replica (reserving a slot when the adapter must be loaded) or wait for one."""
        name = adapter.engine_name if adapter is not None else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._placement_wait_s
        while True:
            started = time.perf_counter()
            placement = place(
                self._replicas, name, hot_threshold=self._hot_threshold, exclude=exclude
            )
            if placement is not None:
                replica = placement.replica
                if placement.load and adapter is not None and name is not None:
                    replica.residency.reserve(name, str(adapter.path))
                replica.begin(name)
                self.decision_seconds.append(time.perf_counter() - started)
                return replica
            if not any(r.usable and r.url not in exclude for r in self._replicas):
                raise EngineUnavailable(
                    f"No vLLM replica is available ({len(self._replicas)} configured, none in "
                    "rotation).",
                    retry_after=max(1.0, self._interval),
                )
            # Every replica is at its budget with every adapter busy: wait for one to go idle.
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise EngineUnavailable(
                    "Every vLLM replica is at its adapter budget with all adapters in use.",
                    retry_after=1.0,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def _release(self, replica: Replica, name: str | None) -> None:
        if replica.end(name):
            self._wake()

    async def _ensure_loaded(self, replica: Replica, adapter: AdapterRef) -> None:
        name, path = adapter.engine_name, str(adapter.path)
        res = replica.residency
        entry = res.get(name)
        if entry is not None and entry.loaded and entry.verified and entry.path == path:
            return
        # One load per (replica, name): concurrent first requests queue here and find it loaded.
        async with res.lock(name):
            entry = res.get(name)
            if entry is None:  # evicted or found missing since placement
                if not res.has_room():
                    raise _PlaceAgain
                entry = res.reserve(name, path)
            if entry.loaded and entry.path == path:
                if not entry.verified:  # adopted from /v1/models: check it like a load
                    await self._verify(adapter)
                    res.confirm(name, verified=True)
                return
            try:
                if entry.loaded:
                    # The replica has this name from another path; names are immutable per
                    # version, so this is not our artifact: replace it.
                    log.warning("%s on %s came from %s; reloading", name, replica.url, entry.path)
                    res.drop(name)
                    entry = res.reserve(name, path)
                    await replica.client.unload_lora(name)
                for victim in entry.evict_first:
                    await self._evict(replica, victim)
                await self._verify(adapter)
                await self._load(replica, adapter)
            except BaseException:
                res.drop(name)
                raise
            res.confirm(name, verified=True)

    async def _verify(self, adapter: AdapterRef) -> None:
        if self._verifier is not None:
            await asyncio.to_thread(self._verifier, adapter)

    async def _evict(self, replica: Replica, victim: str) -> None:
        res = replica.residency
        async with res.lock(victim):
            if victim in res:
                return  # wanted again and reloaded meanwhile
            try:
                await replica.client.unload_lora(victim)
                replica.evictions += 1
            except UpstreamError as exc:
                log.warning("evicting %s from %s failed: %s", victim, replica.url, exc)

    async def _load(self, replica: Replica, adapter: AdapterRef) -> None:
        name, path = adapter.engine_name, str(adapter.path)
        started = time.perf_counter()
        try:
            await replica.client.load_lora(name, path)
        except UpstreamError as exc:
            if exc.route_missing:
                log.error(missing_routes_message(replica.url))
                replica.lora_api = False
                raise ReplicaDown(missing_routes_message(replica.url)) from exc
            if exc.status == 400 and (await replica.client.models()).adapters.get(name) == path:
                return  # "has already been loaded": /v1/models confirms it is ours
            error = self._load_error(replica, adapter, exc)
            if isinstance(error, AdapterLoadRefused):
                metrics.REFUSED_LOADS.labels("engine").inc()
            raise error from exc
        replica.loads += 1
        metrics.ADAPTER_LOAD_SECONDS.labels(replica.url).observe(time.perf_counter() - started)

    @staticmethod
    def _load_error(replica: Replica, adapter: AdapterRef, exc: UpstreamError) -> FlywheelError:
        where = f"vLLM at {replica.url}"
        if exc.status == 404:
            return AdapterLoadRefused(
                f"{where} found no adapter at {adapter.path} ({exc.message}); the artifact "
                "directory must be readable by vLLM at the same path"
            )
        if exc.status in (400, 422, 500):
            # 400 in most vLLM versions, 500 in the newest, for rank / module / DoRA refusals.
            return AdapterLoadRefused(
                f"{where} refused adapter version {adapter.version_id}: "
                f"{worker_reason(exc.message)}"
            )
        if exc.status in (401, 403):
            return EngineError(f"{where} rejected the API key (FLYWHEEL_VLLM_API_KEY)")
        return EngineError(f"{where} could not load adapter {adapter.version_id}: {exc}")

    # --- generation ----------------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Stream deltas.  Closing the iterator (client gone) closes the upstream stream."""
        return self._generate(request)

    async def _generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        adapter = request.adapter
        name = adapter.engine_name if adapter is not None else None
        kind: Kind = "chat" if request.messages is not None else "text"
        body = upstream_body(request)
        exclude: set[str] = set()
        lost = 0
        while True:
            replica = await self._acquire(adapter, exclude)
            sent = False
            try:
                body["model"] = name if name is not None else replica.base_name
                chunks = relay(replica.client.stream(kind, body), kind, int(body.get("n", 1)))
                guarded = unless_down(chunks, replica)
                async with contextlib.aclosing(chunks), contextlib.aclosing(guarded):
                    async for chunk in guarded:
                        sent = True
                        yield chunk
                return
            except ReplicaDown as exc:
                replica.mark_down(str(exc))
                if sent:
                    raise EngineError(
                        "The engine replica failed while streaming this answer."
                    ) from exc
                exclude.add(replica.url)  # nothing reached the client: try another replica
            except UpstreamError as exc:
                if exc.status == 404 and name is not None and not exc.route_missing and lost < 2:
                    # The replica lost the adapter (restarted between two health checks).
                    lost += 1
                    replica.residency.drop(name)
                    continue
                raise generation_error(replica, exc, body) from exc
            finally:
                self._release(replica, name)


async def unless_down(
    chunks: AsyncGenerator[GenerationChunk, None], replica: Replica
) -> AsyncGenerator[GenerationChunk, None]:
    """``chunks``, or ReplicaDown as soon as a health check takes ``replica`` out of rotation.

    A frozen replica (stopped, or wedged) keeps the connection open and sends nothing; without
    this a request waits for the read timeout, minutes by default.  Before any token was sent
    the caller retries on another replica; mid-answer the client gets an error, not a hang.

    One waiter per stream, not per chunk: when the replica goes down while this stream waits
    on it, the waiter cancels the task reading (its CancelledError becomes ReplicaDown here);
    while the consumer has a chunk, the next read raises at once.  A Task and an
    ``asyncio.wait`` per chunk cost 7 us each, a fifth of the gateway's CPU per token (issue 17).
    """
    reader: asyncio.Task[Any] | None = None  # the task inside anext(chunks), else None
    cancelled = False

    def went_down(_: object) -> None:
        nonlocal cancelled
        if reader is not None and not cancelled:
            cancelled = True
            reader.cancel()

    waiter = asyncio.ensure_future(replica.went_down.wait())
    waiter.add_done_callback(went_down)
    try:
        while True:
            if waiter.done():
                raise ReplicaDown(f"{replica.url} left rotation: {replica.last_error}")
            reader = asyncio.current_task()
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                assert reader is not None
                if cancelled and reader.uncancel() == 0:
                    raise ReplicaDown(
                        f"{replica.url} left rotation: {replica.last_error}"
                    ) from None
                raise  # cancelled from outside too (the client hung up, shutdown)
            finally:
                reader = None
            yield chunk
    finally:
        waiter.remove_done_callback(went_down)
        waiter.cancel()


def worker_reason(message: str) -> str:
    """vLLM's reason without its wrapping for a failure inside its worker process.

    vLLM 0.32 answers a refused load with HTTP 500 "Call to add_lora method failed: Worker
    failed with error 'LoRA rank 32 is greater than max_lora_rank 16.', please check the stack
    trace above for the root cause": the stack trace is in vLLM's log, not the client's.
    """
    found = _WORKER_ERROR.search(message)
    return found.group(1) if found else message


def _named_field(message: str, sent: dict[str, Any] | None) -> str | None:
    """The field of the request that vLLM's message names, for a 400 that has no ``param``
    (many of vLLM's checks raise a plain ValueError: "min_p must be in [0, 1], got 1.5")."""
    # vLLM's messages open with their subject ("min_tokens must be ... max_tokens=16"), so the
    # field named first is the one to blame.
    found = [
        (m.start(), name)
        for name in sent or ()
        if name not in _NEVER_BLAMED
        and (m := re.search(rf"\b{re.escape(name)}\b", message)) is not None
    ]
    return min(found)[1] if found else None


# Fields the gateway always sends; a message that names them blames something else first.
_NEVER_BLAMED = frozenset({"model", "stream", "stream_options", "messages", "prompt"})
# vLLM's words for a prompt plus max_tokens over max_model_len ("This model's maximum context
# length is 2048 tokens. However, ..."); it sends no code of its own for it.
_CONTEXT_EXCEEDED = re.compile(r"maximum context length", re.I)
_WORKER_ERROR = re.compile(r"Worker failed with error '(.+)', please check the stack trace", re.S)


def generation_error(
    replica: Replica, exc: UpstreamError, sent: dict[str, Any] | None = None
) -> FlywheelError:
    """Upstream errors before the first token, as the gateway's own errors."""
    if exc.status == 400:
        # The request itself: prompt longer than the context, bad sampling values.
        if _CONTEXT_EXCEEDED.search(exc.message):
            return InvalidRequest(
                exc.message,
                param="messages" if sent and "messages" in sent else "prompt",
                code="context_length_exceeded",
            )
        return InvalidRequest(exc.message, param=exc.param or _named_field(exc.message, sent))
    if exc.status in (401, 403):
        return EngineError(f"vLLM at {replica.url} rejected the API key (FLYWHEEL_VLLM_API_KEY)")
    return EngineError(f"vLLM at {replica.url} failed the request: {exc}")
