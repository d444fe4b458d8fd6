// The daemon's API from the browser: the token from sessionStorage as a Bearer header on every
// call (no cookies, so no CSRF), errors as ApiError carrying the daemon's JSON message.
const KEY = "sumo-supervisor.token";

export function getToken() { return sessionStorage.getItem(KEY) || ""; }
export function setToken(token) {
  if (token) sessionStorage.setItem(KEY, token); else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

const listeners = new Set();
export function onUnauthorized(fn) { listeners.add(fn); }

function headers(extra = {}) {
  const h = { ...extra };
  const token = getToken();
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

export async function api(path, { method = "GET", json, form, signal } = {}) {
  const init = { method, headers: headers(), signal, cache: "no-store", credentials: "omit" };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  const r = await fetch(path, init);
  const type = r.headers.get("Content-Type") || "";
  const body = type.includes("json") ? await r.json().catch(() => null) : await r.text();
  if (!r.ok) {
    if (r.status === 401) listeners.forEach((fn) => fn());
    throw new ApiError(r.status, typeof body === "object" ? body : { error: String(body).slice(0, 300) });
  }
  return body;
}

// A download the browser saves: fetched with the token (a plain link could not carry it).
export async function download(path, filename) {
  const r = await fetch(path, { headers: headers(), cache: "no-store", credentials: "omit" });
  if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => ({})));
  const url = URL.createObjectURL(await r.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Server-Sent Events over fetch (EventSource cannot send an Authorization header). Resumes
// with Last-Event-ID after a cut; ends when `close()` is called, when the server ends the
// stream or refuses it and `done()` says so, or on a refusal that asking again cannot change.
export function stream(path, { onEvent, onError, done = () => false, lastEventId = null }) {
  let closed = false;
  let controller = null;
  let last = lastEventId;
  (async () => {
    let delay = 500;
    let refusals = 0;
    while (!closed) {
      controller = new AbortController();
      try {
        const h = headers({ Accept: "text/event-stream" });
        if (last !== null) h["Last-Event-ID"] = last;
        const r = await fetch(path, { headers: h, signal: controller.signal, cache: "no-store", credentials: "omit" });
        if (!r.ok) {
          const body = await r.json().catch(() => ({}));
          // Busy (a stream slot not yet freed by the stream this page just closed, a node
          // changing hands) passes: said only when it lasts.
          const busy = r.status === 429 || r.status === 503;
          if (!busy || ++refusals > 2) onError?.(new ApiError(r.status, body));
          // A request the daemon refuses as it is (a bad filter, a gone session) is not asked
          // again; a busy or conflicting answer (409, 429, 5xx) may pass.
          if ([400, 401, 403, 404, 413, 422].includes(r.status) || done()) return;
          const after = Number(r.headers.get("Retry-After"));
          await sleep(busy && after > 0 ? Math.min(after, 30) * 1000 : 2000);
          continue;
        }
        delay = 500;
        refusals = 0;
        await readEvents(r.body, (event) => {
          if (event.id !== null) last = event.id;
          onEvent(event);
        });
        if (done()) return;
      } catch (err) {
        if (closed) return;
        onError?.(err);
      }
      await sleep(delay);
      delay = Math.min(delay * 2, 5000);
    }
  })();
  return { close() { closed = true; controller?.abort(); } };
}

async function readEvents(body, emit) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { type: "message", data: [], id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    // A CR at the end may be the first half of a CRLF: keep it for the next chunk.
    const cut = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;
    const lines = buffer.slice(0, cut).split(/\r\n|\r|\n/);
    buffer = lines.pop() + buffer.slice(cut);
    for (const line of lines) {
      if (line === "") {
        if (event.data.length) emit({ type: event.type, data: event.data.join("\n"), id: event.id });
        event = { type: "message", data: [], id: null };
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let val = colon < 0 ? "" : line.slice(colon + 1);
      if (val.startsWith(" ")) val = val.slice(1);
      if (field === "event") event.type = val;
      else if (field === "data") event.data.push(val);
      else if (field === "id") event.id = val;
    }
  }
}
