"""``/console``: the web console's static files (the page talks to the admin API itself).

Nothing here touches data: the page asks for an admin token and sends it to ``/admin/*``, so
the console has exactly the admin API's powers and audit trail.  The files are served with a
strict Content-Security-Policy (scripts and styles from this origin only, no inline code, no
framing), since the page holds an admin token.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.responses import Response

from gateway.core.errors import NotFound

STATIC = Path(__file__).parent / "static"
FILES = {
    "console.js": "text/javascript",
    "console-adapter.js": "text/javascript",
    "console-api.js": "text/javascript",
    "console-charts.js": "text/javascript",
    "console-diff.js": "text/javascript",
    "console-names.js": "text/javascript",
    "console-playground.js": "text/javascript",
    "console-tenant.js": "text/javascript",
    "console-ui.js": "text/javascript",
    "console.css": "text/css",
    # uPlot 1.6.32 (MIT, https://github.com/leeoniya/uPlot), vendored unchanged: the charts.
    "uplot.esm.js": "text/javascript",
    "uplot.min.css": "text/css",
    "uplot.LICENSE": "text/plain; charset=utf-8",
}
HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _file(name: str, media_type: str) -> Response:
    return Response((STATIC / name).read_bytes(), media_type=media_type, headers=HEADERS)


@router.get("/console")
async def page() -> Response:
    return _file("console.html", "text/html; charset=utf-8")


@router.get("/console/{name}")
async def asset(name: str) -> Response:
    media_type = FILES.get(name)
    if media_type is None:  # a fixed list: no path from the URL reaches the filesystem
        raise NotFound(f"No console file {name!r}.")
    return _file(name, media_type)
