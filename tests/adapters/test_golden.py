"""Golden sets are frozen: hashed, versioned (never edited), and chosen by the round's cut-off."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from adapters.golden import add_golden_set, golden_for_gate, parse_items
from adapters.registry import get_adapter
from gateway.core.db.models import GoldenSet
from gateway.core.db.session import Database
from gateway.core.errors import InvalidRequest, NotFound
from tools.harness import make_settings, seed_tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")
V1 = '{"prompt": "Refund policy?", "reference": "Five days.", "checks": [{"type": "contains", "value": "days"}]}'
V2 = '{"prompt": "Refund policy?", "reference": "Five business days."}'


def test_items_are_validated_with_their_line() -> None:
    assert parse_items(V1 + "\n\n" + V2)[1]["reference"] == "Five business days."
    for bad, why in [
        ("not json", "line 1: not JSON"),
        ('{"reference": "x"}', "exactly one of 'prompt' or 'messages'"),
        ('{"prompt": "p"}', "give a 'reference' answer, 'checks', or both"),
        ('{"prompt": "p", "checks": [{"type": "regex", "pattern": "("}]}', "bad regex"),
        ('{"prompt": "p", "checks": [{"type": "sentiment"}]}', "unknown check"),
        ("", "empty"),
    ]:
        with pytest.raises(InvalidRequest, match=why):
            parse_items(bad)


async def test_versions_are_frozen_and_chosen_by_the_cutoff(
    db: Database, database_url: str, tmp_path: Path, demo_base: Path, demo_adapters: list[Path]
) -> None:
    settings = make_settings(tmp_path, database_url, demo_base)
    tenant = await seed_tenant(db, settings, f"g-{uuid.uuid4().hex[:8]}", {"bot": demo_adapters[0]})
    async with db.transaction() as session:
        adapter = await get_adapter(session, tenant.id, "bot")
        first = await add_golden_set(session, adapter, parse_items(V1))
        again = await add_golden_set(session, adapter, parse_items(V1))  # same content: reused
        second = await add_golden_set(session, adapter, parse_items(V2))  # supersedes, no edit
    assert (first.version, again.id, second.version) == (1, first.id, 2)
    assert len(first.content_hash) == 64 and first.content_hash != second.content_hash
    # Give them distinct creation times, as sets registered a day apart would have.
    day = datetime.now(UTC) - timedelta(days=1)
    async with db.transaction() as session:
        await session.execute(
            update(GoldenSet).where(GoldenSet.id == first.id).values(created_at=day)
        )
    async with db.session() as session:
        # A round whose data was cut off before the second set existed is gated on the first.
        chosen = await golden_for_gate(session, adapter.id, day + timedelta(hours=1))
        assert chosen.version == 1
        assert (await golden_for_gate(session, adapter.id, None)).version == 2
        with pytest.raises(NotFound, match="no golden set before the round's data cut-off"):
            await golden_for_gate(session, adapter.id, day - timedelta(hours=1))
    async with db.transaction() as session:  # an edit behind the registry's back
        await session.execute(
            update(GoldenSet)
            .where(GoldenSet.id == second.id)
            .values(items=parse_items(V1.replace("Five", "Six")))
        )
    async with db.session() as session:
        with pytest.raises(InvalidRequest, match="does not match its frozen hash"):
            await golden_for_gate(session, adapter.id, None)
