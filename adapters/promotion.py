"""Promotion and rollback as a hot-swap, with no failed request.

The procedure, for any engine:

1. load the new version under its own immutable engine name (the verifier checks its
   signature first; a refused or broken load raises and the old route keeps serving);
2. probe it with a one-token request;
3. flip the route in one transaction (the adapter row is locked, so concurrent promotes of the
   same adapter are serialized across processes too; an in-process lock orders them here);
4. let requests in flight on the old version finish: each request resolved its version before
   it started and holds it to the end, and the engine's unload waits for in-flight requests,
   so the old version is unloaded only after the last of them (drain).

Every replica reads the route per request (``route_cache_ttl_s`` = 0 by default), so all
gateway replicas serve the new version from their next request; with a cache TTL set they
catch up within that TTL.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from adapters.registry import SERVABLE_STATES, engine_name, get_adapter, get_version, set_route
from gateway.core import audit, metrics
from gateway.core.db.models import Adapter, AdapterVersion, RouteEvent
from gateway.core.db.session import Database
from gateway.core.errors import Conflict, EngineError, FlywheelError
from gateway.core.tenants import get_tenant
from gateway.engine.base import AdapterRef, Engine, GenerationRequest, SamplingParams

log = logging.getLogger("flywheel.promotion")


def adapter_ref(version: AdapterVersion) -> AdapterRef:
    return AdapterRef(engine_name(version), Path(version.path), version.id, version.use_dora)


@dataclass(frozen=True)
class SwapResult:
    action: str
    tenant: str
    adapter: str
    from_version: int | None
    to_version: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


async def rollback_target(session: AsyncSession, adapter: Adapter) -> AdapterVersion | None:
    """Where a rollback of ``adapter`` goes now: the newest route change away from a version
    other than the serving one, if that version is still servable."""
    events = await session.scalars(
        select(RouteEvent).where(RouteEvent.adapter_id == adapter.id).order_by(RouteEvent.id.desc())
    )
    for event in events:
        candidate = event.from_version_id
        if candidate and candidate != adapter.active_version_id:
            version = await session.get(AdapterVersion, candidate)
            if version is not None and version.state in SERVABLE_STATES:
                return version
    return None


class Promoter:
    """Runs promotions against one engine; shared by the admin API, the CLI and the worker."""

    def __init__(self, db: Database, engine: Engine, probe_timeout_s: float = 60.0) -> None:
        self.db = db
        self.engine = engine
        self.probe_timeout_s = probe_timeout_s
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._drains: dict[str, asyncio.Task[None]] = {}  # engine name -> pending unload

    async def promote(
        self,
        tenant: str,
        adapter: str,
        version: int,
        *,
        actor: str,
        reason: str = "",
        remote_addr: str | None = None,
    ) -> SwapResult:
        async with self.db.session() as session:
            t = await get_tenant(session, tenant)
            a = await get_adapter(session, t.id, adapter)
            target = await get_version(session, a, version)
        return await self._swap(
            a, target, action="promote", actor=actor, reason=reason, remote_addr=remote_addr
        )

    async def rollback(
        self,
        tenant: str,
        adapter: str,
        *,
        actor: str,
        reason: str = "",
        remote_addr: str | None = None,
    ) -> SwapResult:
        """Go back to the version that served before the current one (a servable one)."""
        async with self.db.session() as session:
            t = await get_tenant(session, tenant)
            a = await get_adapter(session, t.id, adapter)
            target = await self._previous(a)
        return await self._swap(
            a, target, action="rollback", actor=actor, reason=reason, remote_addr=remote_addr
        )

    async def _previous(self, adapter: Adapter) -> AdapterVersion:
        async with self.db.session() as session:
            version = await rollback_target(session, adapter)
        if version is not None:
            return version
        raise Conflict(f"adapter {adapter.name!r} has no earlier servable version to roll back to")

    async def _swap(
        self,
        adapter: Adapter,
        target: AdapterVersion,
        *,
        action: str,
        actor: str,
        reason: str,
        remote_addr: str | None,
    ) -> SwapResult:
        if target.state not in SERVABLE_STATES:
            raise Conflict(
                f"{adapter.name}@{target.version} is {target.state!r}: only versions that passed "
                "the gate (or were added by hand) can be served"
            )
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with self._locks[adapter.id]:
            ref = adapter_ref(target)
            # Going back to a version whose drain has not finished: it stays loaded.
            pending = self._drains.pop(ref.engine_name, None)
            if pending is not None:
                pending.cancel()
            await self.engine.load_adapter(ref)
            await self._probe(ref)
            async with self.db.transaction() as session:
                locked = await session.scalar(
                    select(Adapter).where(Adapter.id == adapter.id).with_for_update()
                )
                assert locked is not None
                old_id = locked.active_version_id
                old = await session.get(AdapterVersion, old_id) if old_id else None
                if old_id == target.id:
                    return SwapResult(
                        action, adapter.tenant_id, adapter.name, target.version, target.version, 0.0
                    )
                await set_route(session, locked, target, action=action, actor=actor, reason=reason)
                audit.record(
                    session,
                    actor=actor,
                    action=f"adapter.{action}",
                    target=f"{adapter.name}@{target.version}",
                    tenant_id=adapter.tenant_id,
                    remote_addr=remote_addr,
                    detail={
                        "from": old.version if old else None,
                        "to": target.version,
                        "reason": reason,
                    },
                )
            seconds = loop.time() - started
            metrics.PROMOTIONS.labels(action).inc()
            if old is not None:
                self._drain(adapter_ref(old))
        log.info(
            "%s %s -> %s@%d in %.3fs",
            action,
            old.version if old else None,
            adapter.name,
            target.version,
            seconds,
        )
        return SwapResult(
            action,
            adapter.tenant_id,
            adapter.name,
            old.version if old else None,
            target.version,
            seconds,
        )

    async def _probe(self, ref: AdapterRef) -> None:
        request = GenerationRequest(
            request_id=f"probe-{ref.version_id}",
            adapter=ref,
            sampling=SamplingParams(max_tokens=1, temperature=0.0),
            messages=[{"role": "user", "content": "ping"}],
        )
        try:
            async with asyncio.timeout(self.probe_timeout_s):
                finished = False
                async for chunk in self.engine.generate(request):
                    finished = finished or chunk.finish_reason is not None
        except FlywheelError:
            raise
        except Exception as exc:
            raise EngineError(f"probe request to the new version failed: {exc}") from exc
        if not finished:
            raise EngineError("probe request to the new version did not finish")

    def _drain(self, old: AdapterRef) -> None:
        """Unload the old version once its in-flight requests are done (the engine waits)."""

        async def unload() -> None:
            try:
                await self.engine.unload_adapter(old.engine_name)
            except Exception:
                log.exception(
                    "unloading %s after a swap failed; LRU eviction will reclaim it",
                    old.engine_name,
                )

        task = asyncio.get_running_loop().create_task(unload())
        self._drains[old.engine_name] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._drains.get(old.engine_name) is done:
                del self._drains[old.engine_name]

        task.add_done_callback(forget)

    async def wait_drained(self) -> None:
        if self._drains:
            await asyncio.gather(*self._drains.values(), return_exceptions=True)
