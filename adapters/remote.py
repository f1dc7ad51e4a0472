"""Promote or roll back through a running gateway's admin API (the CLI, the retrain worker).

A running gateway owns the engine, so the swap is asked of it: it verifies and probes the
version on its own engine before the route flips, with no failed request.
"""

from __future__ import annotations

from typing import Any

import httpx

from gateway.core.admin_tokens import local_admin_token
from gateway.core.config import Settings
from gateway.core.errors import AuthenticationError, FlywheelError, ServiceUnavailable


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
