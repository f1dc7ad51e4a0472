"""Structured JSON logs (one object per line) with the request id where there is one.

The request's fields (``request_id``, then ``tenant_id`` and ``adapter_version`` once known)
live in a context variable that :class:`ContextFilter` copies onto every record logged while
the request is handled, by any logger, so no call site has to pass them.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from gateway.core.config import Settings

_context: ContextVar[dict[str, Any] | None] = ContextVar("flywheel_log_context", default=None)
FIELDS = (
    "request_id",
    "tenant_id",
    "adapter_version",
    "completion_id",
    "status",
    "error_type",
    "duration_ms",
    "prompt_tokens",
    "completion_tokens",
    "prompt",  # only with FLYWHEEL_LOG_DEBUG_CONTENT
    "response",
)


def bind(**fields: Any) -> None:
    """Add fields to every log record of the current request (task) from here on."""
    _context.set({**(_context.get() or {}), **fields})


def new_context(**fields: Any) -> Any:
    """Start a request's log context; returns the token to hand to :func:`reset`."""
    return _context.set(dict(fields))


def reset(token: Any) -> None:
    _context.reset(token)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            record.__dict__.setdefault(key, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def make_handler(settings: Settings, stream: Any = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    if settings.log_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def configure_logging(settings: Settings) -> None:
    handler = make_handler(settings)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for noisy in ("uvicorn.access", "httpx", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
