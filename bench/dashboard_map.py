"""What the live map costs the browser: 2,000 vehicles on a 20x20 grid (the issue's "2,000
vehicles at 2 Hz stay smooth"), in Debian's chromium (headless, software rendering).

- A frame as it comes: parsing it (JSON.parse of what the stream sends) and painting it (its
  lights' layer too, when they changed); then a paint mid-glide, as each display frame between
  two stream frames draws the vehicles on their way. Both against the same run's baseline: the
  map without vehicles painted whole (net and lights), as a pan or a zoom paints it.
- Five seconds of the real thing: frames at 2 Hz, the map gliding at the display's rate; the
  paints a second it kept up, and the gaps between paints (a display frame is 16.7 ms).

    python -m bench.dashboard_map
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from tests.harness.browser import browser_context, dashboard_files

VEHICLES = 2000
FRAMES = 60

# The page-side half: a synthetic 20x20 grid and frames, drawn and timed in the page.
_MEASURE = (Path(__file__).parent / "dashboard_map.js").read_text()


async def main() -> None:
    async with dashboard_files() as url:
        with tempfile.TemporaryDirectory() as profile:
            async with browser_context(Path(profile)) as context:
                page = await context.new_page()
                await page.goto(f"{url}/ui/vendor/README.md")
                result = await page.evaluate(_MEASURE, [VEHICLES, FRAMES])
    for key in ("frame_paint_ms", "glide_paint_ms"):
        ratio = result[key] / max(result["empty_ms"], 1e-3)
        result[key.replace("_ms", "_vs_empty_map")] = round(ratio, 2)
    print(json.dumps({"vehicles": VEHICLES, **result}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
