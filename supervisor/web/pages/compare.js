// Compare sessions: pick ended sessions, see their summaries side by side (differences against
// the first) and their samples overlaid; or a sweep's statistics per combination.
import { api } from "../api.js";
import { overlay } from "../charts.js";
import { badge, clear, errorText, fmt, h, scrolls, toast } from "../ui.js";

const METRICS = ["vehicles", "mean_speed", "halting", "waiting_time", "departed", "arrived"];
// Which way is better, for the figures that have one: +1 more is better, -1 less is better
// (a route's length has none). A difference is coloured by it, and says it in words too.
const BETTER = { arrived: 1, trips: 1, throughput_per_hour: 1, mean_speed: 1, mean_duration: -1, mean_waiting_time: -1,
  mean_time_loss: -1, p95_duration: -1, teleports: -1, collisions: -1 };
const FIGURES = ["arrived", "trips", "mean_duration", "mean_waiting_time", "mean_time_loss", "mean_speed", "mean_route_length", "throughput_per_hour", "p95_duration", "teleports", "collisions"];

export function render(root) {
  const picks = h("tbody");
  const result = h("div", { id: "compare-result" });
  const sweepOut = h("div", { id: "sweep-result" });
  const sweepPick = h("select", { id: "sweep-id", "aria-label": "sweep" }, h("option", { value: "" }, "pick a sweep…"));
  root.append(
    h("h2", {}, "Compare"),
    h("section", { class: "card", "aria-labelledby": "pick-h" }, h("h3", { id: "pick-h" }, "Sessions"),
      h("p", { class: "hint" }, "Pick two or more ended sessions; the first picked is the baseline."),
      h("div", { class: "table-wrap" }, h("table", { class: "responsive", id: "compare-pick" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, h("span", { class: "sr-only" }, "Pick")),
          ["Session", "Status", "Template", "Label"].map((t) => h("th", { scope: "col" }, t)))), picks)),
      h("p", {}, h("button", { type: "button", id: "compare-go", onclick: () => compare() }, "Compare"))),
    result,
    h("section", { class: "card", "aria-labelledby": "sweep-h" }, h("h3", { id: "sweep-h" }, "Sweeps"),
      h("div", { class: "row" }, h("div", {}, sweepPick), h("button", { type: "button", id: "sweep-go", onclick: () => sweep(sweepPick.value) }, "Show")), sweepOut),
  );
  const order = [];

  (async () => {
    try {
      const { sessions } = await api("/v1/sessions?limit=300");
      const ended = sessions.filter((s) => ["completed", "stopped", "failed", "timed_out"].includes(s.status));
      picks.replaceChildren(...ended.map((s) => {
        const box = h("input", { type: "checkbox", "aria-label": `compare ${s.id}`, value: s.id, onchange: (e) => {
          const i = order.indexOf(s.id);
          if (e.target.checked && i < 0) order.push(s.id); else if (!e.target.checked && i >= 0) order.splice(i, 1);
        } });
        return h("tr", { dataset: { id: s.id } }, h("td", { "data-label": "Pick" }, box), h("td", { "data-label": "Session", class: "mono" }, s.id), h("td", { "data-label": "Status" }, badge(s.status)), h("td", { "data-label": "Template" }, `${s.template} v${s.version}`), h("td", { "data-label": "Label" }, s.label || "–"));
      }));
      const sweeps = [...new Set(sessions.map((s) => s.sweep).filter(Boolean))];
      sweepPick.append(...sweeps.map((id) => h("option", { value: id }, id)));
    } catch (err) { toast(errorText(err), true); }
  })();

  async function compare() {
    if (order.length < 2) { toast("Pick at least two sessions", true); return; }
    clear(result);
    try {
      const c = await api(`/v1/compare?sessions=${order.map(encodeURIComponent).join(",")}`);
      const diffs = new Map(c.differences.map((d) => [d.id, d]));
      const head = h("tr", {}, h("th", {}, "Figure"), c.sessions.map((s, i) => h("th", { class: "num" }, `${i === 0 ? "baseline " : ""}${s.label || s.id.slice(-8)}`)));
      const rows = FIGURES.filter((f) => c.sessions.some((s) => s[f] !== null && s[f] !== undefined)).map((f) => h("tr", {},
        h("th", { scope: "row" }, f.replace(/_/g, " ")),
        c.sessions.map((s, i) => {
          const d = diffs.get(s.id)?.[f];
          return h("td", { class: "num" }, fmt(s[f], 2), i > 0 && d !== null && d !== undefined ? difference(f, d) : "");
        })));
      const charts = h("div", { class: "charts", id: "compare-charts" });
      result.append(h("section", { class: "card" }, h("h3", {}, "Summaries"),
        h("p", { class: "hint" }, "In brackets: the difference from the baseline, ",
          h("span", { class: "better" }, "better"), " or ", h("span", { class: "worse" }, "worse"), " by the figure's own measure."),
        h("div", { class: "table-wrap", ...scrolls("summaries compared") }, h("table", { id: "compare-table" }, h("thead", {}, head), h("tbody", {}, rows)))),
        h("section", { class: "card" }, h("h3", {}, "Samples, overlaid"), charts));
      const series = await Promise.all(c.sessions.map(async (s) => ({ s, data: (await api(`/v1/sessions/${encodeURIComponent(s.id)}/samples?limit=20000`)).samples })));
      for (const metric of METRICS) {
        overlay(charts, metric, series.map(({ s, data }) => ({ label: s.label || s.id.slice(-8), x: data.map((r) => r.sim_time), y: data.map((r) => r[metric]) })));
      }
    } catch (err) { result.append(h("p", { class: "error" }, errorText(err))); }
  }

  async function sweep(id) {
    if (!id) return;
    clear(sweepOut);
    try {
      const r = await api(`/v1/sweeps/${encodeURIComponent(id)}`);
      sweepOut.append(h("p", {}, `${r.total} runs, ${Math.round(r.progress * 100)}% done`),
        ...r.groups.map((g) => h("div", { class: "table-wrap", ...scrolls("sweep statistics") }, h("h4", {}, Object.entries(g.params).map(([k, v]) => `${k}=${v}`).join(", ") || "all runs", ` (${g.completed} completed)`),
          h("table", {}, h("thead", {}, h("tr", {}, ["Figure", "n", "mean", "std", "95% interval"].map((t, i) => h("th", { scope: "col", class: i ? "num" : "" }, t)))),
            h("tbody", {}, Object.entries(g.figures).filter(([, st]) => st.n > 0).map(([f, st]) => h("tr", {}, h("th", { scope: "row" }, f.replace(/_/g, " ")), h("td", { class: "num" }, st.n), h("td", { class: "num" }, fmt(st.mean, 2)), h("td", { class: "num" }, fmt(st.std, 2)), h("td", { class: "num" }, st.ci95 ? `${fmt(st.ci95[0], 2)} – ${fmt(st.ci95[1], 2)}` : "–"))))))));
    } catch (err) { sweepOut.append(h("p", { class: "error" }, errorText(err))); }
  }
}

// A difference from the baseline: its sign, and whether it is better or worse in colour and in
// words (for a screen reader, and for colours that look alike).
function difference(figure, d) {
  const way = Math.sign(d) * (BETTER[figure] || 0);
  const verdict = way > 0 ? "better" : way < 0 ? "worse" : "";
  return h("span", { class: verdict || "muted", title: verdict }, ` (${d > 0 ? "+" : ""}${fmt(d, 2)}`,
    verdict ? h("span", { class: "sr-only" }, `, ${verdict}`) : null, ")");
}
