// One session: its live charts (the resumable sample stream), controls, the live map with
// commands, its status history, SUMO's log lines, its summary once ended, CSV downloads.
import { api, download, stream } from "../api.js";
import { LiveChart } from "../charts.js";
import { LiveMap } from "../map.js";
import { badge, clear, every, errorText, FINAL, fmt, h, toast, when } from "../ui.js";

const METRICS = ["vehicles", "mean_speed", "halting", "waiting_time", "departed", "arrived", "teleports"];
const EXPORTS = ["samples", "trajectories", "trips", "edges"];

export function render(root, [id]) {
  const base = `/v1/sessions/${encodeURIComponent(id)}`;
  const cleanups = [];
  let session = null;
  const head = h("div", { class: "card", id: "session-head" });
  const controls = h("div", { class: "actions", id: "controls" });
  const chartBox = h("div", { class: "charts", id: "charts" });
  const mapCard = h("section", { class: "card", id: "map-card", "aria-labelledby": "map-h", hidden: true });
  const eventsBox = h("div", { class: "table-wrap" });
  // A region (a pre may not carry a name): focusable, so the keyboard can scroll it.
  const logsBox = h("pre", { class: "logs", id: "logs", tabindex: 0, role: "region", "aria-label": "SUMO log lines" });
  const summaryBox = h("section", { class: "card", id: "summary", hidden: true });
  const downloads = h("div", { class: "actions" }, EXPORTS.map((kind) =>
    h("button", { type: "button", class: "quiet", onclick: () => download(`${base}/${kind}.csv`, `${id}-${kind}.csv`).catch((e) => toast(errorText(e), true)) }, `${kind}.csv`)));

  root.append(
    h("p", {}, h("a", { href: "#/sessions" }, "← all sessions")),
    head,
    h("section", { class: "card", "aria-labelledby": "ctl-h" }, h("h3", { id: "ctl-h" }, "Control"), controls),
    h("section", { "aria-labelledby": "charts-h" }, h("h3", { id: "charts-h" }, "Samples"), chartBox),
    mapCard,
    summaryBox,
    h("div", { class: "halves" },
      h("section", { class: "card", "aria-labelledby": "logs-h" }, h("h3", { id: "logs-h" }, "SUMO and session log"), logsBox),
      h("section", { class: "card", "aria-labelledby": "ev-h" }, h("h3", { id: "ev-h" }, "Status history"), eventsBox)),
    h("section", { class: "card", "aria-labelledby": "dl-h" }, h("h3", { id: "dl-h" }, "Downloads (CSV)"), downloads),
  );

  const charts = new Map();
  const chartFor = (metric) => {
    if (!charts.has(metric)) charts.set(metric, new LiveChart(chartBox, metric));
    return charts.get(metric);
  };
  METRICS.forEach(chartFor);
  cleanups.push(() => charts.forEach((c) => c.destroy()));

  // The attempt the charts show: a rerun starts again from sim time 0, so its first sample (its
  // id is `<sim time>@<attempt>`) or its status clears them.
  let shown = null;
  const inAttempt = (attempt) => {
    if (attempt === undefined || attempt === null || Number.isNaN(attempt)) return;
    if (shown !== null && attempt !== shown) charts.forEach((c) => c.reset());
    shown = attempt;
  };
  let ended = false;
  const samples = stream(`${base}/stream`, {
    onEvent: (e) => {
      const data = JSON.parse(e.data);
      if (e.type === "sample") {
        if (e.id?.includes("@")) inAttempt(Number(e.id.split("@")[1]));
        for (const [k, v] of Object.entries(data)) if (k !== "sim_time" && typeof v === "number") chartFor(k).push(data.sim_time, v);
        if (session) { session.sim_time = data.sim_time; session.vehicles = data.vehicles; }
      } else if (e.type === "status") {
        inAttempt(data.attempt);
        session = data;
        showHead();
        loadEvents();
        if (FINAL.has(data.status)) { ended = true; onEnded(); }
        else if (data.status === "running") startMap();
      }
    },
    onError: (err) => toast(`stream: ${errorText(err)}`, true),
    done: () => ended,
  });
  cleanups.push(() => samples.close());
  // Sim time and vehicles in the header between status changes.
  cleanups.push(every(1000, () => { if (session) showHead(); }));
  cleanups.push(every(3000, loadLogs));

  function showHead() {
    const s = session;
    clear(head).append(
      h("h2", {}, "Session ", h("span", { class: "mono" }, s.id), " ", badge(s.status)),
      h("dl", { class: "values" },
        h("dt", {}, "Template"), h("dd", {}, `${s.template} v${s.version}`),
        h("dt", {}, "Label"), h("dd", {}, s.label || "–"),
        h("dt", {}, "Progress"), h("dd", {}, h("progress", { max: 1, value: s.status === "completed" ? 1 : (s.end ? Math.min(1, (s.sim_time || 0) / s.end) : s.progress) }),
          ` sim time ${fmt(s.sim_time, 0)} s of ${fmt(s.end, 0)}`),
        h("dt", {}, "Vehicles"), h("dd", { id: "head-vehicles" }, fmt(s.vehicles)),
        h("dt", {}, "Mode"), h("dd", {}, s.request?.mode || "continuous"),
        h("dt", {}, "Created"), h("dd", {}, when(s.created_at)),
        h("dt", {}, "Node"), h("dd", { class: "mono" }, s.node || "–"),
        s.cause && [h("dt", {}, "Cause"), h("dd", {}, s.cause)],
        s.error && [h("dt", {}, "Error"), h("dd", { class: "error" }, s.error)]),
    );
    showControls();
  }

  let controlsFor = null;
  function showControls() {
    const key = `${session.status}:${session.paused}`;
    if (controlsFor === key) return;
    controlsFor = key;
    const running = session.status === "running";
    const stepped = session.request?.mode === "stepped";
    const act = (label, path, json) => h("button", { type: "button", class: label === "Stop" ? "danger" : "", disabled: !running && label !== "Stop",
      onclick: async () => {
        try {
          const r = await api(`${base}/${path}`, { method: "POST", json });
          toast(`${label}: done`);
          controls.dataset.last = label.toLowerCase();
          if (typeof r.paused === "boolean") { session.paused = r.paused; showControls(); }
        } catch (err) { toast(`${label} failed: ${errorText(err)}`, true); }
      } }, label);
    const stepInput = h("input", { id: "step-seconds", type: "number", min: 0.1, step: "any", value: 10, style: undefined, "aria-label": "seconds to step" });
    clear(controls);
    if (FINAL.has(session.status)) {
      controls.append(h("button", { type: "button", class: "danger", onclick: async () => {
        if (!confirm(`Delete session ${id} and all its rows?`)) return;
        try { await api(base, { method: "DELETE" }); location.hash = "#/sessions"; } catch (err) { toast(errorText(err), true); }
      } }, "Delete"));
      return;
    }
    // Pause or Resume, as the session is; both when this node does not run it (paused null).
    controls.dataset.paused = String(session.paused);
    if (session.paused !== true) controls.append(act("Pause", "pause"));
    if (session.paused !== false) controls.append(act("Resume", "resume"));
    controls.append(act("Stop", "stop"));
    if (session.paused) controls.append(h("span", { class: "muted" }, " paused"));
    if (stepped) {
      const stepOut = h("span", { id: "step-result", "aria-live": "polite" });
      controls.append(h("span", {}, " "), stepInput, h("button", { type: "button", id: "step", disabled: !running, onclick: async () => {
        try {
          const r = await api(`${base}/step`, { method: "POST", json: { seconds: Number(stepInput.value) } });
          stepOut.textContent = ` at ${fmt(r.sample.sim_time, 1)} s`;
          stepOut.dataset.simTime = String(r.sample.sim_time);
          toast(`stepped to ${r.sample.sim_time}`);
        } catch (err) { toast(`step failed: ${errorText(err)}`, true); }
      } }, "Step"), stepOut);
    }
  }

  async function loadEvents() {
    try {
      const { events } = await api(`${base}/events`);
      clear(eventsBox).append(h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "When"), h("th", {}, "Status"), h("th", {}, "Why"))),
        h("tbody", {}, events.map((e) => h("tr", {}, h("td", {}, when(e.at || e.created_at || e.time)), h("td", {}, badge(e.status || "?")), h("td", { class: "wrap" }, e.reason || "–"))))));
    } catch (err) { eventsBox.textContent = errorText(err); }
  }

  async function loadLogs() {
    if (ended && logsBox.dataset.loaded) return;
    try {
      const { logs } = await api(`${base}/logs`);
      logsBox.textContent = logs.map((l) => typeof l === "string" ? l : `${l.timestamp || ""} ${l.level || ""} ${l.event || ""} ${Object.entries(l).filter(([k]) => !["timestamp", "level", "event", "session_id"].includes(k)).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ")}`).join("\n") || "(nothing logged yet)";
      if (ended) logsBox.dataset.loaded = "1";
    } catch (err) { logsBox.textContent = errorText(err); }
  }

  async function onEnded() {
    mapView?.destroy();
    mapCard.hidden = true;
    loadLogs();
    try {
      const s = await api(`${base}/summary`);
      const skip = new Set(["id", "status", "label", "source", "statistics"]);
      const rows = Object.entries(s).filter(([k, v]) => !skip.has(k) && v !== null && typeof v !== "object");
      clear(summaryBox).append(h("h3", {}, "Summary"), h("p", { class: "hint" }, `source: ${s.source}`),
        h("div", { class: "table-wrap" }, h("table", { id: "summary-table" }, h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k.replace(/_/g, " ")), h("td", { class: "num" }, fmt(v, 2))))))));
      summaryBox.hidden = false;
    } catch (err) { toast(`summary: ${errorText(err)}`, true); }
  }

  let mapView = null;
  async function startMap() {
    // Running again after a rescue (its old run's map ended): the new run is watched.
    if (mapView) { if (mapView.ended) mapView.watch(id); return; }
    mapCard.hidden = false;
    // An application to a screen reader: its keys go to the map, not to reading the page.
    const canvas = h("canvas", { class: "map", id: "map", tabindex: 0, role: "application", "aria-roledescription": "map",
      "aria-label": "Live map. Arrow keys pan, plus and minus zoom, 0 fits, Enter picks what is at the centre, Escape clears." });
    const status = h("p", { class: "hint", id: "map-status", "aria-live": "off" }, "loading the network…");
    const panel = h("div", { id: "map-panel" }, h("p", { class: "hint" }, "Click a vehicle, a light or an edge to see its values."));
    const lightPick = h("select", { id: "light-pick", "aria-label": "traffic light", onchange: (e) => e.target.value && mapView.focusOn({ kind: "light", id: e.target.value }) }, h("option", { value: "" }, "pick a light…"));
    const edgePick = h("input", { id: "edge-pick", list: "edge-list", placeholder: "edge id", "aria-label": "edge id",
      onchange: (e) => e.target.value && mapView.focusOn({ kind: "edge", id: e.target.value.trim() }) });
    const edgeList = h("datalist", { id: "edge-list" });
    clear(mapCard).append(
      h("h3", { id: "map-h" }, "Live map"),
      h("div", { class: "split" },
        h("div", { class: "map-wrap" }, canvas,
          // Each swatch has the shape drawn on the map (vehicles are arrows, lights rings),
          // so a halted vehicle and a red light differ in more than colour.
          h("div", { class: "map-legend", id: "map-legend" },
            h("span", {}, h("span", { class: "swatch vehicle sw-moving" }), "moving vehicle"), h("span", {}, h("span", { class: "swatch vehicle sw-halted" }), "halted vehicle"),
            h("span", {}, h("span", { class: "swatch light sw-green" }), "green light"), h("span", {}, h("span", { class: "swatch light sw-yellow" }), "yellow light"),
            h("span", {}, h("span", { class: "swatch light sw-red" }), "red light"), h("span", {}, h("span", { class: "swatch sw-closed" }), "closed edge"),
            // For a touch screen (no wheel, no keys): zoom about the centre.
            h("button", { type: "button", class: "quiet", id: "map-zoom-in", "aria-label": "zoom in",
              onclick: () => mapView.zoom(1.5, canvas.width / 2, canvas.height / 2) }, "+"),
            h("button", { type: "button", class: "quiet", id: "map-zoom-out", "aria-label": "zoom out",
              onclick: () => mapView.zoom(1 / 1.5, canvas.width / 2, canvas.height / 2) }, "−"),
            h("button", { type: "button", class: "quiet", id: "map-fit", onclick: () => mapView.fit() }, "Fit")),
          status),
        h("div", {}, h("div", { class: "row" }, h("div", {}, lightPick), h("div", {}, edgePick, edgeList)), panel)));
    let selection = null;
    mapView = new LiveMap(canvas, {
      onStatus: (t) => { status.textContent = t; },
      onSelect: (target) => {
        // The same thing again (an edge typed, then its input left) keeps its panel and the
        // answer of the command just sent.
        if (target && selection && target.kind === selection.kind && target.id === selection.id) return;
        selection = target;
        showSelection(panel, target);
      },
      onFrame: () => { if (selection) updateSelection(panel, selection); },
    });
    cleanups.push(() => mapView?.destroy());
    try {
      await mapView.load(session.template, session.version);
    } catch (err) { status.textContent = `network: ${errorText(err)}`; return; }
    for (const t of mapView.net.tls) lightPick.append(h("option", { value: t.id }, t.id));
    for (const e of mapView.net.edges) edgeList.append(h("option", { value: e.id }));
    mapView.watch(id);
  }

  function command(commands) {
    return api(`${base}/commands`, { method: "POST", json: { commands } });
  }

  function showSelection(panel, target) {
    clear(panel);
    if (!target) { panel.append(h("p", { class: "hint" }, "Nothing selected.")); return; }
    const values = h("dl", { class: "values", id: "selection-values" });
    const out = h("p", { id: "command-result", "aria-live": "polite" });
    panel.append(h("h4", {}, `${target.kind} `, h("span", { class: "mono" }, target.id)), values);
    if (target.kind === "light") {
      const phase = h("input", { id: "phase", type: "number", min: 0, value: 0, "aria-label": "phase index" });
      panel.append(h("div", { class: "row" }, h("div", {}, h("label", { for: "phase" }, "Phase"), phase),
        h("button", { type: "button", id: "set-phase", onclick: async () => {
          try {
            const r = await command([{ type: "tls.set_phase", id: target.id, phase: Number(phase.value) },
              { type: "get", domain: "tls", id: target.id, var: "state" }]);
            const [set, state] = r.results;
            out.textContent = set.ok ? `phase set at ${r.sim_time} s; state now ${state.value}` : `refused: ${set.error}`;
            out.dataset.state = set.ok ? state.value : "";
          } catch (err) { out.textContent = errorText(err); }
        } }, "Set phase")));
      command([{ type: "get", domain: "tls", id: target.id, var: "phase" }, { type: "get", domain: "tls", id: target.id, var: "program" }])
        .then((r) => { values.dataset.phase = r.results[0].value; phase.value = (r.results[0].value + 1); appendValues(values, { phase: r.results[0].value, program: r.results[1].value }); })
        .catch(() => {});
    } else if (target.kind === "edge") {
      const closeBtn = (type, label) => h("button", { type: "button", class: type === "edge.close" ? "danger" : "", onclick: async () => {
        try {
          const r = await command([{ type, id: target.id }]);
          out.textContent = r.results[0].ok ? `${label} at ${r.sim_time} s` : `refused: ${r.results[0].error}`;
          if (r.results[0].ok) { if (type === "edge.close") mapView.closedEdges.add(target.id); else mapView.closedEdges.delete(target.id); mapView.draw(); }
        } catch (err) { out.textContent = errorText(err); }
      } }, label);
      panel.append(h("div", { class: "actions" }, closeBtn("edge.close", "Close edge"), closeBtn("edge.reopen", "Reopen edge")));
      command([{ type: "get", domain: "edge", id: target.id, var: "vehicle_count" }, { type: "get", domain: "edge", id: target.id, var: "mean_speed" }])
        .then((r) => appendValues(values, { vehicles: r.results[0].value, "mean speed": r.results[1].value }))
        .catch(() => {});
    } else if (target.kind === "vehicle") {
      // What a frame does not carry, asked once: where it drives and where it goes.
      const vars = ["road", "lane", "max_speed", "route"];
      command(vars.map((v) => ({ type: "get", domain: "vehicle", id: target.id, var: v })))
        .then((r) => {
          const got = Object.fromEntries(vars.map((v, i) => [v.replace("_", " "), r.results[i]]).filter(([, x]) => x.ok).map(([k, x]) => [k, x.value]));
          if (Array.isArray(got.route)) got.route = `${got.route.length} edges, to ${got.route.at(-1)}`;
          appendValues(values, got);
        })
        .catch(() => {});
    }
    panel.append(out);
    updateSelection(panel, target);
  }

  function appendValues(dl, obj) {
    for (const [k, v] of Object.entries(obj)) dl.append(h("dt", {}, k), h("dd", {}, fmt(v, 2)));
  }

  function updateSelection(panel, target) {
    const f = mapView?.frame;
    const values = panel.querySelector("#selection-values");
    if (!f || !values) return;
    let live = null;
    if (target.kind === "vehicle") {
      const i = mapView.index.get(target.id);
      live = i === undefined ? { state: "left the network" } : { speed: f.speed[i], angle: f.angle[i], x: f.xy[2 * i], y: f.xy[2 * i + 1] };
    } else if (target.kind === "light") {
      live = { state: f.tls[target.id] };
    }
    if (!live) return;
    let box = values.querySelector(".live");
    if (!box) { box = h("div", { class: "live" }); values.append(box); }
    box.replaceChildren(...Object.entries(live).flatMap(([k, v]) => [h("dt", {}, k), h("dd", { dataset: { key: k } }, fmt(v, 2))]));
  }

  return () => cleanups.forEach((fn) => fn());
}
