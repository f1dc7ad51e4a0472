"""Tenants and their API keys.  Shared by the CLI, the admin API and request authentication."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.audit import Actor, record_by
from gateway.core.db.models import ApiKey, Tenant
from gateway.core.errors import AuthenticationError, Conflict, InvalidRequest, NotFound
from gateway.core.ids import hash_secret, new_id, new_secret
from gateway.core.time import as_utc

KEY_PREFIX = "fw-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

# Settings a tenant row carries; the admin API and CLI update only these.
TENANT_SETTINGS = {
    "rpm_limit",
    "tpm_limit",
    "store_content",
    "retention_days",
    "cors_origins",
    "auto_promote",
    "retrain_enabled",
    "retrain_min_feedback",
    "retrain_max_age_hours",
    "gate_thresholds",
    "retrain_recipe",
    "disabled",
}


async def create_tenant(
    session: AsyncSession, name: str, *, by: Actor | None = None, **settings: Any
) -> Tenant:
    if not _NAME.match(name):
        raise InvalidRequest(
            f"Invalid tenant name {name!r}: use letters, digits, '.', '_' or '-' (max 100).",
            param="name",
        )
    if await session.scalar(select(Tenant).where(Tenant.name == name)) is not None:
        raise Conflict(f"Tenant {name!r} already exists.")
    tenant = Tenant(
        id=new_id("ten"), name=name, cors_origins=[], gate_thresholds={}, retrain_recipe={}
    )
    _apply(tenant, settings)
    session.add(tenant)
    await session.flush()
    record_by(session, by, "tenant.create", tenant.name, tenant.id, _jsonable(settings))
    return tenant


INT_MAX = 2**31 - 1  # the integer columns (PostgreSQL INTEGER)


def _apply(tenant: Tenant, settings: dict[str, Any]) -> None:
    unknown = set(settings) - TENANT_SETTINGS
    if unknown:
        raise InvalidRequest(f"Unknown tenant setting(s): {', '.join(sorted(unknown))}")
    for key in ("rpm_limit", "tpm_limit", "retention_days", "retrain_min_feedback"):
        value = settings.get(key)
        if isinstance(value, int) and not 1 <= value <= INT_MAX:
            raise InvalidRequest(f"{key} must be between 1 and {INT_MAX}.", param=key)
    for key, value in settings.items():
        setattr(tenant, key, value)


async def update_tenant(
    session: AsyncSession, name_or_id: str, *, by: Actor | None = None, **settings: Any
) -> Tenant:
    tenant = await get_tenant(session, name_or_id)
    _apply(tenant, settings)
    await session.flush()
    record_by(session, by, "tenant.update", tenant.name, tenant.id, _jsonable(settings))
    return tenant


def _jsonable(settings: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v if isinstance(v, int | float | str | bool | list | dict) or v is None else str(v)
        for k, v in settings.items()
    }


async def get_tenant(session: AsyncSession, name_or_id: str) -> Tenant:
    tenant = await session.scalar(
        select(Tenant).where((Tenant.name == name_or_id) | (Tenant.id == name_or_id))
    )
    if tenant is None:
        raise NotFound(f"No tenant named {name_or_id!r}.", param="tenant")
    return tenant


async def list_tenants(session: AsyncSession) -> list[Tenant]:
    return list(await session.scalars(select(Tenant).order_by(Tenant.name)))


async def create_key(
    session: AsyncSession, tenant: Tenant, *, by: Actor | None = None
) -> tuple[ApiKey, str]:
    """Return the stored key row and the plain key, which is shown once and never stored."""
    secret = new_secret(KEY_PREFIX)
    key = ApiKey(
        id=new_id("key"), tenant_id=tenant.id, key_hash=hash_secret(secret), prefix=secret[:10]
    )
    session.add(key)
    await session.flush()
    record_by(session, by, "key.create", key.id, tenant.id)
    return key, secret


async def rotate_keys(
    session: AsyncSession, tenant: Tenant, *, by: Actor | None = None
) -> tuple[ApiKey, str, list[str]]:
    """Issue a new key and revoke every other live key of the tenant."""
    old = list(
        await session.scalars(
            select(ApiKey).where(ApiKey.tenant_id == tenant.id, ApiKey.revoked_at.is_(None))
        )
    )
    key, secret = await create_key(session, tenant)
    now = datetime.now(UTC)
    for k in old:
        k.revoked_at = now
    await session.flush()
    revoked = [k.id for k in old]
    record_by(session, by, "key.rotate", key.id, tenant.id, {"revoked": revoked})
    return key, secret, revoked


async def revoke_key(session: AsyncSession, key_id: str, *, by: Actor | None = None) -> ApiKey:
    key = await session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"No key {key_id!r}.", param="key_id")
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
        await session.flush()
    record_by(session, by, "key.revoke", key_id, key.tenant_id)
    return key


async def list_keys(session: AsyncSession, tenant: Tenant) -> list[ApiKey]:
    return list(
        await session.scalars(
            select(ApiKey).where(ApiKey.tenant_id == tenant.id).order_by(ApiKey.created_at)
        )
    )


async def authenticate(session: AsyncSession, secret: str) -> tuple[Tenant, ApiKey]:
    row = (
        await session.execute(
            select(ApiKey, Tenant)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(ApiKey.key_hash == hash_secret(secret))
        )
    ).first()
    if row is None:
        raise AuthenticationError("Incorrect API key provided.")
    key, tenant = row
    if key.revoked_at is not None:
        raise AuthenticationError("This API key has been revoked.", code="revoked_api_key")
    if key.expires_at is not None and as_utc(key.expires_at) <= datetime.now(UTC):
        # The same code as a revocation (docs/api.md): an expired key is revoked by time.
        raise AuthenticationError("This API key has expired.", code="revoked_api_key")
    if tenant.disabled:
        raise AuthenticationError("This tenant is disabled.", code="tenant_disabled")
    return tenant, key
