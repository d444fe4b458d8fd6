// The page-side half of bench/dashboard_map.py: a synthetic net and frames, timed.
(async ([vehicles, frames]) => {
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
})
