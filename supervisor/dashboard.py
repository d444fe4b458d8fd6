"""The web dashboard's files (supervisor/web/): HTML, ES modules, CSS and vendored libraries,
served as they are (no build step). `StaticFiles` serves /docs's vendored page too (docs.py).

They are public (route role None, like /healthz): they hold no data, only the code that asks
for it, and every data call the code makes carries the token the user typed into its login
form. Read once at start into memory, by a fixed list of names: a request can name only a file
that is there, never a path. Every answer carries a strict Content-Security-Policy (scripts,
styles and connections to this origin only; no inline script, no framing), so an injected
string can never run as code."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from actors.errors import SupervisorError

ROOT = Path(__file__).parent / "web"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Revalidated each time (cheap: an ETag), so an upgraded daemon never serves old code.
    "Cache-Control": "no-cache",
}


class AssetNotFound(SupervisorError):
    status = 404


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load(root: Path = ROOT, names: Iterable[str] | None = None) -> dict[str, Asset]:
    """Every servable file under `root` (or only those `names`), by its path relative to it."""
    assets = {}
    paths = sorted(root.rglob("*")) if names is None else [root / name for name in names]
    for path in paths:
        kind = _TYPES.get(path.suffix)
        if kind is None or not path.is_file():
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[path.relative_to(root).as_posix()] = Asset(body, kind, etag)
    return assets


class StaticFiles:
    """Files held in memory, each answered with `headers` and revalidated by its ETag."""

    def __init__(
        self,
        assets: dict[str, Asset],
        headers: Mapping[str, str] = HEADERS,
        what: str = "dashboard",
    ) -> None:
        self._assets = assets
        self._headers = dict(headers)
        self._what = what

    def answer(self, request: web.Request, name: str) -> web.Response:
        asset = self._assets.get(name)
        if asset is None:
            raise AssetNotFound(f"no {self._what} file {name[:200]!r}")
        headers = {**self._headers, "ETag": asset.etag}
        if request.headers.get("If-None-Match") == asset.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=asset.body,
            content_type=None,
            headers={**headers, "Content-Type": asset.content_type},
        )

    async def index(self, request: web.Request) -> web.Response:
        return self.answer(request, "index.html")

    async def asset(self, request: web.Request) -> web.Response:
        return self.answer(request, request.match_info["file"])
