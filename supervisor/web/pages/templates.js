// Templates: the list, each one's versions and files, and an upload of a scenario folder (drag
// and drop, or a folder picker), sent as the API's multipart form: the daemon checks it as it
// checks any upload and its refusal is shown as it says it.
import { api } from "../api.js";
import { clear, errorText, fmt, h, scrolls, toast, when } from "../ui.js";

export function render(root) {
  const list = h("tbody");
  const detail = h("section", { class: "card", id: "template-detail", hidden: true });
  root.append(
    h("h2", {}, "Templates"),
    h("div", { class: "card table-wrap" }, h("table", { class: "responsive", id: "templates-table" },
      h("thead", {}, h("tr", {}, ["Name", "Latest version", "Versions", "Config", "Updated"].map((t) => h("th", { scope: "col" }, t)))), list)),
    detail,
    uploader(() => load()),
  );

  async function load() {
    try {
      const { templates } = await api("/v1/templates");
      list.replaceChildren(...templates.map((t) => h("tr", { dataset: { name: t.name } },
        h("td", { "data-label": "Name" }, h("button", { type: "button", class: "quiet", onclick: () => show(t.name) }, t.name)),
        h("td", { "data-label": "Latest version" }, `v${t.latest_version}`),
        h("td", { "data-label": "Versions" }, fmt(t.versions)),
        h("td", { "data-label": "Config", class: "mono" }, t.config_path),
        h("td", { "data-label": "Updated" }, when(t.updated_at)))));
      if (!templates.length) list.append(h("tr", {}, h("td", { colspan: 5 }, "No templates yet: upload a scenario folder below.")));
    } catch (err) { toast(errorText(err), true); }
  }

  // Deleting needs an admin token: the daemon's refusal (403 naming the role) is shown as said.
  async function remove(path, what, after) {
    if (!confirm(`Delete ${what}? Sessions already run keep their data.`)) return;
    try {
      await api(path, { method: "DELETE" });
      toast(`Deleted ${what}`);
      await load();
      await after();
    } catch (err) { toast(`Delete ${what}: ${errorText(err)}`, true); }
  }

  async function show(name) {
    try {
      const t = await api(`/v1/templates/${encodeURIComponent(name)}`);
      const base = `/v1/templates/${encodeURIComponent(t.name)}`;
      const hide = async () => { clear(detail); detail.hidden = true; };
      clear(detail).append(h("h3", {}, `Template ${t.name}`),
        h("p", {}, h("button", { type: "button", class: "danger", id: "delete-template",
          onclick: () => remove(base, `template ${t.name} (every version)`, hide) }, "Delete template")),
        ...t.versions.slice().reverse().map((v) => h("details", { open: v === t.versions[t.versions.length - 1], dataset: { version: v.version } },
          h("summary", {}, `v${v.version} · ${v.config_path} · ${fmt(v.total_bytes)} bytes · ${when(v.created_at)}`),
          h("p", {}, h("button", { type: "button", class: "danger",
            onclick: () => remove(`${base}/versions/${v.version}`, `${t.name} v${v.version}`, () => (t.versions.length > 1 ? show(t.name) : hide())) },
          `Delete v${v.version}`)),
          h("div", { class: "table-wrap", ...scrolls(`files of v${v.version}`) }, h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "File"), h("th", { class: "num" }, "Size"), h("th", {}, "sha256"))),
            h("tbody", {}, v.files.map((f) => h("tr", {}, h("td", { class: "mono" }, f.path), h("td", { class: "num" }, fmt(f.size)), h("td", { class: "mono" }, f.sha256.slice(0, 16) + "…")))))))));
      detail.hidden = false;
      detail.scrollIntoView({ block: "nearest" });
    } catch (err) { toast(errorText(err), true); }
  }

  load();
}

// Files of a dropped folder with their paths inside it (the part after the folder's name).
async function readEntry(entry, prefix, out) {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    out.push({ path: prefix + entry.name, file });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
      if (!batch.length) break;
      for (const child of batch) await readEntry(child, `${prefix}${entry.name}/`, out);
    }
  }
}

// Paths relative to the folder the user picked: its own name is not part of the template.
function stripTop(files) {
  const tops = new Set(files.map((f) => f.path.split("/")[0]));
  if (tops.size === 1 && files.every((f) => f.path.includes("/"))) {
    return files.map((f) => ({ ...f, path: f.path.slice(f.path.indexOf("/") + 1) }));
  }
  return files;
}

function uploader(onUploaded) {
  let files = [];
  const name = h("input", { id: "u-name", required: true, pattern: "[a-z0-9][a-z0-9_.\\-]{0,62}", placeholder: "city" });
  const config = h("select", { id: "u-config", required: true });
  const listing = h("ul", { id: "u-files", class: "mono" });
  const error = h("p", { class: "error", role: "alert", id: "u-error" });
  const picker = h("input", { id: "u-folder", type: "file", webkitdirectory: true, multiple: true,
    onchange: () => take([...picker.files].map((f) => ({ path: f.webkitRelativePath || f.name, file: f }))) });
  const drop = h("div", { class: "drop", id: "u-drop", tabindex: 0, role: "group", "aria-label": "Drop a scenario folder here" },
    h("p", {}, "Drop a scenario folder here, or "), h("label", { for: "u-folder" }, "choose a folder"), picker);
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const out = [];
    const entries = [...e.dataTransfer.items].map((i) => i.webkitGetAsEntry?.()).filter(Boolean);
    if (entries.length) { for (const entry of entries) await readEntry(entry, "", out); }
    else for (const f of e.dataTransfer.files) out.push({ path: f.name, file: f });
    take(out);
  });

  function take(picked) {
    files = stripTop(picked);
    error.textContent = "";
    listing.replaceChildren(...files.map((f) => h("li", {}, `${f.path} (${fmt(f.file.size)} bytes)`)));
    const configs = files.filter((f) => f.path.endsWith(".sumocfg"));
    clear(config).append(...configs.map((f) => h("option", { value: f.path }, f.path)));
    if (!configs.length) error.textContent = "No .sumocfg in this folder: a template needs its config.";
    if (!name.value && configs.length) name.value = configs[0].path.split("/").pop().replace(/\.sumocfg$/, "").toLowerCase().replace(/[^a-z0-9_.-]/g, "-");
  }

  const form = h("form", { id: "upload-form", onsubmit: async (e) => {
    e.preventDefault();
    error.textContent = "";
    if (!files.length) { error.textContent = "Choose or drop a folder first."; return; }
    const body = new FormData();
    body.append("name", name.value.trim());
    body.append("config", config.value);
    for (const f of files) body.append("file", f.file, f.path);
    try {
      const r = await api("/v1/templates", { method: "POST", form: body });
      toast(`Uploaded ${r.name} v${r.version} (${r.files.length} files)`);
      form.dataset.uploaded = `${r.name}:${r.version}`;
      onUploaded();
    } catch (err) { error.textContent = errorText(err); }
  } },
    drop, listing,
    h("div", { class: "grid-form" },
      h("div", {}, h("label", { for: "u-name" }, "Template name"), name),
      h("div", {}, h("label", { for: "u-config" }, "Config"), config)),
    h("p", {}, h("button", { type: "submit" }, "Upload")), error);
  return h("section", { class: "card", "aria-labelledby": "up-h" }, h("h3", { id: "up-h" }, "Upload a scenario"), form);
}
