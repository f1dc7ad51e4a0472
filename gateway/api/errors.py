"""Render every error once, in OpenAI's envelope ``{"error": {message, type, param, code}}``."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.core.db.errors import is_outage
from gateway.core.errors import (
    DatabaseUnavailable,
    FlywheelError,
    InvalidRequest,
    RetryLater,
)

log = logging.getLogger("flywheel.api")


def error_response(exc: FlywheelError) -> JSONResponse:
    headers = {}
    if isinstance(exc, RetryLater):
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after)))
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)


def unexpected_error_response(exc: BaseException | None = None) -> JSONResponse:
    """What an exception no route handled becomes: a 503 when the database is away (the
    client retries; it did nothing wrong), else the 500 for a bug, with no detail of it."""
    if exc is not None and is_outage(exc):
        # A read with nothing cached met the database refused, dropped, or its pool exhausted
        # by a stall (sqlalchemy's pool TimeoutError).
        log.warning("request failed, database unavailable: %r", exc)
        return error_response(
            DatabaseUnavailable("The database is unavailable; retry shortly.", retry_after=2)
        )
    if exc is not None:
        log.error("unhandled error", exc_info=exc)
    return error_response(FlywheelError("The server had an error processing your request."))


def validation_error(exc: ValidationError | RequestValidationError) -> InvalidRequest:
    """The first pydantic error as an OpenAI-style 400 with ``param`` set."""
    errors = exc.errors()
    if not errors:
        return InvalidRequest("Invalid request body.")
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
        loc = loc[1:]  # where FastAPI found it; OpenAI's param is the name alone
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        return InvalidRequest(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    return InvalidRequest(f"Invalid value for '{param}': {msg}.", param=param, code="invalid_value")


def install(app: FastAPI) -> None:
    @app.exception_handler(FlywheelError)
    async def _flywheel(_: Request, exc: FlywheelError) -> JSONResponse:
        if exc.status_code >= 500:
            log.warning("request failed: %s", exc.message)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = FlywheelError(str(exc.detail))
        err.status_code = exc.status_code
        err.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        err.code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(err)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return unexpected_error_response(exc)
