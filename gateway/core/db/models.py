"""SQLAlchemy models for every table, shared by PostgreSQL and SQLite.

One set of models, one chain of Alembic migrations (gateway/core/db/migrations).  JSON columns use
the generic ``JSON`` type so the same code runs on both databases.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    rpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    store_content: Mapped[bool] = mapped_column(Boolean, default=True)
    retention_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cors_origins: Mapped[list[Any]] = mapped_column(JSON, default=list)
    auto_promote: Mapped[bool] = mapped_column(Boolean, default=False)
    retrain_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    retrain_min_feedback: Mapped[int] = mapped_column(Integer, default=50)
    retrain_max_age_hours: Mapped[float] = mapped_column(Float, default=24.0)
    gate_thresholds: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Hyperparameter overrides for this tenant's rounds, by field name (docs/retrain.md).
    retrain_recipe: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """A tenant key.  Only the SHA-256 of the secret is stored; keys are high-entropy."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # Set for keys made to expire (the console playground's); refused from then on, revoked or not.
    expires_at: Mapped[datetime | None] = mapped_column(nullable=True)


class AdminToken(Base):
    __tablename__ = "admin_tokens"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Adapter(Base):
    """A tenant's named adapter; ``active_version_id`` is the route clients are served from."""

    __tablename__ = "adapters"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    active_version_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    route_revision: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AdapterVersion(Base):
    """An immutable, content-addressed adapter artifact.

    state: ``ready`` (added by hand), ``candidate`` (from a round, not gated yet), ``passed``,
    ``rejected``.  Only ``ready`` and ``passed`` versions may be routed to.
    """

    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("adapter_id", "version"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    adapter_id: Mapped[str] = mapped_column(
        ForeignKey("adapters.id", ondelete="CASCADE"), index=True
    )
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="ready")
    base_model: Mapped[str] = mapped_column(Text, default="")
    rank: Mapped[int] = mapped_column(Integer)
    alpha: Mapped[float] = mapped_column(Float)
    use_dora: Mapped[bool] = mapped_column(Boolean, default=False)
    target_modules: Mapped[list[Any]] = mapped_column(JSON, default=list)
    parent_version_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    signature_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Completion(Base):
    __tablename__ = "completions"
    __table_args__ = (
        Index("ix_completions_tenant_created", "tenant_id", "created_at"),
        Index("ix_completions_tenant_user", "tenant_id", "end_user"),
        Index("ix_completions_tenant_version", "tenant_id", "adapter_version_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    kind: Mapped[str] = mapped_column(String(16))  # chat | text
    model: Mapped[str] = mapped_column(String(300))
    adapter_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    adapter_version_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    request: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    response_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16))  # ok | error | cancelled
    error_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    end_user: Mapped[str | None] = mapped_column(String(256), nullable=True)
    received_at: Mapped[datetime] = mapped_column()
    first_token_at: Mapped[datetime | None] = mapped_column(nullable=True)
    done_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Feedback(Base):
    """Feedback on a completion.  No foreign key: feedback may land before its completion row."""

    __tablename__ = "feedback"
    __table_args__ = (
        Index("ix_feedback_tenant_completion", "tenant_id", "completion_id"),
        Index("ix_feedback_tenant_updated", "tenant_id", "updated_at"),
        Index("ix_feedback_tenant_user", "tenant_id", "end_user"),
    )

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    completion_id: Mapped[str] = mapped_column(String(64))
    rating: Mapped[str | None] = mapped_column(String(8), nullable=True)  # up | down
    edited_output: Mapped[str | None] = mapped_column(Text, nullable=True)
    diff: Mapped[str | None] = mapped_column(Text, nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    end_user: Mapped[str | None] = mapped_column(String(256), nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    source: Mapped[str] = mapped_column(String(16), default="api")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class GoldenSet(Base):
    """A frozen golden set; new content is a new version, never an edit."""

    __tablename__ = "golden_sets"
    __table_args__ = (UniqueConstraint("adapter_id", "version"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    adapter_id: Mapped[str] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    items: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrainingRound(Base):
    __tablename__ = "training_rounds"
    __table_args__ = (Index("ix_rounds_state", "state", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    adapter_id: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    method: Mapped[str | None] = mapped_column(String(8), nullable=True)
    method_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    parent_version_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    candidate_version_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    data_cutoff: Mapped[datetime | None] = mapped_column(nullable=True)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dataset_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    heldout: Mapped[list[Any]] = mapped_column(JSON, default=list)
    hyperparams: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The per-step training log (retrain.train.step_log): step, loss, rewards/* as TRL logged
    # them; the adapter page draws it as the round's training curves.
    train_log: Mapped[list[Any]] = mapped_column(JSON, default=list, server_default="[]")
    library_versions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class GateReport(Base):
    __tablename__ = "gate_reports"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    adapter_id: Mapped[str] = mapped_column(String(64), index=True)
    candidate_version_id: Mapped[str] = mapped_column(String(64))
    serving_version_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    golden_set_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    round_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    passed: Mapped[bool] = mapped_column(Boolean)
    reasons: Mapped[list[Any]] = mapped_column(JSON, default=list)
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    summary: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RouteEvent(Base):
    """A promotion or rollback: who, when, from which version to which, and why."""

    __tablename__ = "route_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    adapter_id: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(16))  # promote | rollback | initial
    from_version_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    to_version_id: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEvent(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_created", "created_at"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str] = mapped_column(String(300), default="")
    tenant_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    remote_addr: Mapped[str | None] = mapped_column(String(100), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Erasure(Base):
    """An end user's erasure (``feedback forget``): rows of theirs made before ``erased_at``
    that reach the database later (still queued in a gateway, or spooled) are dropped, not
    written, so an erasure cannot be undone by a replay."""

    __tablename__ = "erasures"
    __table_args__ = (Index("ix_erasures_tenant_user", "tenant_id", "end_user"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    tenant_id: Mapped[str] = mapped_column(String(64))
    end_user: Mapped[str] = mapped_column(String(256))
    erased_at: Mapped[datetime] = mapped_column(default=utcnow)
