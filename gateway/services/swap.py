"""Promote or roll back from outside the gateway process (CLI, retrain worker).

A running gateway owns the engine, so the swap is asked of it through the admin API.  With no
gateway running (``offline``), the same Promoter runs against a short-lived embedded engine here:
the version is verified and probed before the route flips, and gateways started later read it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from gateway.config import Settings
from gateway.db.session import Database
from gateway.errors import AuthenticationError, FlywheelError, ServiceUnavailable
from gateway.services.admin_tokens import local_admin_token


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        err = response.json()["error"]
        message = err["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text
    exc = FlywheelError(message)
    exc.status_code = response.status_code
    raise exc


async def remote_swap(
    settings: Settings, tenant: str, adapter: str, *, version: int | None, reason: str
) -> dict[str, Any]:
    token = local_admin_token(settings)
    if token is None:
        raise AuthenticationError("no admin token: set FLYWHEEL_ADMIN_TOKEN")
    action = "promote" if version is not None else "rollback"
    body: dict[str, Any] = {"reason": reason}
    if version is not None:
        body["version"] = version
    url = f"{settings.resolved_gateway_url}/admin/adapters/{tenant}/{adapter}/{action}"
    try:
        async with httpx.AsyncClient(timeout=120) as client:
            response = await client.post(
                url, json=body, headers={"Authorization": f"Bearer {token}"}
            )
    except httpx.TransportError as exc:
        raise ServiceUnavailable(
            f"no gateway at {settings.resolved_gateway_url} ({exc}); use --offline to swap "
            "without one"
        ) from exc
    _raise_for(response)
    result: dict[str, Any] = response.json()
    return result


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
    from adapters.promotion import Promoter
    from gateway.bootstrap import adapter_verifier, resolve_base
    from gateway.engine.embedded import EmbeddedEngine
    from gateway.services.audit import refused_load_recorder

    base = resolve_base(settings)
    engine = EmbeddedEngine(
        base.path,
        base_model_name=base.name,
        device=settings.device,
        dtype=settings.dtype,
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
