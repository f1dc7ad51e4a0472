"""Read and validate a JSON request body with a size limit."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from gateway.api.errors import validation_error
from gateway.core.errors import InvalidRequest, PayloadTooLarge

M = TypeVar("M", bound=BaseModel)


async def read_json(request: Request, max_bytes: int) -> object:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"Request body is larger than {max_bytes} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"Request body is larger than {max_bytes} bytes.")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise InvalidRequest("Request body is empty; send a JSON object.")
    return loads(raw)


def loads(raw: bytes) -> object:
    """Parse a JSON body, refusing what could be stored but not read back (see below)."""
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}", code="invalid_json") from exc
    except RecursionError:
        raise InvalidRequest(
            f"Request body is nested deeper than {MAX_DEPTH} levels.", code="invalid_json"
        ) from None
    check_json(data, surrogates=_ESCAPED_SURROGATE.search(raw) is not None)
    return data


# Bodies are stored (feedback metadata, request JSON) and re-read: what cannot be stored or read
# back must be refused here, not fail later as a 500 on every read of the row.
MAX_DEPTH = 64
# Only a \uD800-\uDFFF escape can put a surrogate into a parsed string (UTF-8 cannot encode
# one); pairs are joined by the parser, so a surrogate left after parsing is a lone one.
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def _no_constant(name: str) -> object:
    raise InvalidRequest(
        f"Request body is not valid JSON: {name} is not a JSON number.", code="invalid_json"
    )


def check_json(data: object, *, surrogates: bool = True) -> None:
    """Refuse nesting deeper than ``MAX_DEPTH`` and strings holding a lone UTF-16 surrogate
    (no tokenizer, database or JSON encoder downstream accepts one)."""
    stack: list[tuple[object, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: list[object] = [*value.keys(), *value.values()]
        elif isinstance(value, list):
            children = value
        else:
            if surrogates and isinstance(value, str) and _has_lone_surrogate(value):
                raise InvalidRequest(
                    "Request body holds a lone UTF-16 surrogate (an unpaired \\uD800-\\uDFFF "
                    "escape), which is not text.",
                    code="invalid_json",
                )
            continue
        if depth > MAX_DEPTH:
            raise InvalidRequest(
                f"Request body is nested deeper than {MAX_DEPTH} levels.", code="invalid_json"
            )
        stack.extend((child, depth + 1) for child in children)


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


async def parse_body(request: Request, model: type[M], max_bytes: int) -> M:
    data = await read_json(request, max_bytes)
    if not isinstance(data, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from exc


class CheckedJSONRoute(APIRoute):
    """Routes whose bodies FastAPI parses (the admin API): the body goes through ``loads``
    first, so NaN, deep nesting and lone surrogates are a 400 there too, not a 500."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            if request.method in ("POST", "PUT", "PATCH"):
                raw = await request.body()  # cached: FastAPI reads it again from here
                if raw:
                    loads(raw)
            return await handler(request)

        return route
