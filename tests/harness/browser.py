"""A real browser for the dashboard's tests: Debian's chromium, driven by Playwright, with a
fresh profile each time and nothing downloaded. A machine without the browser fails the tests
that need it (never skips them): `.ci/run` installs it."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Where the tests leave their screenshots (look at them: they are the pages as a user sees them).
ARTIFACTS = Path(
    os.environ.get("DASHBOARD_ARTIFACTS", Path(__file__).parents[2] / "tmp" / "artifacts")
)


def chromium_path() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).exists():
        raise AssertionError(
            f"no chromium at {found}: install Debian's (apt-get install -y chromium); "
            "the dashboard's tests need a real browser and are never skipped"
        )
    return found


@asynccontextmanager
async def browser_context(profile: Path, *, width: int = 1280, height: int = 800) -> AsyncIterator:  # type: ignore[type-arg]
    from playwright.async_api import async_playwright, expect

    # An assertion polls until its deadline: generous, for a CI machine that is busy.
    expect.set_options(timeout=30_000)
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium_path(),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": width, "height": height},
            # Playwright's own downloads are off: nothing may come from outside.
            accept_downloads=True,
        )
        context.set_default_timeout(60_000)
        try:
            yield context
        finally:
            await context.close()


def screenshot_path(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / f"{name}.png"


@asynccontextmanager
async def dashboard_files() -> AsyncIterator[str]:
    """The dashboard's files alone, served on a loopback port (no daemon behind them): for what
    runs in the page by itself (the map's drawing, its benchmark). Yields the base URL."""
    from aiohttp import web

    from supervisor import dashboard

    board = dashboard.StaticFiles(dashboard.load())
    app = web.Application()
    app.router.add_get("/", board.index)
    app.router.add_get("/ui/{file:.+}", board.asset)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
