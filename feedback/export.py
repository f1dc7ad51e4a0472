"""Feedback to training data in TRL's formats (KTO: unpaired, DPO: paired preference).

Signals, per (completion, end user), latest feedback winning:

    thumbs up / down           KTO  {prompt, completion: original, label: up}
    edit (edited_output)       KTO  {prompt, completion: edited, label: True}
                                    + {prompt, completion: original, label: False}
                               DPO  {prompt, chosen: edited, rejected: original}
    comment only               nothing (no label to learn from)

An edit overrides the thumb on the same item: editing says the original was not good enough,
whatever the thumb said.  An "edit" identical to the original is not an edit.  Thumbs alone
give no DPO pairs (the pair would need two answers to the same prompt).

Chat completions keep TRL's conversational format (``prompt`` = the message list, completions
= ``[{"role": "assistant", "content": ...}]``); text completions use plain strings.  A tenant
that serves both kinds should export them to separate files (``meta.kind``), as one dataset
column cannot hold both types.

Provenance rides in a ``meta`` column (feedback id, completion id, adapter and version id,
kind, signal).  TRL's KTO and DPO trainers drop columns they do not use before collating
(tests/feedback/test_feedback_export.py trains one step on exactly these rows), so it can stay in.

Only completions that finished (``status = ok``) are exported; completions stored without
content (tenant ``store_content=False``) are skipped and counted in ``Selection``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TextIO

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from feedback.diff import unified
from feedback.examples import DPORow, KTORow
from gateway.core.db.models import Adapter, Completion, Feedback
from gateway.core.db.session import Database
from gateway.core.errors import InvalidRequest, NotFound
from gateway.core.tenants import get_tenant
from gateway.core.time import as_utc

log = logging.getLogger("flywheel.export")

Format = Literal["kto", "dpo"]
Prompt = list[dict[str, str]] | str


# A feedback row's completion: same tenant, same id (no foreign key, since feedback may land
# first).  Every query pairing the two uses this condition.
FEEDBACK_COMPLETION = (Completion.tenant_id == Feedback.tenant_id) & (
    Completion.id == Feedback.completion_id
)


def trl_prompt(kind: str, request: dict[str, Any]) -> Prompt:
    """A completion's request as TRL's prompt: messages (conversational) or text."""
    if kind == "chat":
        # Only role and content: any other key would reach the chat template.
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in request["messages"]]
    return str(request["prompt"])


@dataclass(frozen=True)
class FeedbackRow:
    """One feedback item joined to its completion (which has stored content)."""

    feedback_id: str
    completion_id: str
    end_user: str | None
    rating: str | None
    edited_output: str | None
    stored_diff: str | None
    updated_at: datetime
    kind: str
    request: dict[str, Any]
    response_text: str
    adapter_id: str | None
    adapter_version_id: str | None

    @property
    def prompt(self) -> Prompt:
        return trl_prompt(self.kind, self.request)

    def answer(self, text: str) -> list[dict[str, str]] | str:
        return [{"role": "assistant", "content": text}] if self.kind == "chat" else text

    @property
    def edit(self) -> str | None:
        """The edited output, unless it is missing or no change at all."""
        if self.edited_output is None or self.edited_output.strip() == self.response_text.strip():
            return None
        return self.edited_output

    @property
    def diff(self) -> str | None:
        """Stored diff, or computed now when the feedback landed before its completion text."""
        if self.stored_diff is not None or self.edited_output is None:
            return self.stored_diff
        return unified(self.response_text, self.edited_output)

    def meta(self, signal: str) -> dict[str, Any]:
        return {
            "feedback_id": self.feedback_id,
            "completion_id": self.completion_id,
            "adapter_id": self.adapter_id,
            "adapter_version_id": self.adapter_version_id,
            "kind": self.kind,
            "signal": signal,
        }


class Selection(list[FeedbackRow]):
    """The exportable rows, plus what was left out and why."""

    skipped_no_content: int = 0
    superseded: int = 0


async def select_rows(
    session: AsyncSession,
    tenant_id: str,
    adapter_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    version_ids: Sequence[str] | None = None,
) -> Selection:
    """Feedback of one tenant (optionally one adapter, versions, ``since <= updated_at < until``).

    Served by ix_feedback_tenant_updated, then the completions primary key.
    """
    query = (
        select(Feedback, Completion)
        .join(Completion, FEEDBACK_COMPLETION)
        .where(Feedback.tenant_id == tenant_id, Completion.status == "ok")
        .order_by(Feedback.updated_at, Feedback.created_at, Feedback.id)
    )
    if adapter_id is not None:
        query = query.where(Completion.adapter_id == adapter_id)
    if since is not None:
        query = query.where(Feedback.updated_at >= as_utc(since))
    if until is not None:
        query = query.where(Feedback.updated_at < as_utc(until))
    if version_ids is not None:
        query = query.where(Completion.adapter_version_id.in_(list(version_ids)))

    latest: dict[tuple[str, str | None], tuple[Feedback, Completion]] = {}
    total = 0
    for fb, comp in (await session.execute(query)).tuples():
        total += 1
        latest[(fb.completion_id, fb.end_user)] = (fb, comp)  # ordered: the last one wins
    selection = Selection()
    selection.superseded = total - len(latest)
    for fb, comp in latest.values():
        if comp.response_text is None or not comp.request:
            selection.skipped_no_content += 1
            continue
        selection.append(
            FeedbackRow(
                feedback_id=fb.id,
                completion_id=comp.id,
                end_user=fb.end_user,
                rating=fb.rating,
                edited_output=fb.edited_output,
                stored_diff=fb.diff,
                updated_at=as_utc(fb.updated_at),
                kind=comp.kind,
                request=comp.request,
                response_text=comp.response_text,
                adapter_id=comp.adapter_id,
                adapter_version_id=comp.adapter_version_id,
            )
        )
    return selection


def to_kto(rows: Iterable[FeedbackRow]) -> list[KTORow]:
    out: list[KTORow] = []
    for row in rows:
        edit = row.edit
        if edit is not None:
            out.append(_kto(row, edit, True, "edit"))
            out.append(_kto(row, row.response_text, False, "edit_original"))
        elif row.rating in ("up", "down"):
            out.append(_kto(row, row.response_text, row.rating == "up", "rating"))
    return out


def _kto(row: FeedbackRow, text: str, label: bool, signal: str) -> KTORow:
    return KTORow(row.prompt, row.answer(text), label, row.meta(signal))


def to_dpo(rows: Iterable[FeedbackRow]) -> list[DPORow]:
    out: list[DPORow] = []
    for row in rows:
        edit = row.edit
        if edit is not None:
            out.append(
                DPORow(
                    row.prompt, row.answer(edit), row.answer(row.response_text), row.meta("edit")
                )
            )
    return out


def write_jsonl(rows: Iterable[dict[str, Any]], fp: TextIO) -> int:
    n = 0
    for row in rows:
        fp.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
        n += 1
    return n


async def export(
    db: Database,
    tenant_name: str,
    adapter_name: str | None,
    since: datetime | None,
    fmt: str,
    out: TextIO,
) -> int:
    """``flywheel feedback export``: write the tenant's rows as JSONL; return how many."""
    if fmt not in ("kto", "dpo"):
        raise InvalidRequest(f"Unknown export format {fmt!r}: use 'kto' or 'dpo'.", param="format")
    async with db.session() as session:
        tenant = await get_tenant(session, tenant_name)
        adapter_id = None
        if adapter_name is not None:
            adapter_id = await session.scalar(
                select(Adapter.id).where(
                    Adapter.tenant_id == tenant.id, Adapter.name == adapter_name
                )
            )
            if adapter_id is None:
                raise NotFound(
                    f"No adapter named {adapter_name!r} for this tenant.", param="adapter"
                )
        rows = await select_rows(session, tenant.id, adapter_id=adapter_id, since=since)
    records: list[KTORow] | list[DPORow] = to_kto(rows) if fmt == "kto" else to_dpo(rows)
    if rows.skipped_no_content or rows.superseded:
        log.info(
            "export: %d feedback rows used, %d skipped without stored content, %d superseded",
            len(rows),
            rows.skipped_no_content,
            rows.superseded,
        )
    return write_jsonl((r.to_json() for r in records), out)
