// The dashboard: a login form, then pages chosen by the URL's hash (#/sessions, #/session/ID,
// #/templates, #/compare). Each page is a module with `render(root, params)` returning a
// cleanup function that closes its streams and timers.
import { api, ApiError, getToken, onUnauthorized, setToken } from "./api.js";
import { clear, h } from "./ui.js";

const pages = {
  sessions: () => import("./pages/sessions.js"),
  session: () => import("./pages/session.js"),
  templates: () => import("./pages/templates.js"),
  compare: () => import("./pages/compare.js"),
};

let cleanup = null;
let generation = 0;
let routed = false;
const app = document.getElementById("app");
const login = document.getElementById("login");
const logout = document.getElementById("logout");

async function loggedIn() {
  try {
    await api("/v1/sessions?limit=1");
    return true;
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) return false;
    throw err;
  }
}

function showLogin(message = "") {
  cleanup?.();
  cleanup = null;
  clear(app);
  login.hidden = false;
  logout.hidden = true;
  document.getElementById("login-error").textContent = message;
  document.getElementById("token").focus();
}

async function route() {
  if (!login.hidden) return;
  // #/page/arg...?query: the query holds a page's own state (the sessions' filters), so a view
  // can be bookmarked or shared.
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const [, name = "sessions", ...rest] = path.split("/");
  const page = pages[name] ? name : "sessions";
  for (const a of document.querySelectorAll("header nav a")) {
    if (a.dataset.page === page || (page === "session" && a.dataset.page === "sessions")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  cleanup?.();
  cleanup = null;
  clear(app);
  const mine = ++generation;
  const module = await pages[page]();
  if (mine !== generation) return; // another navigation came while this page loaded
  const root = h("div", { class: `page page-${page}` });
  app.append(root);
  cleanup = module.render(root, rest.map(decodeURIComponent), new URLSearchParams(query)) || null;
  document.title = `${page} · sumo-supervisor`;
  // A link or button that led here went with the old page: the focus goes to the new page's
  // start, not back to the top of the document. (Not on the first page: Tab starts at the top.)
  const lost = !document.activeElement || document.activeElement === document.body;
  if (routed && lost) document.getElementById("main").focus({ preventScroll: true });
  routed = true;
}

document.getElementById("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  setToken(document.getElementById("token").value.trim());
  try {
    if (!(await loggedIn())) {
      setToken("");
      showLogin("That token is unknown, revoked or expired.");
      return;
    }
  } catch (err) {
    showLogin(`The daemon did not answer: ${err.message}`);
    return;
  }
  document.getElementById("token").value = "";
  login.hidden = true;
  logout.hidden = false;
  if (!location.hash) location.hash = "#/sessions"; // the hashchange routes
  else route();
});

logout.addEventListener("click", () => {
  setToken("");
  showLogin();
});

// The skip link moves the focus only: following its #main would be read as a page's route.
document.querySelector("a.skip").addEventListener("click", (event) => {
  event.preventDefault();
  document.getElementById("main").focus();
});

onUnauthorized(() => showLogin("Your token no longer works: log in again."));
window.addEventListener("hashchange", route);

(async () => {
  let ok = false;
  try { ok = await loggedIn(); } catch { ok = false; }
  if (!ok) { showLogin(getToken() ? "Your token no longer works: log in again." : ""); return; }
  logout.hidden = false;
  route();
})();
