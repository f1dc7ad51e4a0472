"""Pure ASGI middleware: an ``x-request-id`` on every response, a 500 included."""

from __future__ import annotations

import logging
import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.errors import unexpected_error_response
from gateway.core import logs

log = logging.getLogger("flywheel.api")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    """Echo a sane incoming ``x-request-id`` or make one; expose it in ``scope['state']``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _SAFE_ID.match(incoming) else f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        token = logs.new_context(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Rendered here rather than by Starlette's outermost ServerErrorMiddleware, which
            # runs outside this middleware and would send the 500 without the request id.
            if started:
                raise  # a stream broke midway: nothing more can be sent
            await unexpected_error_response(exc)(scope, receive, send_with_id)
        finally:
            logs.reset(token)
