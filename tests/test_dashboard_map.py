"""The live map's drawing, in a real browser, on the dashboard's own files (no daemon: what is
checked here runs in the page alone): between two frames a vehicle glides from where it was to
where it is; one that jumped is not glided across the map; a user who asks for reduced motion
sees each frame as it comes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.browser import browser_context, dashboard_files

pytestmark = pytest.mark.e2e

# Two frames 500 ms apart: "near" drove 50 m, "far" 500 m (a teleport), "new" appeared; then
# a frame in which nothing moved.
_DRAW = """async (reduced) => {
  const net = { bounds: [0, 0, 1000, 1000], junctions: [], tls: [],
                edges: [{ id: "e", lanes: [{ id: "e_0", shape: [0, 500, 1000, 500], width: 3.2 }] }] };
  window.fetch = async () => new Response(JSON.stringify(net), { headers: { "Content-Type": "application/json" } });
  const { LiveMap } = await import("/ui/map.js");
  const canvas = document.createElement("canvas");
  canvas.style.width = "800px"; canvas.style.height = "600px";
  document.body.append(canvas);
  const map = new LiveMap(canvas, {});
  await map.load("t", 1);
  map.resize();
  map.draw = () => {};  // paints only when the test says, at the moment it names
  const frame = (xy, ids) => ({ sim_time: 0, ids, xy, speed: ids.map(() => 10), angle: ids.map(() => 90), tls: {} });
  map.setFrame(frame([100, 500, 200, 500], ["near", "far"]), 1000);
  map.paint(1000);
  // The next frame came 500 ms later; the display paints 125 ms after it.
  map.setFrame(frame([150, 500, 700, 500, 300, 500], ["near", "far", "new"]), 1500);
  map.paint(1625);
  const drawn = Array.from(map.drawn);
  const interval = map.interval;
  // Once there, a frame that moves nothing (a paused session's) starts no glide.
  map.paint(2500);
  map.setFrame(frame([150, 500, 700, 500, 300, 500], ["near", "far", "new"]), 3000);
  return { drawn, interval, gliding: map.gliding };
}"""


@pytest.mark.parametrize("reduced", [False, True], ids=["motion", "reduced-motion"])
async def test_vehicles_glide_between_frames(tmp_path: Path, reduced: bool) -> None:
    async with dashboard_files() as url, browser_context(tmp_path / "profile") as context:
        page = await context.new_page()
        await page.emulate_media(reduced_motion="reduce" if reduced else "no-preference")
        await page.goto(f"{url}/ui/vendor/README.md")
        got = await page.evaluate(_DRAW, reduced)
    drawn = got["drawn"]
    near_x, far_x, new_x = drawn[0], drawn[2], drawn[4]
    if reduced:
        assert (near_x, far_x, new_x) == (150, 700, 300)
    else:
        # On its way from 100 to 150, 125 ms into a glide a little longer than the 500 ms
        # between the frames.
        assert 500 < got["interval"] < 600
        assert near_x == pytest.approx(100 + 50 * 125 / got["interval"])
        assert (far_x, new_x) == (700, 300)
    assert drawn[1] == drawn[3] == drawn[5] == 500
    assert got["gliding"] is False
