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
  // Vehicles driving along x at 10 m/s (some halted), so that frames follow one another as
  // a session's do; the lights switch every other frame.
  const start = Array.from({ length: vehicles }, () => [Math.random() * (N-1) * L, Math.random() * (N-1) * L, Math.random() < 0.3]);
  const frame = (t) => {
    const f = { sim_time: t, ids: [], xy: [], speed: [], angle: [], tls: {} };
    start.forEach(([x, y, halted], k) => {
      f.ids.push(`veh${k}`);
      f.xy.push(halted ? x : (x + 5 * t) % ((N-1) * L), y);
      f.speed.push(halted ? 0 : 10);
      f.angle.push(90);
    });
    for (const l of tls) f.tls[l.id] = t % 4 < 2 ? "GrGr" : "rGrG";
    return JSON.stringify(f);
  };
  const texts = Array.from({ length: frames }, (_, i) => frame(i));
  const time = (fn) => { const t0 = performance.now(); fn(); return performance.now() - t0; };
  // Paint through to the pixels: reading one back waits for the canvas to finish.
  const paint = () => { map.paint(); map.ctx.getImageData(0, 0, 1, 1); };
  // Only what a caller starts is timed: the map's own glide waits for its next animation frame.
  map.draw = () => {};
  const median = (a) => a.slice().sort((x, y) => x - y)[a.length >> 1];
  const p95 = (a) => a.slice().sort((x, y) => x - y)[Math.floor(a.length * 0.95)];
  // The baseline: the map without vehicles painted whole (net and lights), as a pan or a zoom
  // paints it.
  const whole = () => { map.netKey = null; paint(); };
  for (let i = 0; i < 5; i++) whole();
  const empty = []; for (let i = 0; i < frames; i++) empty.push(time(whole));
  // A frame as it comes: parsed, then painted (its lights' layer too, when they changed), then
  // a paint mid-glide, as the display's next frames draw it.
  const parse = [], full = [], glide = [];
  for (const text of texts) {
    parse.push(time(() => map.setFrame(JSON.parse(text), performance.now() - 250)));
    full.push(time(paint));
    glide.push(time(paint));
  }
  // The real thing for a few seconds: frames at 2 Hz, the map gliding at the display's rate.
  delete map.draw;
  const paints = [];
  const painted = map.paint.bind(map);
  map.paint = () => { painted(); paints.push(performance.now()); };
  map.frame = null;
  map.frameAt = 0;  // the timed loop above set frames a few ms apart: forgotten
  map.interval = 500;
  let k = 0;
  const timer = setInterval(() => {
    // Counted from the second frame on: the first has nothing to glide from.
    if (k === 1) paints.length = 0;
    map.setFrame(JSON.parse(texts[k++ % frames]), performance.now());
    map.draw();
  }, 500);
  await new Promise((resolve) => setTimeout(resolve, 5500));
  clearInterval(timer);
  map.paint = painted;
  const gaps = paints.slice(1).map((t, i) => t - paints[i]);
  return { bytes: texts[0].length, empty_ms: median(empty), parse_ms: median(parse),
           frame_paint_ms: median(full), frame_paint_p95_ms: p95(full),
           glide_paint_ms: median(glide), glide_paint_p95_ms: p95(glide),
           glide_fps: Math.round(paints.length / 5), glide_gap_p95_ms: p95(gaps), glide_gap_max_ms: Math.max(...gaps) };
})
