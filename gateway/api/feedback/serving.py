"""Logic behind /v1/feedback: who is asking (tenant key or browser token), CORS, the body.

CORS, and why it is done here rather than by a global middleware: the allowed origins are
per tenant (``Tenant.cors_origins``), and for a browser the tenant is known only from the
feedback token, which a preflight (OPTIONS) does not carry.  So:

* preflight: allowed when the Origin is in the union of every tenant's origins (cached for
  ``CORS_REFRESH_S``; ``"*"`` in any tenant's list allows every origin);
* the actual GET/POST: with a feedback token, the Origin must be in the token's tenant's own
  list, or be the gateway's own origin (below), or the request is refused with 403 before
  anything is stored.  With a tenant key the
  Origin is not enforced (the key is the credential, and keys are not for browsers); the CORS
  headers are just added when the origin is allowed.

Error responses carry the CORS headers too, so a widget can read a 401 (expired token) body.

The gateway's own origin (exactly the scheme and ``Host`` the request was made to: the console's
playground, a page this gateway served) is accepted for a feedback token without being in any
tenant's list.  The Origin check exists so that other sites' pages cannot use a token; the
gateway's origin serves only the console (static, under a CSP allowing no inline script), and a
script running there could already read a signed-in console's admin token, far more than one
completion's token.  Never a wildcard, never another port or scheme; a same-origin request sends
no preflight, so nothing else changes.  (Under DNS rebinding a hostile page's Host and Origin
match too, but it still needs the token, which works as well with no Origin at all, outside a
browser: the check only ever kept tokens from being used by other sites' pages.)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy import select
from starlette.responses import Response

from feedback.service import list_feedback, not_found, record_feedback
from feedback.tokens import is_feedback_token, verify
from gateway.api.body import read_json
from gateway.api.deps import FEEDBACK_CREDENTIAL, bearer_token, get_tenant
from gateway.api.errors import error_response, validation_error
from gateway.api.feedback.protocol import FeedbackBatch, FeedbackItem, FeedbackList, FeedbackObject
from gateway.core import metrics
from gateway.core.db.errors import DB_UNAVAILABLE
from gateway.core.db.models import Tenant
from gateway.core.db.session import Database
from gateway.core.errors import (
    AuthenticationError,
    FlywheelError,
    InvalidRequest,
    PermissionDenied,
)
from gateway.core.ratelimit import Limits
from gateway.state import AppState

log = logging.getLogger("flywheel.api.feedback")

CORS_REFRESH_S = 30.0
ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "authorization, content-type, idempotency-key"
EXPOSE_HEADERS = "retry-after"
PREFLIGHT_MAX_AGE_S = "600"


@dataclass(frozen=True)
class TenantCors:
    origins: frozenset[str]
    disabled: bool

    def allows(self, origin: str) -> bool:
        return "*" in self.origins or origin in self.origins


class CorsPolicy:
    """Every tenant's CORS origins, read from the database at most every CORS_REFRESH_S.

    On a failed refresh (database down) the last good copy stays in use, so browser feedback
    keeps working through an outage.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._tenants: dict[str, TenantCors] = {}
        self._union: frozenset[str] = frozenset()
        self._loaded_at: float | None = None

    async def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and self._loaded_at is not None and now - self._loaded_at < CORS_REFRESH_S:
            return
        try:
            async with self.db.session() as session:
                rows = (
                    await session.execute(select(Tenant.id, Tenant.cors_origins, Tenant.disabled))
                ).all()
        except DB_UNAVAILABLE as exc:
            log.warning("feedback CORS: cannot refresh tenant origins (%r); using cache", exc)
            return
        self._tenants = {
            tid: TenantCors(frozenset(str(o) for o in (origins or [])), bool(disabled))
            for tid, origins, disabled in rows
        }
        self._union = frozenset().union(*(t.origins for t in self._tenants.values()))
        self._loaded_at = now

    async def any_allows(self, origin: str) -> bool:
        await self._refresh()
        return "*" in self._union or origin in self._union

    async def tenant(self, tenant_id: str) -> TenantCors | None:
        await self._refresh()
        if tenant_id not in self._tenants:
            await self._refresh(force=True)  # a tenant created since the last refresh
        return self._tenants.get(tenant_id)


@dataclass(frozen=True)
class FeedbackAuth:
    tenant_id: str
    cors: TenantCors
    scope_completion_id: str | None  # set for a browser feedback token


def cors_policy(state: AppState) -> CorsPolicy:
    policy = state.extras.get("feedback_cors")
    if not isinstance(policy, CorsPolicy):
        policy = state.extras["feedback_cors"] = CorsPolicy(state.db)
    return policy


def cors_headers(origin: str) -> dict[str, str]:
    return {
        "access-control-allow-origin": origin,
        "access-control-expose-headers": EXPOSE_HEADERS,
        "vary": "Origin",
    }


def _count(tenant_id: str, items: Any) -> None:
    """flywheel_feedback_total by kind: edit, up, down, or comment."""
    tenant = metrics.tenant(tenant_id)
    for item in items:
        kind = "edit" if item.edited_output is not None else (item.rating or "comment")
        metrics.FEEDBACK.labels(tenant, kind).inc()


class FeedbackServing:
    def __init__(self, state: AppState, request: Request) -> None:
        self.state = state
        self.request = request
        self.origin = request.headers.get("origin")
        self.cors = cors_policy(state)

    async def preflight(self) -> Response:
        if self.origin is None or not await self.cors.any_allows(self.origin):
            return error_response(PermissionDenied("This origin may not send feedback."))
        headers = {
            **cors_headers(self.origin),
            "access-control-allow-methods": ALLOW_METHODS,
            "access-control-allow-headers": ALLOW_HEADERS,
            "access-control-max-age": PREFLIGHT_MAX_AGE_S,
        }
        return Response(status_code=204, headers=headers)

    async def post(self) -> Response:
        try:
            auth = await self._authenticate()
            # Before the body is read: a refused post (400, 404) is charged like any other.
            rpm = self.state.settings.feedback_rpm_limit
            await self.state.limiter.acquire(
                f"{auth.tenant_id}:feedback", Limits(rpm=rpm, tpm=2**31 - 1), 0
            )
            items = await self._items()
            stored = await record_feedback(
                self.state.db,
                self.state.completions,
                auth.tenant_id,
                [item.to_input() for item in items.feedback],
                scope_completion_id=auth.scope_completion_id,
                source="browser" if auth.scope_completion_id else "api",
                pending=self.state.pending,
            )
        except FlywheelError as exc:
            return await self._error(exc)
        objects = [FeedbackObject.from_stored(s) for s in stored]
        _count(auth.tenant_id, items.feedback)
        status = 202 if any(o.status == "queued" for o in objects) else 200
        body: Any = objects[0] if items.single else FeedbackList(data=objects)
        return JSONResponse(body.model_dump(), status_code=status, headers=self._ok_headers(auth))

    async def get(self, completion_id: str | None) -> Response:
        try:
            auth = await self._authenticate()
            if not completion_id:
                raise InvalidRequest(
                    "Missing required parameter: 'completion_id'.",
                    param="completion_id",
                    code="missing_required_parameter",
                )
            scope = auth.scope_completion_id
            if scope is not None and completion_id != scope:
                raise not_found(completion_id)
            stored = await list_feedback(
                self.state.db, self.state.completions, auth.tenant_id, completion_id
            )
        except FlywheelError as exc:
            return await self._error(exc)
        body = FeedbackList(data=[FeedbackObject.from_stored(s) for s in stored])
        return JSONResponse(body.model_dump(), headers=self._ok_headers(auth))

    async def _authenticate(self) -> FeedbackAuth:
        token = bearer_token(self.request, FEEDBACK_CREDENTIAL)
        settings = self.state.settings
        if not is_feedback_token(token):
            ctx = await get_tenant(self.request, self.state)
            origins = frozenset(str(o) for o in (ctx.tenant.cors_origins or []))
            return FeedbackAuth(ctx.tenant.id, TenantCors(origins, False), None)
        completion_id, tenant_id = verify(
            token, settings.feedback_token_secret.get_secret_value(), settings.feedback_token_ttl_s
        )
        tenant = await self.cors.tenant(tenant_id)
        if tenant is not None and tenant.disabled:
            raise AuthenticationError("This tenant is disabled.", code="tenant_disabled")
        cors = tenant or TenantCors(frozenset(), False)
        if self.origin is not None and not (cors.allows(self.origin) or self._same_origin()):
            raise PermissionDenied("This origin may not send feedback for this tenant.")
        self.request.state.tenant_id = tenant_id
        return FeedbackAuth(tenant_id, cors, completion_id)

    def _same_origin(self) -> bool:
        """Whether Origin is exactly this gateway's own: the scheme and Host the request came to.

        The scheme is the one uvicorn saw (X-Forwarded-Proto from a trusted proxy included), so
        behind a TLS proxy that does not forward it the console's https origin does not match
        and the tenant must list it, as before.
        """
        host = self.request.headers.get("host")
        return bool(host) and self.origin == f"{self.request.url.scheme}://{host}"

    async def _items(self) -> _Items:
        data = await read_json(self.request, self.state.settings.max_body_bytes)
        if not isinstance(data, dict):
            raise InvalidRequest("Request body must be a JSON object.")
        key = self.request.headers.get("idempotency-key")
        try:
            if "feedback" in data:
                if key is not None:
                    raise InvalidRequest(
                        "Idempotency-Key applies to a single item; give each batch item an 'id'.",
                        param="Idempotency-Key",
                    )
                return _Items(FeedbackBatch.model_validate(data), single=False)
            item = FeedbackItem.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from exc
        if key is not None:
            if item.id is not None and item.id != key:
                raise InvalidRequest("'id' and the Idempotency-Key header differ.", param="id")
            if not 0 < len(key) <= 128:
                raise InvalidRequest("Idempotency-Key must be 1 to 128 characters.")
            item.id = key
        return _Items(FeedbackBatch(feedback=[item]), single=True)

    def _ok_headers(self, auth: FeedbackAuth) -> dict[str, str]:
        if self.origin is not None and auth.cors.allows(self.origin):
            return cors_headers(self.origin)
        return {}

    async def _error(self, exc: FlywheelError) -> Response:
        if exc.status_code >= 500:
            log.warning("feedback request failed: %s", exc.message)
        response = error_response(exc)
        if self.origin is not None and await self.cors.any_allows(self.origin):
            response.headers.update(cors_headers(self.origin))
        return response


@dataclass(frozen=True)
class _Items:
    batch: FeedbackBatch
    single: bool

    @property
    def feedback(self) -> list[FeedbackItem]:
        return self.batch.feedback
