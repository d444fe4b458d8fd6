// Small DOM helpers: elements are built with text, never parsed from strings, so nothing the
// daemon sends (ids, labels, SUMO's messages) can become markup.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Attributes of a box that scrolls sideways on a narrow screen (a wide table): the keyboard can
// focus it to scroll it, and a screen reader names it.
export function scrolls(label) {
  return { tabindex: 0, role: "region", "aria-label": label };
}

export function clear(el) { el.replaceChildren(); return el; }

export function toast(message, bad = false) {
  const box = document.getElementById("toast");
  const item = h("div", { class: bad ? "bad" : "" }, message);
  box.append(item);
  setTimeout(() => item.remove(), bad ? 8000 : 3500);
}

export function fmt(value, digits = 1) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") {
    if (Number.isInteger(value)) return value.toLocaleString("en");
    return value.toLocaleString("en", { maximumFractionDigits: digits });
  }
  return String(value);
}

export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString("en-GB", { dateStyle: "short", timeStyle: "medium" });
}

export const FINAL = new Set(["completed", "failed", "stopped", "timed_out"]);
export const STATUSES = ["queued", "starting", "running", "completed", "failed", "stopped", "timed_out"];

export function badge(status) {
  return h("span", { class: `badge ${status}` }, status.replace("_", " "));
}

// Okabe-Ito for lines on white, in an order that keeps neighbours apart: the first five stand
// at least 3:1 against white; its yellow (1.3:1) is left out, as a line would not be seen.
export const PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#000000", "#E69F00", "#56B4E9"];

// Runs `fn` now and every `ms` while the page is shown; returns a stop function.
export function every(ms, fn) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try { await fn(); } catch (err) { console.warn(err); }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

export function errorText(err) {
  return err && err.message ? err.message : String(err);
}
