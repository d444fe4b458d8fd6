// Every session at a glance: a table fed by the session-list stream (a page, then each change)
// while shown, filters (a new stream each), the start form, and stop / pause / resume / delete
// on each row.
import { api, stream } from "../api.js";
import { fields, openapi } from "../schema_form.js";
import { badge, clear, FINAL, fmt, h, STATUSES, toast, errorText } from "../ui.js";

// Rows a page of the list may have (the session-list stream's limit is at most 1000).
const PAGE_SIZES = ["50", "200", "1000"];
const DEFAULT_SIZE = "200";

export function render(root, _args, query = new URLSearchParams()) {
  // The filters start from the URL (#/sessions?status=running&label=...) and are kept there.
  const filters = { status: "", label: "", template: "", limit: DEFAULT_SIZE };
  for (const key of Object.keys(filters)) if (query.get(key)) filters[key] = query.get(key);
  // A page size the stream takes (1 to 1000); anything else in a hand-edited URL, the default.
  if (!/^\d{1,4}$/.test(filters.limit) || Number(filters.limit) < 1 || Number(filters.limit) > 1000) filters.limit = DEFAULT_SIZE;
  const change = (key, value) => { filters[key] = value; keepInUrl(); subscribe(); };
  const tbody = h("tbody");
  const count = h("p", { class: "muted", "aria-live": "polite" });
  const templateFilter = h("select", { id: "f-template", onchange: (e) => change("template", e.target.value) },
    h("option", { value: "" }, "all templates"));
  // Older sessions than the live page holds, a page at a time (not live: they are read once).
  const older = h("button", { type: "button", id: "show-older", class: "quiet", hidden: true, onclick: showOlder }, "Show older");
  const form = startForm(() => {});

  root.append(
    h("h2", {}, "Sessions"),
    h("div", { class: "card" },
      h("div", { class: "row", role: "search" },
        h("div", {}, h("label", { for: "f-status" }, "Status"),
          h("select", { id: "f-status", onchange: (e) => change("status", e.target.value) },
            h("option", { value: "" }, "any status"), STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s)))),
        h("div", {}, h("label", { for: "f-label" }, "Label"),
          h("input", { id: "f-label", type: "search", placeholder: "exact label", value: filters.label,
            onchange: (e) => change("label", e.target.value.trim()) })),
        h("div", {}, h("label", { for: "f-template" }, "Template"), templateFilter),
        h("div", {}, h("label", { for: "f-limit" }, "Newest"),
          h("select", { id: "f-limit", onchange: (e) => change("limit", e.target.value) },
            [...new Set([...PAGE_SIZES, filters.limit])].map((n) => h("option", { value: n, selected: n === filters.limit }, `${n} sessions`)))),
      ),
      count,
      h("div", { class: "table-wrap" },
        h("table", { class: "responsive", id: "sessions-table" },
          h("thead", {}, h("tr", {},
            ["Session", "Status", "Template", "Label", "Progress", "Sim time", "Vehicles", "Node", "Actions"]
              .map((t, i) => h("th", { scope: "col", class: i === 5 || i === 6 ? "num" : "" }, t)))),
          tbody)),
      h("p", {}, older)),
    form.element,
  );

  function keepInUrl() {
    const q = listQuery();
    if (filters.limit === DEFAULT_SIZE) q.delete("limit");
    history.replaceState(null, "", `#/sessions${q.size ? `?${q}` : ""}`);
  }

  function listQuery(extra = {}) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries({ ...filters, ...extra })) if (v) q.set(k, v);
    return q;
  }

  // The page after the oldest row shown: the list's own paging (`before=`), each row once.
  async function showOlder() {
    const last = tbody.lastElementChild?.dataset.id;
    if (!last) return;
    try {
      const { sessions } = await api(`/v1/sessions?${listQuery({ before: last })}`);
      for (const s of sessions) put(s, true);
      older.hidden = sessions.length < Number(filters.limit);
    } catch (err) { toast(`older sessions: ${errorText(err)}`, true); }
  }

  const templatesSeen = new Set();
  const seeTemplate = (n) => {
    if (!templatesSeen.has(n)) { templatesSeen.add(n); templateFilter.append(h("option", { value: n }, n)); }
  };
  // The rows shown, by session id; a change replaces its own row only (focus elsewhere stays).
  let rows = new Map();
  const showCount = () => { count.textContent = `${rows.size} session${rows.size === 1 ? "" : "s"}`; };
  function put(s, readOnce = false) {
    seeTemplate(s.template);
    const tr = row(s);
    if (readOnce) tr.dataset.older = "";
    const old = rows.get(s.id);
    rows.set(s.id, tr);
    if (old) { old.replaceWith(tr); return; }
    // Newest first: ids sort by creation.
    const after = [...tbody.children].find((el) => el.dataset.id < s.id);
    tbody.insertBefore(tr, after || null);
    showCount();
  }
  function drop(id) {
    rows.get(id)?.remove();
    rows.delete(id);
    showCount();
  }

  let feed = null;
  function subscribe() {
    feed?.close();
    feed = stream(`/v1/sessions/stream?${listQuery()}`, {
      onEvent: (e) => {
        const data = JSON.parse(e.data);
        if (e.type === "page") {
          rows = new Map();
          tbody.replaceChildren();
          data.sessions.forEach((s) => put(s));
          older.hidden = data.sessions.length < Number(filters.limit);
          showCount();
          tbody.dataset.cursor = data.cursor;
        } else if (e.type === "session") put(data);
        else if (e.type === "removed") drop(data.id);
      },
      onError: (err) => toast(`sessions: ${errorText(err)}`, true),
    });
  }

  if (filters.template) seeTemplate(filters.template);
  templateFilter.value = filters.template;
  subscribe();
  form.load();
  return () => feed?.close();
}

function row(s) {
  const act = (label, path, method = "POST", cls = "quiet") =>
    h("button", { type: "button", class: cls, "aria-label": `${label} ${s.id}`,
      onclick: async () => {
        if (method === "DELETE" && !confirm(`Delete session ${s.id} and all its rows?`)) return;
        // The stream brings the row's new state.
        try { await api(path, { method }); toast(`${label}: ${s.id}`); }
        catch (err) { toast(`${label} failed: ${errorText(err)}`, true); }
      } }, label);
  const base = `/v1/sessions/${encodeURIComponent(s.id)}`;
  const running = s.status === "running";
  const ended = FINAL.has(s.status);
  // paused is null when this node does not run it: both offered then.
  return h("tr", { dataset: { id: s.id, status: s.status, paused: String(s.paused) } },
    h("td", { "data-label": "Session" }, h("a", { href: `#/session/${encodeURIComponent(s.id)}`, class: "mono" }, s.id)),
    h("td", { "data-label": "Status" }, badge(s.status), s.paused && running ? h("span", { class: "muted" }, " paused") : null),
    h("td", { "data-label": "Template" }, `${s.template} v${s.version}`),
    h("td", { "data-label": "Label" }, s.label || "–"),
    h("td", { "data-label": "Progress" }, h("progress", { max: 1, value: s.progress, "aria-label": `progress ${Math.round(s.progress * 100)}%` }),
      ` ${Math.round(s.progress * 100)}%`),
    h("td", { "data-label": "Sim time", class: "num" }, fmt(s.sim_time, 0)),
    h("td", { "data-label": "Vehicles", class: "num" }, fmt(s.vehicles)),
    h("td", { "data-label": "Node", class: "mono" }, s.node ? s.node.slice(0, 12) : "–"),
    h("td", { "data-label": "Actions" }, h("div", { class: "actions" },
      running && s.paused !== true && act("Pause", `${base}/pause`),
      running && s.paused !== false && act("Resume", `${base}/resume`),
      !ended && act("Stop", `${base}/stop`, "POST", "danger"),
      ended && act("Delete", base, "DELETE", "danger"))),
  );
}

// The request's fields as a form, built from the daemon's own schema of a session request
// (schema_form.js): every field, with this daemon's limits. The common ones are shown, the rest
// folded away; the daemon's answer to a bad request is shown as it is.
const SHOWN = ["template", "version", "end", "seed", "label", "mode", "sample_every", "sample_detail", "max_wall_s", "record"];

function startForm(onCreated) {
  const template = h("select", { name: "template" });
  const error = h("p", { class: "error", role: "alert", id: "start-error" });
  const shown = h("div", { class: "grid-form" });
  const more = h("div", { class: "grid-form" });
  const submit = h("button", { type: "submit", disabled: true }, "Start session");
  let request = null;
  const form = h("form", { id: "start-form", onsubmit: send },
    shown,
    h("details", { id: "start-more" }, h("summary", {}, "More settings"), more),
    h("p", {}, submit),
    error);

  async function send(event) {
    event.preventDefault();
    error.textContent = "";
    const body = request.read();
    try {
      const s = await api("/v1/sessions", { method: "POST", json: body });
      toast(`Started ${s.id}`);
      onCreated();
      location.hash = `#/session/${encodeURIComponent(s.id)}`;
    } catch (err) {
      error.textContent = errorText(err);
    }
  }

  async function build() {
    const doc = await openapi();
    const schema = doc.components.schemas.SessionRequest;
    request = fields("s", schema.properties, {
      template: (id, described) => {
        template.id = id;
        if (described) template.setAttribute("aria-describedby", described);
        return { element: template, read: () => template.value || undefined };
      },
    });
    // The common fields in SHOWN's order; the rest in the schema's, the SUMO options last.
    const rest = Object.keys(request.byName).filter((n) => !SHOWN.includes(n));
    shown.append(...SHOWN.filter((n) => n in request.byName).map((n) => request.byName[n]));
    more.append(...rest.sort((a, b) => (a === "sumo_options") - (b === "sumo_options")).map((n) => request.byName[n]));
    submit.disabled = false;
  }

  return {
    element: h("section", { class: "card", "aria-labelledby": "start-h" }, h("h3", { id: "start-h" }, "Start a session"), form),
    async load() {
      try {
        const [{ templates }] = await Promise.all([api("/v1/templates"), build()]);
        clear(template).append(...templates.map((t) => h("option", { value: t.name }, `${t.name} (v${t.latest_version})`)),
          h("option", { value: "" }, "none: replay_of names a session"));
        if (!templates.length) error.textContent = "No templates yet: upload one first (Templates).";
      } catch (err) { error.textContent = errorText(err); }
    },
  };
}
