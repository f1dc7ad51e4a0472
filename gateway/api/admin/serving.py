"""The admin API's reads: what the routes list and count, one query each.

Writes go through the use-case functions the CLI calls too (gateway/core/tenants.py,
gateway/services/adapters.py, adapters.golden.freeze_golden_set, adapters.promotion,
feedback.retention.forget_end_user), each writing its own audit row.  The one write here is
the console playground's short-lived tenant key (``playground_key``), which only the admin API
issues.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from adapters.promotion import rollback_target
from adapters.registry import get_adapter, list_versions
from feedback.export import FEEDBACK_COMPLETION
from gateway.api.admin.protocol import (
    AdapterDetail,
    AdapterVersionOut,
    FeedbackEdit,
    FeedbackSince,
    FeedbackStats,
    GateMetric,
    GateReportDetail,
    GateReportOut,
    GoldenSetOut,
    LineageVersion,
    NextRound,
    PlaygroundKey,
    RoundOut,
    VersionFeedback,
)
from gateway.core.audit import Actor, record_by
from gateway.core.config import Settings
from gateway.core.db.models import (
    Adapter,
    AdapterVersion,
    ApiKey,
    AuditEvent,
    Completion,
    Feedback,
    GateReport,
    GoldenSet,
    RouteEvent,
    TrainingRound,
)
from gateway.core.db.session import Database
from gateway.core.errors import Conflict, RequestError
from gateway.core.ids import hash_secret, new_id, new_secret
from gateway.core.tenants import get_tenant
from retrain.gate_rules import DEFAULT_THRESHOLDS, Improvement, SideMetrics, decide


async def tenant_id_of(session: AsyncSession, tenant: str | None) -> str | None:
    return (await get_tenant(session, tenant)).id if tenant else None


async def adapter_versions(session: AsyncSession, tenant: str | None) -> list[AdapterVersionOut]:
    return [
        AdapterVersionOut(
            tenant=t.name,
            adapter=a.name,
            version=v.version,
            version_id=v.id,
            state=v.state,
            active=a.active_version_id == v.id,
            digest=v.digest,
            rank=v.rank,
            use_dora=v.use_dora,
            signed=v.signature_path is not None,
            parent_version_id=v.parent_version_id,
            created_at=v.created_at,
        )
        for t, a, v in await list_versions(session, await tenant_id_of(session, tenant))
    ]


async def rounds(session: AsyncSession, tenant: str | None, limit: int) -> Sequence[TrainingRound]:
    stmt = select(TrainingRound).order_by(TrainingRound.created_at.desc()).limit(limit)
    if tenant:
        stmt = stmt.where(TrainingRound.tenant_id == await tenant_id_of(session, tenant))
    return (await session.scalars(stmt)).all()


async def gate_reports(
    session: AsyncSession, tenant: str | None, limit: int
) -> Sequence[GateReport]:
    stmt = select(GateReport).order_by(GateReport.created_at.desc()).limit(limit)
    if tenant:
        stmt = stmt.where(GateReport.tenant_id == await tenant_id_of(session, tenant))
    return (await session.scalars(stmt)).all()


async def feedback_stats(session: AsyncSession, tenant: str) -> FeedbackStats:
    tid = (await get_tenant(session, tenant)).id
    by_rating = dict(
        (
            await session.execute(
                select(Feedback.rating, func.count())
                .where(Feedback.tenant_id == tid)
                .group_by(Feedback.rating)
            )
        ).all()
    )
    edits = await session.scalar(
        select(func.count()).where(Feedback.tenant_id == tid, Feedback.edited_output.is_not(None))
    )
    completions = await session.scalar(
        select(func.count()).select_from(Completion).where(Completion.tenant_id == tid)
    )
    return FeedbackStats(
        tenant=tenant,
        completions=completions or 0,
        edits=edits or 0,
        up=by_rating.get("up", 0),
        down=by_rating.get("down", 0),
        no_rating=by_rating.get(None, 0),
    )


async def audit_events(session: AsyncSession, limit: int) -> Sequence[AuditEvent]:
    return (
        await session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit))
    ).all()


# --- one adapter's page ----------------------------------------------------------------------

# The gate's metric rows, in the order of its summary: (key, label, threshold, the rule in words,
# the bound from the serving value s and the threshold t).  Whether a row passed is not worked
# out here: retrain.gate_rules.decide is asked about that metric alone (see _verdict_of).
_GATE_ROWS: list[tuple[str, str, str, str, Callable[[float, float], float]]] = [
    ("fluency_nll", "fluency NLL (base)", "max_fluency_nll_increase", "at most serving + {t:g}",
     lambda s, t: s + t),
    ("preference_accuracy", "preference accuracy", "max_preference_accuracy_drop",
     "at least serving - {t:g}", lambda s, t: s - t),
    ("mean_margin", "mean reward margin", "min_margin_gain", "at least serving + {t:g}",
     lambda s, t: s + t),
    ("check_pass_rate", "golden check pass rate", "max_check_pass_rate_drop",
     "at least serving - {t:g}, and every hard check kept", lambda s, t: s - t),
    ("reference_nll", "reference NLL", "max_nll_increase", "at most serving x (1 + {t:g})",
     lambda s, t: s * (1 + t)),
    ("mean_length", "mean length (tokens)", "max_length_ratio", "at most serving x {t:g}",
     lambda s, t: s * t),
]  # fmt: skip
_SIDE_FIELDS = {f.name for f in fields(SideMetrics)}
# An improvement that always passes, so that asking decide() about one metric hears only it.
_NO_IMPROVEMENT_QUESTION = Improvement(test="sign", p_value=-1.0, rows=0)


def _side(stored: Any, only: str | None) -> SideMetrics:
    values = stored if isinstance(stored, dict) else {}
    kept = {k: v for k, v in values.items() if k in _SIDE_FIELDS and (only is None or k == only)}
    if only == "check_pass_rate":
        kept["hard_checks_passed"] = values.get("hard_checks_passed") or []
    return SideMetrics(**kept)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def gate_metrics(report: dict[str, Any]) -> list[GateMetric]:
    """A stored gate report as a table: serving, candidate, the rule and its outcome per metric."""
    stored = report.get("thresholds") or {}
    thresholds = dict(DEFAULT_THRESHOLDS)
    thresholds.update({k: float(v) for k, v in stored.items() if k in DEFAULT_THRESHOLDS})
    rows: list[GateMetric] = []
    if "improvement" in report:
        imp = report["improvement"] if isinstance(report["improvement"], dict) else None
        improvement = Improvement(**imp) if imp else None
        reasons = decide(SideMetrics(), SideMetrics(), thresholds, improvement).reasons
        alpha = thresholds["max_improvement_p"]
        rows.append(
            GateMetric(
                metric="improvement",
                label="better on held-out feedback (p-value)",
                serving=None,
                candidate=_number(imp.get("p_value")) if imp else None,
                rule=f"p < {alpha:g}",
                limit=alpha,
                outcome="fail" if reasons else "pass",
                reason=reasons[0] if reasons else None,
            )
        )
    serving_side, candidate_side = report.get("serving"), report.get("candidate")
    for key, label, name, rule, bound in _GATE_ROWS:
        t = thresholds[name]
        s = _number((serving_side or {}).get(key)) if isinstance(serving_side, dict) else None
        c = _number((candidate_side or {}).get(key)) if isinstance(candidate_side, dict) else None
        outcome: Literal["pass", "fail", "skipped"] = "skipped"
        reason = None
        if s is not None and c is not None:
            serving_only, candidate_only = _side(serving_side, key), _side(candidate_side, key)
            if len(serving_only.hard_checks_passed) != len(candidate_only.hard_checks_passed):
                serving_only.hard_checks_passed = candidate_only.hard_checks_passed = []
            found = decide(serving_only, candidate_only, thresholds, _NO_IMPROVEMENT_QUESTION)
            outcome = "fail" if found.reasons else "pass"
            reason = "; ".join(found.reasons) or None
        rows.append(
            GateMetric(
                metric=key,
                label=label,
                serving=s,
                candidate=c,
                rule=rule.format(t=t),
                limit=bound(s, t) if s is not None else None,
                outcome=outcome,
                reason=reason,
            )
        )
    return rows


def _prompt_text(kind: str, request: dict[str, Any] | None) -> str | None:
    if not request:
        return None
    if kind == "chat":
        users = [m for m in request.get("messages") or [] if isinstance(m, dict)]
        users = [m for m in users if m.get("role") == "user"] or users
        return str(users[-1].get("content")) if users else None
    prompt = request.get("prompt")
    return prompt if isinstance(prompt, str) else None


def _per_100(count: int, completions: int) -> float | None:
    return round(100 * count / completions, 1) if completions else None


async def _version_feedback(session: AsyncSession, adapter_id: str) -> dict[str, VersionFeedback]:
    completions = dict(
        (
            await session.execute(
                select(Completion.adapter_version_id, func.count())
                .where(Completion.adapter_id == adapter_id, Completion.status == "ok")
                .group_by(Completion.adapter_version_id)
            )
        )
        .tuples()
        .all()
    )
    rated = (
        await session.execute(
            select(
                Completion.adapter_version_id,
                Feedback.rating,
                func.count(),
                func.count(Feedback.edited_output),
            )
            .join(Completion, FEEDBACK_COMPLETION)
            .where(Completion.adapter_id == adapter_id)
            .group_by(Completion.adapter_version_id, Feedback.rating)
        )
    ).tuples()
    out: dict[str, VersionFeedback] = {}
    for version_id, count in completions.items():
        if version_id:
            out[version_id] = VersionFeedback(completions=count, up=0, down=0, edits=0)
    for version_id, rating, count, edits in rated:
        if not version_id:
            continue
        row = out.setdefault(version_id, VersionFeedback(completions=0, up=0, down=0, edits=0))
        row.edits += edits
        if rating == "up":
            row.up += count
        elif rating == "down":
            row.down += count
    return out


async def _feedback_since(
    session: AsyncSession, adapter: Adapter, numbers: dict[str, int], recent: int
) -> FeedbackSince:
    # The cut-off a new round would start from (retrain/rounds.py, prepare).
    since = await session.scalar(
        select(func.max(TrainingRound.data_cutoff)).where(
            TrainingRound.adapter_id == adapter.id, TrainingRound.state == "succeeded"
        )
    )
    completion_filter = [Completion.adapter_id == adapter.id, Completion.status == "ok"]
    feedback_filter = [Feedback.tenant_id == adapter.tenant_id, *completion_filter]
    if since is not None:
        completion_filter.append(Completion.created_at >= since)
        feedback_filter.append(Feedback.updated_at >= since)
    completions = (
        await session.scalar(select(func.count()).select_from(Completion).where(*completion_filter))
        or 0
    )
    by_rating = dict(
        (
            await session.execute(
                select(Feedback.rating, func.count())
                .join(Completion, FEEDBACK_COMPLETION)
                .where(*feedback_filter)
                .group_by(Feedback.rating)
            )
        )
        .tuples()
        .all()
    )
    edited = [*feedback_filter, Feedback.edited_output.is_not(None)]
    edits = (
        await session.scalar(
            select(func.count())
            .select_from(Feedback)
            .join(Completion, FEEDBACK_COMPLETION)
            .where(*edited)
        )
        or 0
    )
    latest = (
        await session.execute(
            select(Feedback, Completion)
            .join(Completion, FEEDBACK_COMPLETION)
            .where(*edited)
            .order_by(Feedback.updated_at.desc(), Feedback.id)
            .limit(recent)
        )
    ).tuples()
    up, down = by_rating.get("up", 0), by_rating.get("down", 0)
    return FeedbackSince(
        since=since,
        completions=completions,
        up=up,
        down=down,
        edits=edits,
        up_per_100=_per_100(up, completions),
        down_per_100=_per_100(down, completions),
        edits_per_100=_per_100(edits, completions),
        recent_edits=[
            FeedbackEdit(
                feedback_id=fb.id,
                completion_id=comp.id,
                version=numbers.get(comp.adapter_version_id or ""),
                prompt=_prompt_text(comp.kind, comp.request),
                original=comp.response_text,
                edited=fb.edited_output or "",
                updated_at=fb.updated_at,
            )
            for fb, comp in latest
        ],
    )


async def adapter_detail(
    session: AsyncSession, tenant: str, name: str, limit: int, recent_edits: int
) -> AdapterDetail:
    """One adapter's page: versions as a lineage, its rounds and gate reports, new feedback."""
    t = await get_tenant(session, tenant)
    a = await get_adapter(session, t.id, name)
    versions = list(
        await session.scalars(
            select(AdapterVersion)
            .where(AdapterVersion.adapter_id == a.id)
            .order_by(AdapterVersion.version)
        )
    )
    numbers = {v.id: v.version for v in versions}
    rounds = list(
        await session.scalars(
            select(TrainingRound)
            .where(TrainingRound.adapter_id == a.id)
            .order_by(TrainingRound.created_at.desc())
            .limit(limit)
        )
    )
    produced_by = dict(
        (
            await session.execute(
                select(TrainingRound.candidate_version_id, TrainingRound.id)
                .where(TrainingRound.adapter_id == a.id)
                .order_by(TrainingRound.created_at)  # a re-run round's newest id wins
            )
        )
        .tuples()
        .all()
    )
    reports = list(
        await session.scalars(
            select(GateReport)
            .where(GateReport.adapter_id == a.id)
            .order_by(GateReport.created_at.desc())
            .limit(limit)
        )
    )
    judged: dict[str, GateReport] = {}
    for report in await session.scalars(
        select(GateReport).where(GateReport.adapter_id == a.id).order_by(GateReport.created_at)
    ):
        judged[report.candidate_version_id] = report  # the newest verdict on each version
    first_served = dict(
        (
            await session.execute(
                select(RouteEvent.to_version_id, func.min(RouteEvent.created_at))
                .where(RouteEvent.adapter_id == a.id)
                .group_by(RouteEvent.to_version_id)
            )
        )
        .tuples()
        .all()
    )
    goldens = list(
        await session.scalars(
            select(GoldenSet).where(GoldenSet.adapter_id == a.id).order_by(GoldenSet.version)
        )
    )
    golden_numbers = {g.id: g.version for g in goldens}
    feedback = await _version_feedback(session, a.id)
    rollback = await rollback_target(session, a)
    return AdapterDetail(
        tenant=t.name,
        adapter=a.name,
        serving_version=numbers.get(a.active_version_id or ""),
        rollback_to=rollback.version if rollback is not None else None,
        versions=[
            LineageVersion(
                version=v.version,
                version_id=v.id,
                state=v.state,
                active=v.id == a.active_version_id,
                signed=v.signature_path is not None,
                parent_version=numbers.get(v.parent_version_id or ""),
                round_id=produced_by.get(v.id),
                gate_report_id=judged[v.id].id if v.id in judged else None,
                verdict=("passed" if judged[v.id].passed else "rejected")
                if v.id in judged
                else None,
                first_served_at=first_served.get(v.id),
                created_at=v.created_at,
                feedback=feedback.get(v.id, VersionFeedback(completions=0, up=0, down=0, edits=0)),
            )
            for v in versions
        ],
        rounds=[RoundOut.model_validate(r) for r in rounds],
        gate_reports=[
            GateReportDetail(
                **GateReportOut.model_validate(g).model_dump(),
                candidate_version=numbers.get(g.candidate_version_id),
                serving_version=numbers.get(g.serving_version_id or ""),
                golden_set_version=golden_numbers.get(g.golden_set_id or ""),
                metrics=gate_metrics(g.report or {}),
            )
            for g in reports
        ],
        golden_sets=[
            GoldenSetOut(
                id=g.id,
                version=g.version,
                items=len(g.items or []),
                content_hash=g.content_hash,
                created_at=g.created_at,
            )
            for g in goldens
        ],
        feedback_since_last_round=await _feedback_since(session, a, numbers, recent_edits),
    )


async def next_round(db: Database, settings: Settings, tenant: str, name: str) -> NextRound:
    """The next round's plan as a dry run: the planner itself, reading only."""
    # retrain.rounds brings the trainer's modules (torch): imported when a plan is asked for.
    from retrain.rounds import prepare

    async with db.session() as session:
        t = await get_tenant(session, tenant)
        await get_adapter(session, t.id, name)  # a missing adapter is a 404, not "not ready"
    try:
        p = await prepare(db, settings, tenant=tenant, adapter=name)
    except RequestError as exc:  # no golden set, too little feedback, ...: not ready
        return NextRound(
            ready=False,
            why_not=exc.message,
            retrain_enabled=t.retrain_enabled,
            since=None,
            cutoff=None,
            method=None,
            reason=None,
            counts={},
            train_rows=None,
            heldout_rows=None,
            golden_set_version=None,
            lines=[],
        )
    return NextRound(
        ready=True,
        why_not=None,
        retrain_enabled=t.retrain_enabled,
        since=p.since,
        cutoff=p.cutoff,
        method=p.plan.method,
        reason=p.plan.reason,
        counts=p.counts,
        train_rows=len(p.train),
        heldout_rows=len(p.heldout),
        golden_set_version=p.golden_version,
        lines=p.describe().splitlines(),
    )


# --- the console's playground -----------------------------------------------------------------
# The playground chats through the public OpenAI API as the tenant, so it needs a tenant key; the
# console holds only an admin token, and a tenant's own keys are never shown again after they
# are made.  So each reply gets a key of its own, made here (audited), which the console revokes
# (DELETE /admin/keys/{id}) as soon as the reply has streamed.  Each key also carries its
# expires_at (PLAYGROUND_KEY_TTL_S on), after which tenants.authenticate refuses it, so a key
# the console could not revoke (a closed tab, a lost connection) stops working by itself; the
# next issue then marks it revoked too, so the tenant's key list says so.  The prefix marks them
# in that list and for that sweep.
PLAYGROUND_KEY_PREFIX = "fw-play-"
PLAYGROUND_KEY_TTL_S = 600


async def playground_key(session: AsyncSession, tenant: str, by: Actor) -> PlaygroundKey:
    """A new tenant key for one playground reply; expired playground keys revoked first."""
    t = await get_tenant(session, tenant)
    if t.disabled:
        raise Conflict(f"Tenant {t.name!r} is disabled: the playground cannot answer as it.")
    now = datetime.now(UTC)
    expired = list(
        await session.scalars(
            select(ApiKey).where(
                ApiKey.prefix.startswith(PLAYGROUND_KEY_PREFIX, autoescape=True),
                ApiKey.revoked_at.is_(None),
                ApiKey.created_at < now - timedelta(seconds=PLAYGROUND_KEY_TTL_S),
            )
        )
    )
    for old in expired:
        old.revoked_at = now
        record_by(session, by, "key.revoke", old.id, old.tenant_id, {"why": "playground expiry"})
    secret = new_secret(PLAYGROUND_KEY_PREFIX)
    expires_at = now + timedelta(seconds=PLAYGROUND_KEY_TTL_S)
    key = ApiKey(
        id=new_id("key"),
        tenant_id=t.id,
        key_hash=hash_secret(secret),
        prefix=secret[:10],
        expires_at=expires_at,
    )
    session.add(key)
    await session.flush()
    record_by(session, by, "playground.key", key.id, t.id, {"expires_at": expires_at.isoformat()})
    return PlaygroundKey(
        tenant=t.name,
        key_id=key.id,
        prefix=key.prefix,
        api_key=secret,
        expires_at=expires_at,
        revoked_expired=[old.id for old in expired],
    )
