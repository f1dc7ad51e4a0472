"""Admin API request bodies and answers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from gateway.core.time import as_utc


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TenantSettings(_Strict):
    rpm_limit: int | None = Field(default=None, ge=1, le=2**31 - 1)
    tpm_limit: int | None = Field(default=None, ge=1, le=2**31 - 1)
    store_content: bool | None = None
    retention_days: int | None = Field(default=None, ge=1, le=2**31 - 1)
    cors_origins: list[str] | None = None
    auto_promote: bool | None = None
    retrain_enabled: bool | None = None
    retrain_min_feedback: int | None = Field(default=None, ge=1, le=2**31 - 1)
    retrain_max_age_hours: float | None = Field(default=None, gt=0)
    gate_thresholds: dict[str, float] | None = None
    retrain_recipe: dict[str, Any] | None = None
    disabled: bool | None = None

    # null resets a limit to the gateway's default; these settings have no "unset" state.
    @field_validator(
        "store_content", "cors_origins", "auto_promote", "retrain_enabled",
        "retrain_min_feedback", "retrain_max_age_hours", "gate_thresholds", "retrain_recipe",
        "disabled",
    )  # fmt: skip
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("may not be null (leave the field out to keep its value)")
        return value

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class TenantCreate(TenantSettings):
    name: str


class AdapterAdd(_Strict):
    tenant: str
    name: str
    path: str
    sign: bool = False


class Promote(_Strict):
    version: int = Field(ge=1)
    reason: str = ""


class Rollback(_Strict):
    reason: str = ""


class GoldenAdd(_Strict):
    tenant: str
    adapter: str
    items: list[dict[str, Any]] = Field(min_length=1)


class Forget(_Strict):
    tenant: str
    end_user: str = Field(min_length=1)


# --- responses -------------------------------------------------------------------------------
# Typed like the request bodies, so the OpenAPI document (and the console, and the fuzz test)
# know each answer's shape.  Built from the ORM rows (from_attributes).


# SQLite reads timestamps back naive; every one stored is UTC, and the answer says so (RFC 3339
# with an offset, as the schema's date-time format requires).
UTCDatetime = Annotated[datetime, AfterValidator(as_utc)]


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class TenantOut(_Out):
    id: str
    name: str
    created_at: UTCDatetime
    rpm_limit: int | None
    tpm_limit: int | None
    store_content: bool
    retention_days: int | None
    cors_origins: list[str]
    auto_promote: bool
    retrain_enabled: bool
    retrain_min_feedback: int
    retrain_max_age_hours: float
    gate_thresholds: dict[str, Any]
    retrain_recipe: dict[str, Any]
    disabled: bool


class KeyOut(_Out):
    id: str
    tenant_id: str
    prefix: str
    created_at: UTCDatetime
    revoked_at: UTCDatetime | None
    expires_at: UTCDatetime | None = Field(
        default=None,
        description="When the key stops working by itself (playground keys); else null.",
    )


class NewKey(KeyOut):
    api_key: str = Field(description="The key itself, shown this once; only its hash is kept.")


class RotatedKeys(NewKey):
    revoked: list[str]


class TenantCreated(BaseModel):
    tenant: TenantOut
    key_id: str
    api_key: str = Field(description="The tenant's first key, shown this once.")


class AdapterVersionOut(BaseModel):
    tenant: str
    adapter: str
    version: int
    version_id: str
    state: str
    active: bool
    digest: str
    rank: int
    use_dora: bool
    signed: bool
    parent_version_id: str | None
    created_at: UTCDatetime


class AdapterAdded(BaseModel):
    adapter: str
    version: int
    digest: str
    signed: bool


class Verified(BaseModel):
    adapter: str
    version: int
    verified: bool


class GoldenAdded(_Out):
    id: str
    version: int
    content_hash: str
    items: int


class RoundOut(_Out):
    id: str
    tenant_id: str
    adapter_id: str
    state: str
    method: str | None
    method_reason: str | None
    parent_version_id: str | None
    candidate_version_id: str | None
    counts: dict[str, Any] | None
    dataset_hash: str | None
    hyperparams: dict[str, Any] | None
    metrics: dict[str, Any] | None
    train_log: list[dict[str, float]] = Field(
        default_factory=list,
        description="The per-step training log: step, loss, rewards/margins, ... as TRL logged them.",
    )
    error: str | None
    attempts: int
    created_at: UTCDatetime
    started_at: UTCDatetime | None
    finished_at: UTCDatetime | None


class GateReportOut(_Out):
    id: str
    tenant_id: str
    adapter_id: str
    candidate_version_id: str
    serving_version_id: str | None
    golden_set_id: str | None
    round_id: str | None
    passed: bool
    reasons: list[Any]
    report: dict[str, Any]
    summary: str
    created_at: UTCDatetime


class FeedbackStats(BaseModel):
    tenant: str
    completions: int
    edits: int
    up: int
    down: int
    no_rating: int


class AuditEventOut(_Out):
    id: int
    actor: str
    action: str
    target: str
    tenant_id: str | None
    remote_addr: str | None
    detail: dict[str, Any] | None
    created_at: UTCDatetime


class Forgotten(BaseModel):
    tenant: str
    end_user: str
    completions: int
    feedback: int
    heldout_rows: int
    rejected_rows: int


# --- one adapter's page: its lineage, gate reports as tables, feedback since the last round ---


class GateMetric(BaseModel):
    """One row of a gate report's table: a measured metric on both sides and its rule."""

    metric: str = Field(description="The key in the report's serving/candidate sides.")
    label: str
    serving: float | None
    candidate: float | None
    rule: str = Field(description="What the candidate must do, e.g. 'at most serving + 0.5'.")
    limit: float | None = Field(description="The rule's bound for this report, when measured.")
    outcome: Literal["pass", "fail", "skipped"]
    reason: str | None = Field(description="Why it failed, in the gate's own words.")


class GateReportDetail(GateReportOut):
    candidate_version: int | None
    serving_version: int | None
    golden_set_version: int | None
    metrics: list[GateMetric]


class VersionFeedback(BaseModel):
    """Feedback rows on the completions one version answered (every row, not only the latest)."""

    completions: int
    up: int
    down: int
    edits: int


class LineageVersion(BaseModel):
    version: int
    version_id: str
    state: str
    active: bool
    signed: bool
    parent_version: int | None
    round_id: str | None = Field(description="The training round that produced it.")
    gate_report_id: str | None = Field(description="The newest gate report that judged it.")
    verdict: Literal["passed", "rejected"] | None
    first_served_at: UTCDatetime | None
    created_at: UTCDatetime
    feedback: VersionFeedback


class FeedbackEdit(BaseModel):
    feedback_id: str
    completion_id: str
    version: int | None
    prompt: str | None = Field(description="The last user message (or the text prompt).")
    original: str | None = Field(description="The answer as served; null when not stored.")
    edited: str
    updated_at: UTCDatetime


class FeedbackSince(BaseModel):
    """Feedback on this adapter since the last succeeded round's data cut-off."""

    since: UTCDatetime | None = Field(description="That cut-off; null before any round.")
    completions: int
    up: int
    down: int
    edits: int
    up_per_100: float | None = Field(description="Per 100 completions; null without any.")
    down_per_100: float | None
    edits_per_100: float | None
    recent_edits: list[FeedbackEdit]


class GoldenSetOut(BaseModel):
    id: str
    version: int
    items: int
    content_hash: str
    created_at: UTCDatetime


class AdapterDetail(BaseModel):
    tenant: str
    adapter: str
    serving_version: int | None
    rollback_to: int | None = Field(
        description="The version a rollback would serve now; null when it would be refused."
    )
    versions: list[LineageVersion]
    rounds: list[RoundOut]
    gate_reports: list[GateReportDetail]
    golden_sets: list[GoldenSetOut]
    feedback_since_last_round: FeedbackSince


class NextRound(BaseModel):
    """What ``flywheel retrain run --dry-run`` would say for this adapter now; nothing is run."""

    ready: bool = Field(description="Whether a round could start now (run by hand or a worker).")
    why_not: str | None = Field(description="Why it could not, in the planner's words.")
    retrain_enabled: bool = Field(description="Whether the tenant's worker runs rounds itself.")
    since: UTCDatetime | None
    cutoff: UTCDatetime | None
    method: str | None
    reason: str | None = Field(description="Why that method.")
    counts: dict[str, int]
    train_rows: int | None
    heldout_rows: int | None
    golden_set_version: int | None
    lines: list[str] = Field(description="The dry run's text, one line each.")


class PlaygroundKey(BaseModel):
    """A tenant API key made for the console's playground: one reply, then revoked."""

    tenant: str
    key_id: str
    prefix: str
    api_key: str = Field(description="The key itself, shown this once; only its hash is kept.")
    expires_at: UTCDatetime = Field(
        description="When it stops working, if the console has not revoked it before."
    )
    revoked_expired: list[str] = Field(
        description="Ids of older playground keys past their expiry, revoked by this call."
    )
