"""The API's own description, served: /openapi.json (built once, at start) and /docs, a Swagger UI
page whose files are vendored in static/docs (see VENDORED.md there), so it works offline.

All three are open, like /healthz: a browser's navigation to /docs cannot carry a bearer token,
and the document tells nothing the README does not. They still pass the access layer's Host,
Origin and fair-share checks."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from supervisor import dashboard
from supervisor.jsonio import encode

STATIC = Path(__file__).parent / "static" / "docs"
# The only files /docs/{file} serves, by name (never a path from the request).
FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "init.js", "favicon-32x32.png")
# The page runs only the daemon's own scripts and talks only to the daemon (Swagger UI sets
# inline styles, hence 'unsafe-inline' for styles alone).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"
)

DOCUMENT = web.AppKey("openapi_document", bytes)
PAGE = web.AppKey("docs_page", dashboard.StaticFiles)


def page_files() -> dashboard.StaticFiles:
    """The page and its files, read once at start, as the dashboard's are."""
    headers = {**dashboard.HEADERS, "Content-Security-Policy": CSP}
    return dashboard.StaticFiles(
        dashboard.load(STATIC, ["index.html", *FILES]), headers, what="/docs"
    )


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[DOCUMENT], content_type="application/json")


async def page(request: web.Request) -> web.Response:
    return await request.app[PAGE].index(request)


async def asset(request: web.Request) -> web.Response:
    return await request.app[PAGE].asset(request)


def document_bytes(document: dict[str, object]) -> bytes:
    return encode(document)
