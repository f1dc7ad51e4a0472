"""Adapters and their versions in the database: register, list, resolve, route.

Shared by the CLI, the admin API, the retrain module and request routing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from adapters.artifacts import store_adapter
from adapters.validate import BaseSpec, inspect_adapter
from gateway.core.db.models import Adapter, AdapterVersion, RouteEvent, Tenant
from gateway.core.errors import AdapterInvalid, InvalidRequest, NotFound
from gateway.core.ids import new_id

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
SERVABLE_STATES = ("ready", "passed")


@dataclass(frozen=True)
class Resolved:
    """What a request's ``model`` resolved to; ``version`` is None for the bare base."""

    adapter: Adapter | None
    version: AdapterVersion | None

    @property
    def label(self) -> str:
        if self.adapter is None or self.version is None:
            return "base"
        return f"{self.adapter.name}@{self.version.version}"


def engine_name(version: AdapterVersion) -> str:
    """Engine-side name: immutable per version, since engines cache weights by name."""
    return f"fw-{version.id}"


async def add_version(
    session: AsyncSession,
    tenant: Tenant,
    name: str,
    src: Path,
    *,
    base: BaseSpec,
    artifact_dir: Path,
    max_rank: int,
    state: str = "ready",
    parent_version_id: str | None = None,
    meta: dict[str, Any] | None = None,
    allow_dora: bool = True,
    activate_if_first: bool = True,
    actor: str = "system",
) -> AdapterVersion:
    """Validate ``src``, copy it into the artifact store, and record it as the next version."""
    if not _NAME.match(name):
        raise InvalidRequest(f"Invalid adapter name {name!r}", param="name")
    info = inspect_adapter(src, base, max_rank=max_rank)
    if info.use_dora and not allow_dora:
        raise AdapterInvalid(
            "this adapter uses DoRA, which the configured engine (vLLM) cannot serve; "
            "retrain it with use_dora=False or serve it on the embedded engine"
        )
    adapter = await session.scalar(
        select(Adapter)
        .where(Adapter.tenant_id == tenant.id, Adapter.name == name)
        .with_for_update()
    )
    if adapter is None:
        adapter = Adapter(id=new_id("ad"), tenant_id=tenant.id, name=name, route_revision=0)
        session.add(adapter)
        await session.flush()
    digest, stored = store_adapter(src, artifact_dir)
    last = await session.scalar(
        select(func.max(AdapterVersion.version)).where(AdapterVersion.adapter_id == adapter.id)
    )
    version = AdapterVersion(
        id=new_id("av"),
        adapter_id=adapter.id,
        tenant_id=tenant.id,
        version=(last or 0) + 1,
        digest=digest,
        path=str(stored),
        state=state,
        base_model=base.name,
        rank=info.rank,
        alpha=info.alpha,
        use_dora=info.use_dora,
        target_modules=info.target_modules,
        parent_version_id=parent_version_id,
        meta={**(meta or {}), "warnings": info.warnings},
    )
    session.add(version)
    await session.flush()
    if activate_if_first and adapter.active_version_id is None and state in SERVABLE_STATES:
        await set_route(
            session, adapter, version, action="initial", actor=actor, reason="first version"
        )
    return version


async def set_route(
    session: AsyncSession,
    adapter: Adapter,
    version: AdapterVersion,
    *,
    action: str,
    actor: str,
    reason: str,
) -> RouteEvent:
    """Point the adapter at ``version`` and record who did it and why."""
    event = RouteEvent(
        tenant_id=adapter.tenant_id,
        adapter_id=adapter.id,
        action=action,
        from_version_id=adapter.active_version_id,
        to_version_id=version.id,
        actor=actor,
        reason=reason,
    )
    adapter.active_version_id = version.id
    adapter.route_revision = (adapter.route_revision or 0) + 1
    session.add(event)
    await session.flush()
    return event


async def get_adapter(session: AsyncSession, tenant_id: str, name: str) -> Adapter:
    adapter = await session.scalar(
        select(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.name == name)
    )
    if adapter is None:
        raise NotFound(f"The adapter {name!r} does not exist.", param="adapter")
    return adapter


async def get_version(session: AsyncSession, adapter: Adapter, version: int) -> AdapterVersion:
    row = await session.scalar(
        select(AdapterVersion).where(
            AdapterVersion.adapter_id == adapter.id, AdapterVersion.version == version
        )
    )
    if row is None:
        raise NotFound(f"The adapter {adapter.name!r} has no version {version}.", param="version")
    return row


async def list_versions(
    session: AsyncSession, tenant_id: str | None = None
) -> list[tuple[Tenant, Adapter, AdapterVersion]]:
    stmt = (
        select(Tenant, Adapter, AdapterVersion)
        .join(Adapter, Adapter.tenant_id == Tenant.id)
        .join(AdapterVersion, AdapterVersion.adapter_id == Adapter.id)
        .order_by(Tenant.name, Adapter.name, AdapterVersion.version)
    )
    if tenant_id is not None:
        stmt = stmt.where(Tenant.id == tenant_id)
    return [(t, a, v) for t, a, v in (await session.execute(stmt)).all()]


async def tenant_models(
    session: AsyncSession, tenant_id: str
) -> list[tuple[Adapter, AdapterVersion]]:
    """The tenant's adapters that have an active version."""
    stmt = (
        select(Adapter, AdapterVersion)
        .join(AdapterVersion, AdapterVersion.id == Adapter.active_version_id)
        .where(Adapter.tenant_id == tenant_id)
        .order_by(Adapter.name)
    )
    return [(a, v) for a, v in (await session.execute(stmt)).all()]


def parse_model(model: str) -> tuple[str, int | None]:
    """``name`` or ``name@version``."""
    name, sep, ver = model.rpartition("@")
    if not sep:
        return model, None
    if not ver.isdigit():
        raise NotFound(
            f"The model {model!r} does not exist.", param="model", code="model_not_found"
        )
    return name, int(ver)


async def resolve(session: AsyncSession, tenant_id: str, model: str, base_name: str) -> Resolved:
    """Resolve a request's ``model`` within one tenant.

    Another tenant's adapter and a nonexistent one give the same 404: the lookup is scoped to
    the tenant, so the other tenant's rows are never even read.
    """
    if model == base_name:
        return Resolved(None, None)
    name, pinned = parse_model(model)
    not_found = NotFound(
        f"The model {model!r} does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )
    adapter = await session.scalar(
        select(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.name == name)
    )
    if adapter is None:
        raise not_found
    if pinned is None:
        if adapter.active_version_id is None:
            raise not_found
        version = await session.get(AdapterVersion, adapter.active_version_id)
    else:
        version = await session.scalar(
            select(AdapterVersion).where(
                AdapterVersion.adapter_id == adapter.id, AdapterVersion.version == pinned
            )
        )
    # A pinned version must be servable: candidates and rejected versions are never served.
    if version is None or version.state not in SERVABLE_STATES:
        raise not_found
    return Resolved(adapter, version)
