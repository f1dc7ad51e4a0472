"""Thin routes for /v1/feedback (logic in serving.py, shapes in protocol.py).

Auth is a tenant key or a browser feedback token (``Bearer fbt.…``), resolved inside the
handler rather than by ``TenantDep`` so that auth errors also get CORS headers.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.deps import StateDep
from gateway.api.feedback.serving import FeedbackServing

router = APIRouter(tags=["feedback"])


@router.post("/v1/feedback")
async def post_feedback(request: Request, state: StateDep) -> Response:
    """Store one feedback item, or a batch ``{"feedback": [...]}``; 202 if only spooled."""
    return await FeedbackServing(state, request).post()


@router.get("/v1/feedback")
async def get_feedback(
    request: Request, state: StateDep, completion_id: str | None = None
) -> Response:
    """The caller's feedback on one completion."""
    return await FeedbackServing(state, request).get(completion_id)


@router.options("/v1/feedback", include_in_schema=False)
async def preflight(request: Request, state: StateDep) -> Response:
    return await FeedbackServing(state, request).preflight()
