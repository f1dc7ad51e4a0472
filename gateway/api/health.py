"""Liveness and readiness."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from gateway.api.deps import METRICS_TOKEN, StateDep, bearer_token
from gateway.core import metrics as m
from gateway.core.admin_tokens import check_admin_token, matches_configured

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    db_ok = await state.db.ping()
    engine_ok = state.engine.ready()
    log = state.completions
    checks = {
        "database": "ok" if db_ok else "unreachable",
        "engine": "ok" if engine_ok else "not ready",
        "completion_log": "degraded" if log.degraded else "ok",
        "completion_log_queue_depth": log.depth,
        "completion_log_spool_rows": log.spool_rows,
    }
    # Ready means the engine answers.  The database being away only degrades it: completions
    # go on from the caches and rows go to the spool (nothing is lost), and the status says so.
    ready = engine_ok
    status = (
        "ready" if ready and db_ok and not log.degraded else ("degraded" if ready else "not ready")
    )
    return JSONResponse({"status": status, "checks": checks}, status_code=200 if ready else 503)


async def metrics_reader(request: Request, state: StateDep) -> None:
    """``/metrics`` is for the operator: it names every tenant, adapter and version with their
    traffic, so it takes the metrics token (checked without the database, so scrapes keep
    working through an outage) or an admin token, and refuses tenant keys and anonymous calls."""
    token = bearer_token(request, METRICS_TOKEN)
    if matches_configured(token, state.settings.metrics_token):
        return
    async with state.db.session() as session:
        await check_admin_token(session, state.settings, token)


@router.get("/metrics", include_in_schema=False)
async def metrics(state: StateDep, _reader: Annotated[None, Depends(metrics_reader)]) -> Response:
    """Prometheus exposition text."""

    def live() -> m.LiveState:
        log = state.completions
        return m.LiveState(log.depth, log.spool_rows, state.engine.stats())

    return Response(m.render(m.LiveCollector(live)), media_type=m.CONTENT_TYPE_LATEST)
