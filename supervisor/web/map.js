// The live map: the template's net drawn once into paths (lanes, junctions), then each frame
// the session streams (vehicles, light states) drawn over it on a 2D canvas. Vehicles are one
// path per colour per frame, never an element each, so 2,000 of them at 2 Hz stay smooth;
// between two frames they glide at the display's rate (not for a user who asks for reduced
// motion: then each frame is drawn as it comes).
// Pan by dragging or with the arrow keys, zoom with the wheel or +/-; click (or Enter on the
// focused map, which picks the thing at its centre) to see an object's values.
import { api, stream } from "./api.js";
import { FINAL } from "./ui.js";

const COLORS = {
  // Lanes near black, as sumo-gui draws them: every vehicle and light colour stands at least
  // 3:1 against them (WCAG's non-text contrast), and the lanes against the page.
  lane: "#222220", sidewalk: "#b9b9b2", junction: "#444441", closed: "#D55E00",
  moving: "#0072B2", halted: "#CC79A7", selected: "#000000", halo: "#ffffff",
  green: "#009E73", yellow: "#F0E442", red: "#D55E00", off: "#777777",
};
const HALTED = 0.1;
// A vehicle that moved further than this between two frames (a teleport, a vehicle that left
// and one that came under the same id) is drawn where it is now, not glided across the map.
const JUMP = 60;
const REDUCED = window.matchMedia?.("(prefers-reduced-motion: reduce)");

function lightColor(c) {
  if (c === "G" || c === "g") return "green";
  if (c === "y" || c === "Y" || c === "u") return "yellow";
  if (c === "r" || c === "R" || c === "s") return "red";
  return "off";
}

export class LiveMap {
  constructor(canvas, { onSelect, onFrame, onStatus }) {
    this.canvas = canvas;
    // Reachable from the page (and its tests) through the element it draws on.
    canvas.liveMap = this;
    this.ctx = canvas.getContext("2d");
    this.onSelect = onSelect;
    this.onFrame = onFrame;
    this.onStatus = onStatus;
    this.view = { s: 1, tx: 0, ty: 0 };
    this.frame = null;
    // Where each vehicle of `frame` was drawn when it came (NaN: nowhere), and where it is drawn
    // now; frames come `interval` ms apart, the latest at `frameAt`.
    this.from = new Float64Array(0);
    this.drawn = new Float64Array(0);
    this.interval = 500;
    this.frameAt = 0;
    this.lightsKey = "";
    this.selected = null;
    this.closedEdges = new Set();
    this.pending = false;
    this.stream = null;
    this.bindInput();
    this.observer = new ResizeObserver(() => this.resize());
    this.observer.observe(canvas);
  }

  async load(template, version) {
    this.net = await api(`/v1/templates/${encodeURIComponent(template)}/versions/${version}/network`);
    const lanes = new Path2D();
    const sidewalks = new Path2D();
    this.lanes = [];
    for (const edge of this.net.edges) {
      for (const lane of edge.lanes) {
        const p = lane.kind === "sidewalk" ? sidewalks : lanes;
        const s = lane.shape;
        if (s.length < 4) continue;
        p.moveTo(s[0], s[1]);
        for (let i = 2; i < s.length; i += 2) p.lineTo(s[i], s[i + 1]);
        this.lanes.push({ edge: edge.id, lane: lane.id, shape: s });
      }
    }
    const junctions = new Path2D();
    for (const j of this.net.junctions) {
      const s = j.shape;
      if (s.length < 6) continue;
      junctions.moveTo(s[0], s[1]);
      for (let i = 2; i < s.length; i += 2) junctions.lineTo(s[i], s[i + 1]);
      junctions.closePath();
    }
    this.paths = { lanes, sidewalks, junctions };
    this.lights = [];
    for (const t of this.net.tls) for (const link of t.links) if (link.x !== undefined) this.lights.push({ tls: t.id, ...link });
    this.fit();
  }

  // Watches until the session's SUMO is gone (`ended`: a rescued session's next run is watched
  // again by calling this again) or the session has ended; a session queued for a rerun, or
  // changing hands, is asked again.
  watch(sessionId) {
    this.stream?.close();
    this.ended = false;
    this.stream = stream(`/v1/sessions/${encodeURIComponent(sessionId)}/map`, {
      onEvent: (e) => {
        if (e.type === "end") { this.ended = true; this.onStatus?.("the session's map has ended"); return; }
        if (e.type !== "frame") return;
        this.setFrame(JSON.parse(e.data), performance.now());
        this.onStatus?.(`${this.frame.ids.length} vehicles at ${this.frame.sim_time ?? "–"} s`);
        this.canvas.dataset.vehicles = String(this.frame.ids.length);
        this.canvas.dataset.simTime = String(this.frame.sim_time);
        this.onFrame?.(this.frame);
        this.draw();
      },
      onError: (err) => {
        this.onStatus?.(`map: ${err.message}`);
        if (err.status === 409 && FINAL.has(err.body?.status)) this.ended = true;
      },
      done: () => this.ended,
    });
  }

  // A new frame: each vehicle glides from where it is drawn now to where the frame has it.
  setFrame(frame, now) {
    const before = this.frame ? this.index : new Map();
    const drawn = this.drawn;
    const n = frame.ids.length;
    const from = new Float64Array(2 * n).fill(NaN);
    let moved = false;
    for (let i = 0; i < n; i++) {
      const j = before.get(frame.ids[i]);
      if (j === undefined) continue;
      const x = drawn[2 * j], y = drawn[2 * j + 1];
      const d2 = (x - frame.xy[2 * i]) ** 2 + (y - frame.xy[2 * i + 1]) ** 2;
      if (d2 < JUMP * JUMP) { from[2 * i] = x; from[2 * i + 1] = y; moved ||= d2 > 0; }
    }
    // A paused session's frames move nothing: no glide, so no paint until something changes.
    this.gliding = moved;
    // The glide lasts a little longer than frames have come apart: a frame a little late then
    // finds the vehicles still on their way (they go on from there), not stopped and waiting.
    if (this.frameAt) this.interval = Math.min(Math.max(0.5 * this.interval + 0.5 * 1.15 * (now - this.frameAt), 100), 2000);
    this.frameAt = now;
    this.frame = frame;
    this.index = new Map(frame.ids.map((id, i) => [id, i]));
    this.from = from;
    this.drawn = Float64Array.from(frame.xy);
    this.lightsKey = JSON.stringify(frame.tls || {});
  }

  destroy() {
    this.stream?.close();
    this.observer.disconnect();
  }

  resize() {
    const r = this.canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    this.canvas.width = Math.max(1, Math.round(r.width * dpr));
    this.canvas.height = Math.max(1, Math.round(r.height * dpr));
    // A view the user has not moved follows the map's size (a narrowed window shows it whole).
    if (this.net && (!this.fitted || !this.moved)) this.fit();
    this.draw();
  }

  fit() {
    if (!this.net) return;
    const [x0, y0, x1, y1] = this.net.bounds;
    const w = this.canvas.width || 1, hgt = this.canvas.height || 1;
    const pad = 20 * (window.devicePixelRatio || 1);
    const s = Math.min((w - 2 * pad) / Math.max(x1 - x0, 1), (hgt - 2 * pad) / Math.max(y1 - y0, 1));
    this.view = { s, tx: (w - s * (x0 + x1)) / 2, ty: (hgt + s * (y0 + y1)) / 2 };
    this.fitted = this.canvas.width > 1;
    this.moved = false;
    this.draw();
  }

  // screen (device pixels) <-> world (SUMO metres, y up)
  toWorld(px, py) { const { s, tx, ty } = this.view; return [(px - tx) / s, (ty - py) / s]; }
  toScreen(x, y) { const { s, tx, ty } = this.view; return [x * s + tx, ty - y * s]; }

  draw() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.paint(); });
  }

  // `now`: the moment drawn (performance.now()'s clock), where each vehicle is on its glide.
  paint(now = performance.now()) {
    const { ctx, canvas } = this;
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!this.paths) return;
    // The net changes only with the view (or a closed edge), the lights with a frame: each is
    // drawn into a layer when it changes, and the layer copied under every paint, so a paint
    // between frames (a glide, a pan) costs only the vehicles.
    const { s, tx, ty } = this.view;
    const key = `${s} ${tx} ${ty} ${canvas.width} ${canvas.height} ${[...this.closedEdges].join(",")}`;
    if (this.netKey !== key) {
      this.netLayer = this.paintLayer(this.netLayer, (c) => this.paintNet(c, dpr));
      this.netKey = key;
      this.baseKey = null;
      canvas.dataset.closed = [...this.closedEdges].join(",");
      // The view as the page sees it (what a key, a drag or the wheel did, without pixels).
      canvas.dataset.view = `${s.toPrecision(6)} ${Math.round(tx)} ${Math.round(ty)}`;
    }
    if (this.baseKey !== this.lightsKey) {
      this.base = this.paintLayer(this.base, (c) => {
        c.drawImage(this.netLayer, 0, 0);
        c.setTransform(s, 0, 0, -s, tx, ty);
        this.paintLights(c, dpr);
      });
      this.baseKey = this.lightsKey;
    }
    ctx.drawImage(this.base, 0, 0);
    ctx.setTransform(s, 0, 0, -s, tx, ty);
    const gliding = this.paintVehicles(dpr, now);
    this.paintSelection(dpr);
    if (gliding) this.draw();
  }

  // `layer` (a canvas the size of the map's, made when missing) cleared and painted by `fn`.
  paintLayer(layer, fn) {
    layer ??= document.createElement("canvas");
    layer.width = this.canvas.width;
    layer.height = this.canvas.height;
    fn(layer.getContext("2d"));
    return layer;
  }

  paintNet(ctx, dpr) {
    const { s, tx, ty } = this.view;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, ctx.canvas.width, ctx.canvas.height);
    ctx.setTransform(s, 0, 0, -s, tx, ty);
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.fillStyle = COLORS.junction;
    ctx.fill(this.paths.junctions);
    ctx.strokeStyle = COLORS.sidewalk;
    ctx.lineWidth = Math.max(2, 1.5 * dpr / s);
    ctx.stroke(this.paths.sidewalks);
    ctx.strokeStyle = COLORS.lane;
    ctx.lineWidth = Math.max(3.0, 1.5 * dpr / s);
    ctx.stroke(this.paths.lanes);
    if (this.closedEdges.size) {
      const closed = new Path2D();
      for (const l of this.lanes) if (this.closedEdges.has(l.edge)) this.trace(closed, l.shape);
      ctx.strokeStyle = COLORS.closed;
      ctx.setLineDash([4, 3]);
      ctx.stroke(closed);
      ctx.setLineDash([]);
    }
  }

  trace(path, sh) {
    path.moveTo(sh[0], sh[1]);
    for (let i = 2; i < sh.length; i += 2) path.lineTo(sh[i], sh[i + 1]);
  }

  paintLights(ctx, dpr) {
    const states = this.frame?.tls || {};
    const r = Math.max(1.2, 3 * dpr / this.view.s);
    const paths = { green: new Path2D(), yellow: new Path2D(), red: new Path2D(), off: new Path2D() };
    for (const l of this.lights) {
      const state = states[l.tls];
      const c = state ? lightColor(state[l.index]) : "off";
      paths[c].moveTo(l.x + r, l.y);
      paths[c].arc(l.x, l.y, r, 0, 2 * Math.PI);
    }
    ctx.lineWidth = r * 0.35;
    ctx.strokeStyle = "#222";
    for (const [c, p] of Object.entries(paths)) { ctx.fillStyle = COLORS[c]; ctx.fill(p); ctx.stroke(p); }
  }

  // At least a few pixels long when zoomed out, a car's size when zoomed in (world units).
  vehicleLength(dpr) { return Math.max(5, 7 * dpr / this.view.s); }

  // Draws the vehicles where they are at this moment of their glide; whether they still glide.
  paintVehicles(dpr, now) {
    const f = this.frame;
    if (!f) return false;
    const t = REDUCED?.matches || !this.gliding ? 1 : Math.min(1, (now - this.frameAt) / this.interval);
    const { from, drawn } = this;
    const len = this.vehicleLength(dpr), wid = len * 0.45;
    const moving = new Path2D(), halted = new Path2D();
    const { xy, angle, speed } = f;
    for (let i = 0; i < f.ids.length; i++) {
      let x = xy[2 * i], y = xy[2 * i + 1];
      if (t < 1 && !Number.isNaN(from[2 * i])) {
        x = from[2 * i] + (x - from[2 * i]) * t;
        y = from[2 * i + 1] + (y - from[2 * i + 1]) * t;
      }
      drawn[2 * i] = x;
      drawn[2 * i + 1] = y;
      // SUMO's angle: degrees clockwise from north; the position is the front bumper.
      const a = (angle[i] * Math.PI) / 180;
      const dx = Math.sin(a), dy = Math.cos(a);
      const p = speed[i] < HALTED ? halted : moving;
      const bx = x - dx * len, by = y - dy * len;
      p.moveTo(x, y);
      p.lineTo(bx + dy * wid, by - dx * wid);
      p.lineTo(bx - dy * wid, by + dx * wid);
      p.closePath();
    }
    this.ctx.fillStyle = COLORS.moving;
    this.ctx.fill(moving);
    this.ctx.fillStyle = COLORS.halted;
    this.ctx.fill(halted);
    return t < 1;
  }

  paintSelection(dpr) {
    const sel = this.selected;
    if (!sel) return;
    const { ctx } = this;
    const px = dpr / this.view.s;  // one device pixel, in world units
    const path = new Path2D();
    let width = 2.5 * px;
    const ring = (x, y) => { path.moveTo(x + 9 * px, y); path.arc(x, y, 9 * px, 0, 2 * Math.PI); };
    if (sel.kind === "vehicle" && this.index?.has(sel.id)) {
      const i = this.index.get(sel.id);
      // Around the vehicle's middle: its position is its front bumper.
      const a = (this.frame.angle[i] * Math.PI) / 180, half = this.vehicleLength(dpr) / 2;
      ring(this.drawn[2 * i] - Math.sin(a) * half, this.drawn[2 * i + 1] - Math.cos(a) * half);
    } else if (sel.kind === "light") {
      for (const l of this.lights) if (l.tls === sel.id) ring(l.x, l.y);
    } else if (sel.kind === "edge") {
      for (const l of this.lanes) if (l.edge === sel.id) this.trace(path, l.shape);
      width = Math.max(4, 4 * px);
    }
    // Black on a white halo: seen on the page and on the near-black lanes alike.
    ctx.strokeStyle = COLORS.halo;
    ctx.lineWidth = width + 3 * px;
    ctx.stroke(path);
    ctx.strokeStyle = COLORS.selected;
    ctx.lineWidth = width;
    ctx.stroke(path);
  }

  // What is under a screen point (device pixels): a vehicle, else a light, else an edge.
  pick(px, py) {
    const dpr = window.devicePixelRatio || 1;
    const [wx, wy] = this.toWorld(px, py);
    const reach = (10 * dpr) / this.view.s;
    let best = null, bestD = reach * reach;
    const f = this.frame;
    if (f) {
      for (let i = 0; i < f.ids.length; i++) {
        const d = (this.drawn[2 * i] - wx) ** 2 + (this.drawn[2 * i + 1] - wy) ** 2;
        if (d < bestD) { bestD = d; best = { kind: "vehicle", id: f.ids[i] }; }
      }
      if (best) return best;
    }
    for (const l of this.lights) {
      const d = (l.x - wx) ** 2 + (l.y - wy) ** 2;
      if (d < bestD) { bestD = d; best = { kind: "light", id: l.tls }; }
    }
    if (best) return best;
    for (const l of this.lanes) {
      const s = l.shape;
      for (let i = 0; i + 3 < s.length; i += 2) {
        const d = segDist2(wx, wy, s[i], s[i + 1], s[i + 2], s[i + 3]);
        if (d < bestD) { bestD = d; best = { kind: "edge", id: l.edge }; }
      }
    }
    return best;
  }

  select(target) {
    this.selected = target;
    this.canvas.dataset.selected = target ? `${target.kind}:${target.id}` : "";
    this.onSelect?.(target);
    this.draw();
  }

  zoom(factor, px, py) {
    const { s, tx, ty } = this.view;
    const ns = Math.min(Math.max(s * factor, 1e-4), 1e4);
    const k = ns / s;
    this.view = { s: ns, tx: px - (px - tx) * k, ty: py - (py - ty) * k };
    this.moved = true;
    this.draw();
  }

  pan(dx, dy) { this.view.tx += dx; this.view.ty += dy; this.moved = true; this.draw(); }

  bindInput() {
    const c = this.canvas;
    const dpr = () => window.devicePixelRatio || 1;
    let drag = null;
    c.addEventListener("pointerdown", (e) => {
      c.setPointerCapture(e.pointerId);
      drag = { x: e.clientX, y: e.clientY, moved: 0 };
    });
    c.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      drag.moved += Math.abs(dx) + Math.abs(dy);
      drag.x = e.clientX; drag.y = e.clientY;
      this.pan(dx * dpr(), dy * dpr());
    });
    c.addEventListener("pointerup", (e) => {
      const wasClick = drag && drag.moved < 4;
      drag = null;
      if (!wasClick) return;
      const r = c.getBoundingClientRect();
      this.select(this.pick((e.clientX - r.left) * dpr(), (e.clientY - r.top) * dpr()));
    });
    c.addEventListener("wheel", (e) => {
      e.preventDefault();
      const r = c.getBoundingClientRect();
      this.zoom(Math.exp(-e.deltaY * 0.0015), (e.clientX - r.left) * dpr(), (e.clientY - r.top) * dpr());
    }, { passive: false });
    c.addEventListener("keydown", (e) => {
      const step = 40 * dpr();
      const keys = {
        ArrowLeft: () => this.pan(step, 0), ArrowRight: () => this.pan(-step, 0),
        ArrowUp: () => this.pan(0, step), ArrowDown: () => this.pan(0, -step),
        "+": () => this.zoom(1.25, c.width / 2, c.height / 2), "=": () => this.zoom(1.25, c.width / 2, c.height / 2),
        "-": () => this.zoom(0.8, c.width / 2, c.height / 2), "0": () => this.fit(),
        Enter: () => this.select(this.pick(c.width / 2, c.height / 2)),
        Escape: () => this.select(null),
      };
      if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
    });
  }

  // Centre the view on a light or edge (keyboard users pick from a list instead of clicking).
  focusOn(target) {
    let pts = [];
    if (target.kind === "light") pts = this.lights.filter((l) => l.tls === target.id).map((l) => [l.x, l.y]);
    else if (target.kind === "edge") pts = this.lanes.filter((l) => l.edge === target.id).map((l) => [l.shape[0], l.shape[1]]);
    if (pts.length) {
      const x = pts.reduce((a, p) => a + p[0], 0) / pts.length, y = pts.reduce((a, p) => a + p[1], 0) / pts.length;
      const [sx, sy] = this.toScreen(x, y);
      this.pan(this.canvas.width / 2 - sx, this.canvas.height / 2 - sy);
    }
    this.select(target);
  }
}

function segDist2(px, py, ax, ay, bx, by) {
  const dx = bx - ax, dy = by - ay;
  const len = dx * dx + dy * dy;
  let t = len ? ((px - ax) * dx + (py - ay) * dy) / len : 0;
  t = Math.max(0, Math.min(1, t));
  return (ax + t * dx - px) ** 2 + (ay + t * dy - py) ** 2;
}
