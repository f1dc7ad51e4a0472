"""Promote or roll back with no gateway running (``flywheel adapters promote --offline``).

The same Promoter runs against a short-lived embedded engine here: the version is verified and
probed before the route flips, and gateways started later read it.  With a gateway running,
the swap is asked of it through its admin API instead (adapters/remote.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from adapters.base_models import resolve_base
from adapters.promotion import Promoter
from gateway.core.audit import refused_load_recorder
from gateway.core.config import Settings
from gateway.core.db.session import Database


async def offline_swap(
    db: Database,
    settings: Settings,
    tenant: str,
    adapter: str,
    *,
    version: int | None,
    reason: str,
    actor: str,
) -> dict[str, Any]:
    # Deferred: the engine imports torch and transformers, signing imports model-signing;
    # the CLI imports this module for every command.
    from adapters.signing import adapter_verifier
    from gateway.engine.embedded import EmbeddedEngine

    base = resolve_base(settings)
    engine = EmbeddedEngine.from_settings(
        settings,
        base.path,
        base.name,
        verifier=adapter_verifier(
            settings, on_refused=refused_load_recorder(db, asyncio.get_running_loop())
        ),
    )
    await engine.start()
    try:
        promoter = Promoter(db, engine)
        if version is not None:
            result = await promoter.promote(tenant, adapter, version, actor=actor, reason=reason)
        else:
            result = await promoter.rollback(tenant, adapter, actor=actor, reason=reason)
        await promoter.wait_drained()
        return result.as_dict()
    finally:
        await engine.stop()
