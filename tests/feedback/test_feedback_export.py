"""Export for training: selection, dedup, formats, and one real TRL step on each format."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from feedback.export import export, select_rows, to_dpo, to_kto, write_jsonl
from feedback.log import CompletionLog
from feedback.service import FeedbackInput, record_feedback
from gateway.core.db.models import Adapter, Feedback, Tenant
from gateway.core.db.session import Database
from tests.feedback.test_feedback_log import completion_row, make_log, new_tenant

PROMPT = [{"role": "user", "content": "How do I reset my password?"}]


async def seed(
    db: Database, log: CompletionLog, tenant: Tenant, adapter_name: str = "support"
) -> dict[str, Any]:
    """Completions of an adapter with every kind of feedback on them."""
    adapter = Adapter(id=f"ad_{uuid.uuid4().hex[:12]}", tenant_id=tenant.id, name=adapter_name)
    async with db.transaction() as session:
        session.add(adapter)
    common = {
        "adapter_id": adapter.id,
        "adapter_version_id": "ver_1",
        "request": {"messages": PROMPT},
    }
    rows = {
        "thumb_up": completion_row(tenant.id, response_text="Press reset.", **common),
        "thumb_down": completion_row(tenant.id, response_text="No idea.", **common),
        "edited": completion_row(tenant.id, response_text="Open settings.", **common),
        "private": completion_row(tenant.id, _store_content=False, **common),
        "comment": completion_row(tenant.id, response_text="Hi.", **common),
        "other_adapter": completion_row(tenant.id, response_text="Elsewhere."),
        "failed": completion_row(tenant.id, status="error", response_text="par", **common),
    }
    for row in rows.values():
        log.submit(row)
    assert await log.flush(timeout=30)

    def fb(key: str, **kw: Any) -> FeedbackInput:
        return FeedbackInput(completion_id=rows[key]["id"], **kw)

    # The same end user changes their mind: only the latest counts.
    await record_feedback(db, log, tenant.id, [fb("thumb_up", rating="down", end_user="u1")])
    await record_feedback(db, log, tenant.id, [fb("thumb_up", rating="up", end_user="u1")])
    await record_feedback(
        db,
        log,
        tenant.id,
        [
            fb("thumb_down", rating="down"),
            fb("edited", rating="down", edited_output="Open settings, then Security, then Reset."),
            fb("private", rating="up"),
            fb("comment", comment="just a comment"),
            fb("other_adapter", rating="up"),
            fb("failed", rating="down"),
        ],
    )
    return {"adapter": adapter, "rows": rows}


async def test_select_dedup_and_formats(db: Database, tmp_path: Path) -> None:
    tenant = await new_tenant(db)
    other = await new_tenant(db)
    log = make_log(db, tmp_path / "spool")
    await log.start()
    try:
        seeded = await seed(db, log, tenant)
        await seed(db, log, other)  # another tenant's data must never appear
    finally:
        await log.stop()
    rows_by_key = seeded["rows"]
    async with db.session() as session:
        selection = await select_rows(session, tenant.id, adapter_id=seeded["adapter"].id)
    assert selection.skipped_no_content == 1
    assert selection.superseded == 1
    ids = {r.completion_id for r in selection}
    assert ids == {rows_by_key[k]["id"] for k in ("thumb_up", "thumb_down", "edited", "comment")}

    kto = [r.to_json() for r in to_kto(selection)]
    by_signal = {(r["meta"]["completion_id"], r["meta"]["signal"]): r for r in kto}
    up = by_signal[(rows_by_key["thumb_up"]["id"], "rating")]
    assert up["label"] is True and up["prompt"] == PROMPT
    assert up["completion"] == [{"role": "assistant", "content": "Press reset."}]
    assert by_signal[(rows_by_key["thumb_down"]["id"], "rating")]["label"] is False
    edited_id = rows_by_key["edited"]["id"]
    assert by_signal[(edited_id, "edit")]["label"] is True
    assert by_signal[(edited_id, "edit_original")]["label"] is False
    assert (edited_id, "rating") not in by_signal  # the edit overrides the thumb
    assert len(kto) == 4  # the comment-only item gives no label
    assert kto[0]["meta"]["adapter_version_id"] == "ver_1"

    dpo = [r.to_json() for r in to_dpo(selection)]
    assert dpo == [
        {
            "prompt": PROMPT,
            "chosen": [
                {"role": "assistant", "content": "Open settings, then Security, then Reset."}
            ],
            "rejected": [{"role": "assistant", "content": "Open settings."}],
            "meta": {**by_signal[(edited_id, "edit")]["meta"], "signal": "edit"},
        }
    ]

    # Filters: versions, and a time window that excludes everything.
    async with db.session() as session:
        none = await select_rows(session, tenant.id, version_ids=["ver_other"])
        later = await select_rows(session, tenant.id, since=datetime.now(UTC) + timedelta(hours=1))
        everything = await select_rows(session, tenant.id)
    assert len(none) == 0 and len(later) == 0
    assert rows_by_key["other_adapter"]["id"] in {r.completion_id for r in everything}
    assert rows_by_key["failed"]["id"] not in {r.completion_id for r in everything}

    # The CLI entry point.
    out = io.StringIO()
    n = await export(db, tenant.name, "support", None, "dpo", out)
    assert n == 1 and json.loads(out.getvalue().splitlines()[0])["meta"]["signal"] == "edit"


async def test_diff_is_computed_at_export_when_feedback_came_first(
    db: Database, tmp_path: Path
) -> None:
    tenant = await new_tenant(db)
    log = make_log(db, tmp_path / "spool", flush_interval_s=3600, batch_size=10_000)
    await log.start()
    try:
        row = completion_row(tenant.id, response_text="one\ntwo")
        log.begin(row["id"], tenant.id)  # still generating: the text is not known
        await record_feedback(
            db, log, tenant.id, [FeedbackInput(row["id"], edited_output="one\nthree")]
        )
        log.submit(row)
        assert await log.flush(timeout=30)
    finally:
        await log.stop()
    async with db.session() as session:
        stored = await session.scalar(select(Feedback).where(Feedback.completion_id == row["id"]))
        (exported,) = await select_rows(session, tenant.id)
    assert stored is not None and stored.diff is None
    assert exported.diff is not None and "-two" in exported.diff and "+three" in exported.diff


async def test_text_completions_export_plain_strings(db: Database, tmp_path: Path) -> None:
    tenant = await new_tenant(db)
    log = make_log(db, tmp_path / "spool")
    await log.start()
    try:
        row = completion_row(
            tenant.id,
            id=f"cmpl-{uuid.uuid4().hex}",
            kind="text",
            request={"prompt": "Once upon"},
            response_text=" a time",
        )
        log.submit(row)
        assert await log.flush(timeout=30)
        await record_feedback(
            db, log, tenant.id, [FeedbackInput(row["id"], edited_output=" a midnight dreary")]
        )
    finally:
        await log.stop()
    async with db.session() as session:
        selection = await select_rows(session, tenant.id)
    (pair,) = to_dpo(selection)
    assert pair.prompt == "Once upon"
    assert pair.chosen == " a midnight dreary" and pair.rejected == " a time"


# --- one real training step on each format ---------------------------------------------------


def _train_args(cls: Any, out: Path) -> Any:
    return cls(
        output_dir=str(out),
        use_cpu=True,
        per_device_train_batch_size=2,
        max_steps=1,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        max_length=128,
    )


async def _exported(db: Database, tmp_path: Path, fmt: str) -> list[dict[str, Any]]:
    tenant = await new_tenant(db)
    log = make_log(db, tmp_path / "spool")
    await log.start()
    try:
        await seed(db, log, tenant)
        await seed(db, log, tenant, "sales")  # enough rows for a batch of two
    finally:
        await log.stop()
    out = io.StringIO()
    assert await export(db, tenant.name, None, None, fmt, out) > 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.slow
async def test_kto_export_trains_one_step(db: Database, demo_base: Path, tmp_path: Path) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer  # type: ignore[attr-defined]

    records = await _exported(db, tmp_path, "kto")
    dataset = Dataset.from_list(records)
    assert set(dataset.column_names) == {"prompt", "completion", "label", "meta"}
    trainer = KTOTrainer(
        model=AutoModelForCausalLM.from_pretrained(demo_base),
        args=_train_args(KTOConfig, tmp_path / "kto"),
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(demo_base),
    )
    result = trainer.train()
    assert result.global_step == 1


@pytest.mark.slow
async def test_dpo_export_trains_one_step(db: Database, demo_base: Path, tmp_path: Path) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer  # type: ignore[attr-defined]

    records = await _exported(db, tmp_path, "dpo")
    dataset = Dataset.from_list(records)
    assert set(dataset.column_names) == {"prompt", "chosen", "rejected", "meta"}
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(demo_base),
        args=_train_args(DPOConfig, tmp_path / "dpo"),
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(demo_base),
    )
    result = trainer.train()
    assert result.global_step == 1


def test_write_jsonl_is_one_object_per_line() -> None:
    out = io.StringIO()
    assert write_jsonl([{"a": "é"}, {"b": [1]}], out) == 2
    assert out.getvalue() == '{"a":"é"}\n{"b":[1]}\n'
