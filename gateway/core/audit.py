"""The audit table: admin actions and refused adapter loads."""

from __future__ import annotations

import asyncio
import getpass
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core import metrics
from gateway.core.db.models import AuditEvent
from gateway.core.db.session import Database

if TYPE_CHECKING:  # the engine layer is above this one
    from gateway.engine.base import AdapterRef

log = logging.getLogger("flywheel.audit")


@dataclass(frozen=True)
class Actor:
    """Who does an admin action, and from where: the audit table's "who" and "from where"."""

    actor: str
    remote_addr: str | None = None


def cli_actor() -> Actor:
    """The operator running a ``flywheel`` command on this host."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        user = "unknown"
    return Actor(f"cli:{user}@{socket.gethostname()}")


def record_by(
    session: AsyncSession,
    by: Actor | None,
    action: str,
    target: str,
    tenant_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """An audit row for ``by`` (nothing when None: internal callers and tests)."""
    if by is not None:
        record(
            session,
            actor=by.actor,
            action=action,
            target=target,
            tenant_id=tenant_id,
            remote_addr=by.remote_addr,
            detail=detail,
        )


def record(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    target: str = "",
    tenant_id: str | None = None,
    remote_addr: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditEvent(
            actor=actor,
            action=action,
            target=target,
            tenant_id=tenant_id,
            remote_addr=remote_addr,
            detail=detail or {},
        )
    )


def refused_load_recorder(
    db: Database, loop: asyncio.AbstractEventLoop
) -> Callable[[AdapterRef, str], None]:
    """A callback for the signature verifier, which may run on an engine thread."""

    async def write(ref: AdapterRef, reason: str) -> None:
        try:
            async with db.transaction() as session:
                record(
                    session,
                    actor="engine",
                    action="adapter.load_refused",
                    target=ref.version_id,
                    detail={
                        "engine_name": ref.engine_name,
                        "path": str(ref.path),
                        "reason": reason,
                    },
                )
        except Exception:
            log.exception("could not write the audit record for a refused load")

    def on_refused(ref: AdapterRef, reason: str) -> None:
        log.warning("refused to load adapter %s: %s", ref.version_id, reason)
        metrics.REFUSED_LOADS.labels("signature").inc()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(write(ref, reason))
        else:
            asyncio.run_coroutine_threadsafe(write(ref, reason), loop)

    return on_refused
