"""Golden sets: prompts with expected behaviour, frozen by content hash.

A golden set is never edited; new content is a new version.  A round may only be gated on a
golden set created before the round's data cut-off, so the gate cannot be tuned to the data.

File format (JSONL, one item per line)::

    {"prompt": "..."}  or  {"messages": [{"role": "user", "content": "..."}]}
    + optional "reference": "the answer we expect" (scored by negative log-likelihood)
    + optional "checks": [{"type": "json"}, {"type": "json_schema", "schema": {...}},
                          {"type": "contains", "value": "..."}, {"type": "not_contains", ...},
                          {"type": "regex", "pattern": "..."}, {"type": "max_length", "value": N}]
      each check may carry "hard": true (any drop on a hard check rejects the candidate)
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from adapters.registry import get_adapter
from gateway.core import audit
from gateway.core.audit import Actor
from gateway.core.db.models import Adapter, GoldenSet
from gateway.core.errors import InvalidRequest, NotFound
from gateway.core.ids import new_id
from gateway.core.tenants import get_tenant

CHECK_TYPES = {"json", "json_schema", "contains", "not_contains", "regex", "max_length"}


def parse_items(text: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"golden set line {lineno}: not JSON ({exc})") from exc
        items.append(validate_item(item, lineno))
    if not items:
        raise InvalidRequest("golden set is empty")
    return items


def validate_item(item: Any, lineno: int) -> dict[str, Any]:
    where = f"golden set line {lineno}"
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where}: expected an object")
    if ("prompt" in item) == ("messages" in item):
        raise InvalidRequest(f"{where}: give exactly one of 'prompt' or 'messages'")
    if "prompt" in item and not isinstance(item["prompt"], str):
        raise InvalidRequest(f"{where}: 'prompt' must be a string")
    if "messages" in item and not (isinstance(item["messages"], list) and item["messages"]):
        raise InvalidRequest(f"{where}: 'messages' must be a non-empty list")
    checks = item.get("checks", [])
    if not isinstance(checks, list):
        raise InvalidRequest(f"{where}: 'checks' must be a list")
    for check in checks:
        if not isinstance(check, dict) or check.get("type") not in CHECK_TYPES:
            raise InvalidRequest(f"{where}: unknown check {check!r}; types: {sorted(CHECK_TYPES)}")
        if check["type"] == "regex":
            try:
                re.compile(check["pattern"])
            except (KeyError, re.error) as exc:
                raise InvalidRequest(f"{where}: bad regex check ({exc})") from exc
        if check["type"] in ("contains", "not_contains") and not isinstance(
            check.get("value"), str
        ):
            raise InvalidRequest(f"{where}: {check['type']} needs a string 'value'")
        if check["type"] == "max_length" and not isinstance(check.get("value"), int):
            raise InvalidRequest(f"{where}: max_length needs an integer 'value'")
        if check["type"] == "json_schema" and not isinstance(check.get("schema"), dict):
            raise InvalidRequest(f"{where}: json_schema needs a 'schema' object")
    if "reference" in item and not isinstance(item["reference"], str):
        raise InvalidRequest(f"{where}: 'reference' must be a string")
    if not checks and "reference" not in item:
        raise InvalidRequest(f"{where}: give a 'reference' answer, 'checks', or both")
    return item


def content_hash(items: list[dict[str, Any]]) -> str:
    canonical = json.dumps(items, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def add_golden_set(
    session: AsyncSession, adapter: Adapter, items: list[dict[str, Any]]
) -> GoldenSet:
    """Freeze ``items`` as the adapter's next golden set version (identical content: reused)."""
    digest = content_hash(items)
    latest = await latest_golden_set(session, adapter.id)
    if latest is not None and latest.content_hash == digest:
        return latest
    last = await session.scalar(
        select(func.max(GoldenSet.version)).where(GoldenSet.adapter_id == adapter.id)
    )
    row = GoldenSet(
        id=new_id("gs"),
        tenant_id=adapter.tenant_id,
        adapter_id=adapter.id,
        version=(last or 0) + 1,
        content_hash=digest,
        items=items,
    )
    session.add(row)
    await session.flush()
    return row


async def freeze_golden_set(
    session: AsyncSession,
    tenant_name: str,
    adapter_name: str,
    items: list[dict[str, Any]],
    *,
    by: Actor | None,
) -> GoldenSet:
    """The "add a golden set" use case, for the admin API and the CLI alike: the tenant's
    adapter gets the next frozen version, and the audit table says who froze it."""

    tenant = await get_tenant(session, tenant_name)
    adapter = await get_adapter(session, tenant.id, adapter_name)
    row = await add_golden_set(session, adapter, items)
    audit.record_by(session, by, "golden.add", f"{adapter_name}/golden@{row.version}", tenant.id)
    return row


async def latest_golden_set(
    session: AsyncSession, adapter_id: str, before: datetime | None = None
) -> GoldenSet | None:
    stmt = select(GoldenSet).where(GoldenSet.adapter_id == adapter_id)
    if before is not None:
        stmt = stmt.where(GoldenSet.created_at < before)
    return await session.scalar(stmt.order_by(GoldenSet.version.desc()).limit(1))


async def golden_for_gate(
    session: AsyncSession, adapter_id: str, cutoff: datetime | None
) -> GoldenSet:
    """The golden set to gate on: the newest frozen before ``cutoff`` (the round's data cut-off)."""
    row = await latest_golden_set(session, adapter_id, before=cutoff)
    if row is None:
        when = f" before the round's data cut-off ({cutoff:%Y-%m-%d %H:%M})" if cutoff else ""
        raise NotFound(
            f"no golden set{when}: register one with `flywheel golden add` before training",
            param="golden_set",
        )
    if content_hash(list(row.items)) != row.content_hash:
        raise InvalidRequest(f"golden set {row.id} does not match its frozen hash")
    return row
