"""Admin tokens: separate from tenant keys, stored hashed, rotatable."""

from __future__ import annotations

import hmac
import os
from datetime import UTC, datetime
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.config import Settings
from gateway.core.db.models import AdminToken
from gateway.core.errors import AuthenticationError
from gateway.core.ids import hash_secret, new_id, new_secret

ADMIN_PREFIX = "fwadm-"


async def create_admin_token(session: AsyncSession) -> tuple[AdminToken, str]:
    secret = new_secret(ADMIN_PREFIX)
    row = AdminToken(id=new_id("adm"), token_hash=hash_secret(secret))
    session.add(row)
    await session.flush()
    return row, secret


async def rotate_admin_tokens(session: AsyncSession) -> tuple[AdminToken, str]:
    """A new token; every other stored token is revoked."""
    now = datetime.now(UTC)
    for row in await session.scalars(select(AdminToken).where(AdminToken.revoked_at.is_(None))):
        row.revoked_at = now
    return await create_admin_token(session)


def matches_configured(secret: str, configured: SecretStr | None) -> bool:
    """``secret`` is the token set in the environment (compared in constant time)."""
    return configured is not None and hmac.compare_digest(
        secret.encode(), configured.get_secret_value().encode()
    )


async def check_admin_token(session: AsyncSession, settings: Settings, secret: str) -> str:
    """Return the actor name for a valid admin token; raise AuthenticationError otherwise."""
    if matches_configured(secret, settings.admin_token):
        return "admin:env"
    row = await session.scalar(
        select(AdminToken).where(AdminToken.token_hash == hash_secret(secret))
    )
    if row is None or row.revoked_at is not None:
        raise AuthenticationError("Invalid admin token.", code="invalid_admin_token")
    return f"admin:{row.id}"


def dev_token_path(settings: Settings) -> Path:
    return settings.data_dir / "admin-token"


async def ensure_dev_admin_token(session: AsyncSession, settings: Settings) -> None:
    """In development, keep one admin token in ``<data_dir>/admin-token`` (mode 0600) so the
    local CLI can reach the admin API; production operators create tokens explicitly."""
    path = dev_token_path(settings)
    if settings.environment != "development":
        return
    if path.exists():
        # The file outlived its database (a new FLYWHEEL_DATABASE_URL): register it again.
        digest = hash_secret(path.read_text().strip())
        if await session.scalar(select(AdminToken).where(AdminToken.token_hash == digest)) is None:
            session.add(AdminToken(id=new_id("adm"), token_hash=digest))
        return
    _, secret = await create_admin_token(session)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fp:
        fp.write(secret + "\n")


def admin_token_location(settings: Settings) -> str:
    """Where an operator finds an admin token, for the start-up log: a place, never the token."""
    places = []
    if settings.admin_token is not None:
        places.append("FLYWHEEL_ADMIN_TOKEN")
    if settings.environment == "development":
        places.append(f"the file {dev_token_path(settings)}")
    if not places:
        return "none is kept here: create one with `flywheel admin token-create`"
    return " or ".join(places)


def local_admin_token(settings: Settings) -> str | None:
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    path = dev_token_path(settings)
    return path.read_text().strip() if path.exists() else None
