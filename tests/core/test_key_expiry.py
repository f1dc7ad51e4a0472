"""``api_keys.expires_at``, on SQLite and PostgreSQL: ``tenants.authenticate`` refuses a key
past its expiry (401, as a revoked key) though nobody revoked it, and accepts one before it.

The expiry is set in the database (an hour either side of now) rather than waited for.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from gateway.core.db.models import ApiKey
from gateway.core.db.session import Database
from gateway.core.errors import AuthenticationError
from gateway.core.ids import hash_secret, new_id
from gateway.core.tenants import authenticate, create_key, create_tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _key(db: Database, expires_at: datetime | None) -> str:
    async with db.transaction() as session:
        tenant = await create_tenant(session, new_id("exp"))
        key, secret = await create_key(session, tenant)
        key.expires_at = expires_at
    return secret


async def test_an_expired_key_is_refused_and_an_unexpired_one_works(db: Database) -> None:
    now = datetime.now(UTC)
    expired = await _key(db, now - timedelta(hours=1))
    live = await _key(db, now + timedelta(hours=1))
    forever = await _key(db, None)
    async with db.session() as session:
        with pytest.raises(AuthenticationError) as refused:
            await authenticate(session, expired)
        _, key = await authenticate(session, live)
        assert key.revoked_at is None and key.expires_at is not None
        await authenticate(session, forever)
    assert refused.value.status_code == 401
    assert refused.value.code == "revoked_api_key"
    assert "expired" in refused.value.message
    # Nobody revoked it: expiry alone refused it.
    async with db.session() as session:
        row = await session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_secret(expired)))
    assert row is not None and row.revoked_at is None
