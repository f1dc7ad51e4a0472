"""Adapter operations shared by the CLI and the admin API: add, list, verify."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from adapters.base_models import resolve_base
from adapters.registry import add_version, get_adapter, get_version
from adapters.signing import adapter_signer, check_signature, signature_path_for
from gateway.core import audit
from gateway.core.audit import Actor
from gateway.core.config import Settings
from gateway.core.db.models import AdapterVersion
from gateway.core.db.session import Database
from gateway.core.errors import FlywheelError, InvalidRequest
from gateway.core.tenants import get_tenant
from gateway.engine.capabilities import capabilities_for


@dataclass(frozen=True)
class Added:
    version: AdapterVersion
    signed: bool


async def add_adapter(
    session: AsyncSession,
    settings: Settings,
    *,
    tenant_name: str,
    name: str,
    path: Path,
    sign: bool = False,
    signature: Path | None = None,
    actor: str = "cli",
    remote_addr: str | None = None,
) -> Added:
    """Register PATH as the next version of the tenant's adapter NAME.

    With ``sign`` the stored copy is signed with the ops private key; with ``signature`` a
    bundle made elsewhere is stored beside it and must verify against the trusted public key.
    """

    tenant = await get_tenant(session, tenant_name)
    base = resolve_base(settings)
    version = await add_version(
        session,
        tenant,
        name,
        path,
        base=base.spec(),
        artifact_dir=settings.artifact_dir,
        max_rank=settings.max_lora_rank,
        allow_dora=capabilities_for(settings.engine).dora,
        actor=actor,
    )
    stored = Path(version.path)
    sig_path = signature_path_for(stored)
    if signature is not None:
        shutil.copyfile(signature, sig_path)
        check_signature(settings, stored, version.id)
        version.signature_path = str(sig_path)
    elif sign:
        version.signature_path = str(_signer(settings)(stored))
    elif sig_path.exists():
        version.signature_path = str(sig_path)  # same content was signed before
    audit.record(
        session,
        actor=actor,
        action="adapter.add",
        target=f"{tenant.name}/{name}@{version.version}",
        tenant_id=tenant.id,
        remote_addr=remote_addr,
        detail={"digest": version.digest, "signed": version.signature_path is not None},
    )
    await session.flush()
    return Added(version, version.signature_path is not None)


def _signer(settings: Settings) -> Callable[[Path], Path]:
    signer = adapter_signer(settings)
    if signer is None:
        raise InvalidRequest(
            "no signing key: run `flywheel keys signing-init` or set FLYWHEEL_SIGNING_PRIVATE_KEY"
        )
    return signer


async def verify_version(
    session: AsyncSession, settings: Settings, *, tenant_name: str, name: str, version: int
) -> AdapterVersion:
    """Verify a stored version's signature; raises AdapterLoadRefused when it fails."""
    tenant = await get_tenant(session, tenant_name)
    adapter = await get_adapter(session, tenant.id, name)
    row = await get_version(session, adapter, version)
    check_signature(settings, Path(row.path), row.id)
    return row


async def verify_recorded(
    db: Database, settings: Settings, *, tenant_name: str, name: str, version: int, by: Actor
) -> AdapterVersion:
    """``verify_version`` as an admin action: the outcome, pass or fail, is audited.

    The audit row has a transaction of its own, so a failed check (which raises) is recorded too.
    """
    target = f"{tenant_name}/{name}@{version}"
    try:
        async with db.session() as session:
            row = await verify_version(
                session, settings, tenant_name=tenant_name, name=name, version=version
            )
    except FlywheelError as exc:
        async with db.transaction() as session:
            audit.record_by(
                session,
                by,
                "adapter.verify",
                target,
                None,
                {"verified": False, "error": exc.message},
            )
        raise
    async with db.transaction() as session:
        audit.record_by(session, by, "adapter.verify", target, row.tenant_id, {"verified": True})
    return row


async def sign_version(
    session: AsyncSession, settings: Settings, *, tenant_name: str, name: str, version: int
) -> AdapterVersion:
    """Sign an already stored version (rejected versions are never signed)."""
    tenant = await get_tenant(session, tenant_name)
    row = await get_version(session, await get_adapter(session, tenant.id, name), version)
    if row.state == "rejected":
        raise InvalidRequest(f"{name}@{version} was rejected by the gate; it is never signed")
    row.signature_path = str(_signer(settings)(Path(row.path)))
    audit.record(
        session,
        actor="cli",
        action="adapter.sign",
        target=f"{tenant_name}/{name}@{version}",
        tenant_id=tenant.id,
    )
    return row
