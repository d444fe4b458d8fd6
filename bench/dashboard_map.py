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

_MEASURE = """
async ([vehicles, frames]) => {
  const N = 20, L = 200;
  const edges = [], junctions = [], tls = [];
  for (let i = 0; i < N; i++) for (let j = 0; j < N; j++) {
    const x = i * L, y = j * L;
    junctions.push({ id: `j${i}_${j}`, x, y, shape: [x-5,y-5, x+5,y-5, x+5,y+5, x-5,y+5] });
    tls.push({ id: `j${i}_${j}`, links: [0,1,2,3].map((k) => ({ index: k, x: x + (k-1.5)*3, y: y - 6 })) });
    if (i < N - 1) edges.push({ id: `h${i}_${j}`, lanes: [{ id: `h${i}_${j}_0`, shape: [x+5, y-1.6, x+L-5, y-1.6], width: 3.2 },
                                                          { id: `h${i}_${j}_1`, shape: [x+L-5, y+1.6, x+5, y+1.6], width: 3.2 }] });
    if (j < N - 1) edges.push({ id: `v${i}_${j}`, lanes: [{ id: `v${i}_${j}_0`, shape: [x+1.6, y+5, x+1.6, y+L-5], width: 3.2 }] });
  }
  const net = { bounds: [0, 0, (N-1)*L, (N-1)*L], edges, junctions, tls };
  window.fetch = async () => new Response(JSON.stringify(net), { headers: { "Content-Type": "application/json" } });
  const { LiveMap } = await import("/ui/map.js");
  const canvas = document.createElement("canvas");
  canvas.style.width = "1200px"; canvas.style.height = "700px";
  document.body.append(canvas);
  const map = new LiveMap(canvas, {});
  await map.load("bench", 1);
  map.resize();
  const frame = (t) => {
    const f = { sim_time: t, ids: [], xy: [], speed: [], angle: [], tls: {} };
    for (let k = 0; k < vehicles; k++) {
      f.ids.push(`veh${k}`);
      f.xy.push(Math.random() * (N-1) * L, Math.random() * (N-1) * L);
      f.speed.push(Math.random() < 0.3 ? 0 : 10 * Math.random());
      f.angle.push(360 * Math.random());
    }
    for (const t of tls) f.tls[t.id] = "GrGr";
    return JSON.stringify(f);
  };
  const texts = Array.from({ length: frames }, (_, i) => frame(i));
  const time = (fn) => { const t0 = performance.now(); fn(); return performance.now() - t0; };
  // Paint through to the pixels: reading one back waits for the canvas to finish.
  const paint = () => { map.paint(); map.ctx.getImageData(0, 0, 1, 1); };
  map.frame = null;
  for (let i = 0; i < 5; i++) paint();
  const empty = []; for (let i = 0; i < frames; i++) empty.push(time(paint));
  const parse = [], full = [];
  for (const text of texts) {
    parse.push(time(() => { map.frame = JSON.parse(text); map.index = new Map(map.frame.ids.map((id, i) => [id, i])); }));
    full.push(time(paint));
  }
  const median = (a) => a.slice().sort((x, y) => x - y)[a.length >> 1];
  return { bytes: texts[0].length, empty_ms: median(empty), parse_ms: median(parse), paint_ms: median(full),
           paint_p95_ms: full.slice().sort((x, y) => x - y)[Math.floor(full.length * 0.95)] };
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main() -> None:
    board = dashboard.Dashboard(dashboard.load())
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
