"""Everything the lifespan owns, in one object hung on ``app.state.flywheel``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.core.cache import StaleIfErrorCache
from gateway.core.config import Settings
from gateway.core.db.session import Database

if TYPE_CHECKING:
    from adapters.promotion import Promoter
    from adapters.registry import Resolved
    from feedback.log import CompletionLog
    from feedback.pending import SharedPending
    from gateway.core.db.models import Adapter, AdapterVersion, ApiKey, Tenant
    from gateway.core.ratelimit import RateLimiter
    from gateway.engine.base import Engine


@dataclass
class AppState:
    settings: Settings
    db: Database
    engine: Engine
    limiter: RateLimiter
    completions: CompletionLog
    auth_cache: StaleIfErrorCache[str, tuple[Tenant, ApiKey]]
    route_cache: StaleIfErrorCache[tuple[str, str], Resolved]
    # Each tenant's ``/v1/models`` entries, served stale while the database is away (SDKs and
    # LangChain list models first, and completions go on from the caches above meanwhile).
    models_cache: StaleIfErrorCache[str, list[tuple[Adapter, AdapterVersion]]]
    promoter: Promoter
    pending: SharedPending | None = None  # in-flight completion ids shared through Redis
    extras: dict[str, Any] = field(default_factory=dict)
