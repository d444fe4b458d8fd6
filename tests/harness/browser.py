"""A real browser for the dashboard's tests: Debian's chromium, driven by Playwright, with a
fresh profile each time and nothing downloaded. A machine without the browser fails the tests
that need it (never skips them): `.ci/run` installs it."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.async_api import Page

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


# axe-core's WCAG 2.0/2.1 level A and AA rules (not its "best practice" or AAA ones).
A11Y_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
# What a test fails on: the violations that block or badly hinder someone (a missing name, text
# too faint to read); "moderate" and "minor" ones are left to a person's judgement.
A11Y_BLOCKING = ("serious", "critical")


async def assert_accessible(page: Page, what: str) -> None:
    """axe-core checks the page as it is shown now (its current viewport and state): no serious
    or critical WCAG 2.1 A/AA violation. The page's CSP does not stop it (Playwright's evaluate
    runs outside it), and an axe that checked nothing fails too."""
    from axe_playwright_python.async_playwright import Axe

    options = {
        "runOnly": {"type": "tag", "values": A11Y_TAGS},
        "resultTypes": ["violations", "incomplete"],
    }
    results = (await Axe().run(page, options=options)).response
    size = page.viewport_size or {}
    where = f"{what} at {size.get('width')}x{size.get('height')}"
    assert results["passes"], f"{where}: axe-core checked nothing"
    # Every violation, the minor ones too, is left beside the screenshots for a person to read.
    slug = re.sub(r"[^a-z0-9]+", "-", f"{what} {size.get('width')}".lower()).strip("-")
    report = ARTIFACTS / "axe" / f"{slug}.txt"
    report.parent.mkdir(parents=True, exist_ok=True)
    text = (
        f"{where}: {len(results['passes'])} rules passed, {len(results['violations'])} violated, "
        f"{len(results['incomplete'])} for a person to check\n"
        + "".join(f"{_violation_text(v)}\n" for v in results["violations"])
        + "".join(f"to check: {_violation_text(v)}\n" for v in results["incomplete"])
    )
    await asyncio.to_thread(report.write_text, text)
    blocking = [v for v in results["violations"] if v["impact"] in A11Y_BLOCKING]
    assert not blocking, f"{where}: accessibility violations\n" + "\n".join(
        _violation_text(v) for v in blocking
    )


def _violation_text(violation: dict[str, Any]) -> str:
    lines = [f"- {violation['id']} ({violation['impact']}): {violation['help']}"]
    lines.append(f"  {violation['helpUrl']}")
    for node in violation["nodes"][:10]:
        summary = node.get("failureSummary", "").replace("\n", "; ")
        lines.append(f"  * {', '.join(map(str, node['target']))}: {node['html'][:160]}")
        lines.append(f"    {summary}")
    if len(violation["nodes"]) > 10:
        lines.append(f"  ... and {len(violation['nodes']) - 10} more")
    return "\n".join(lines)
