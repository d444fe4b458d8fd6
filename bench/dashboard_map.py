"""What a live-map frame costs the browser: 2,000 vehicles on a 20x20 grid (the issue's "2,000
vehicles at 2 Hz stay smooth"), in Debian's chromium (headless, software rendering). Per frame:
parsing it (JSON.parse of what the stream sends) and painting the whole map, against painting
the map without vehicles in the same run. Smooth at 2 Hz needs a frame well under a 60 Hz
display's 16 ms, since pan and zoom repaint too.

    python -m bench.dashboard_map
"""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
from pathlib import Path

from aiohttp import web

from supervisor import dashboard
from tests.harness.browser import browser_context

VEHICLES = 2000
FRAMES = 60

# The page-side half: a synthetic 20x20 grid and frames, drawn and timed in the page.
_MEASURE = (Path(__file__).parent / "dashboard_map.js").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main() -> None:
    board = dashboard.StaticFiles(dashboard.load())
    app = web.Application()
    app.router.add_get("/", board.index)
    app.router.add_get("/ui/{file:.+}", board.asset)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        with tempfile.TemporaryDirectory() as profile:
            async with browser_context(Path(profile)) as context:
                page = await context.new_page()
                await page.goto(f"http://127.0.0.1:{port}/ui/vendor/README.md")
                result = await page.evaluate(_MEASURE, [VEHICLES, FRAMES])
    finally:
        await runner.cleanup()
    result["paint_vs_empty_map"] = round(result["paint_ms"] / max(result["empty_ms"], 1e-3), 2)
    print(json.dumps({"vehicles": VEHICLES, **result}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
