// @ts-check
/**
 * tidesync demo: projects and tasks, local-first.
 *
 * Everything on screen comes from live queries (`db.subscribe`): a write goes to
 * the local SQLite database, the query re-runs, the list re-renders, and the same
 * happens in every other window once the server fans the change out. Nothing
 * waits for the server: the first render uses local data, even offline.
 *
 * URL flags: `?big=1` large-data mode (an "All tasks" view and the seed button up
 * front), `?inspector` opens the inspector, `?db=NAME` uses another local database.
 */
import { TideSync } from "./js/tidesync.mjs";
import { $, toast, formatCount } from "./dom.mjs";
import { StatusBar } from "./statusbar.mjs";
import { Inspector } from "./inspector.mjs";
import { TaskList } from "./tasklist.mjs";
import { ProjectList, ALL } from "./projects.mjs";
import { registerServiceWorker } from "./pwa.mjs";

const params = new URLSearchParams(location.search);
const BIG = params.has("big") && params.get("big") !== "0";
const DB_NAME = params.get("db") || "tidesync-demo";
const SELECTED_KEY = `tidesync-demo:${DB_NAME}:project`;
const app = $("#app");

/** Served from the service worker's cache (a warm start) or from the network (a first visit). */
const visit = navigator.serviceWorker?.controller ? "warm start (from cache)" : "first visit (network)";
document.body.classList.toggle("big", BIG);
$("#big-link").hidden = BIG;

const swState = $("[data-testid=sw-state]");
registerServiceWorker(
  (state, detail) => {
    swState.dataset.state = state;
    swState.textContent = { "offline-ready": "✓ works offline", installing: "caching for offline…", unsupported: "", error: "offline cache failed" }[state] ?? state;
    if (detail) swState.title = `Service worker: ${detail}`;
  },
  () => toast("A new version of the demo is ready.", { timeout: 0, action: { label: "Reload", run: () => location.reload() } }),
);

/** @param {unknown} err */
function showError(err) {
  const message = err instanceof Error ? err.message : String(err);
  console.error(err);
  toast(message, { kind: "error" });
}

let db;
try {
  db = await TideSync.open({ name: DB_NAME });
} catch (err) {
  app.dataset.state = "failed";
  $("#project-title").textContent = "The local database did not open";
  $("[data-testid=task-summary]").textContent = String(/** @type {Error} */ (err)?.message ?? err);
  throw err;
}

// ---- status, inspector -----------------------------------------------------------------------
const statusBar = new StatusBar();
const inspector = new Inspector(db, { visit });
const offlineButton = /** @type {HTMLButtonElement} */ ($("#offline-toggle"));
let offline = false;

/** @param {import("./statusbar.mjs").Status} s */
function onStatus(s) {
  statusBar.render(s);
  inspector.renderStatus(s);
  app.dataset.phase = s.phase;
  app.dataset.role = s.role;
}
onStatus(db.status);
db.on("status", onStatus);

offlineButton.addEventListener("click", async () => {
  const goingOffline = !offline;
  offlineButton.disabled = true;
  try {
    await (goingOffline ? db.goOffline() : db.goOnline());
    offline = goingOffline;
    statusBar.userOffline = offline;
    onStatus(db.status);
    offlineButton.textContent = offline ? "Go online" : "Go offline";
    offlineButton.setAttribute("aria-pressed", String(offline));
    offlineButton.classList.toggle("active", offline);
    toast(offline ? "Offline: keep editing, changes wait in the local log." : "Back online: syncing.", { timeout: 2500 });
  } catch (err) {
    showError(err);
  } finally {
    offlineButton.disabled = false;
  }
});

db.on("conflict", (/** @type {any} */ change) => {
  // {id, table, operation, local, localUpdatedAt, row, deleted}: `local` is what we
  // wrote, `row` the server's winning row (`deleted` when it was deleted there).
  const table = change?.table ?? "row";
  const local = change?.local && typeof change.local === "object" ? change.local : {};
  const winner = change?.row && typeof change.row === "object" ? change.row : null;
  const label = local.title ?? local.name ?? winner?.title ?? winner?.name;
  const noun = table === "tasks" ? "task" : table === "projects" ? "project" : table;
  const what = label ? `${noun} “${label}”` : `a ${noun}`;
  const outcome = change?.deleted ? "it was deleted on another device"
    : winner && (winner.title ?? winner.name) && (winner.title ?? winner.name) !== label
      ? `it is now “${winner.title ?? winner.name}”`
      : "a newer edit from another device won";
  toast(`Your edit to ${what} lost: ${outcome}.`, { kind: "conflict", timeout: 8000 });
  inspector.schedule();
});
db.on("error", showError);

// ---- projects and tasks ------------------------------------------------------------------------
const title = $("#project-title");
const summary = $("[data-testid=task-summary]");
/** @type {import("./projects.mjs").ProjectRow[]} */
let projectRows = [];
/** @type {string|null} */
let selected = null;

const tasks = new TaskList(db, {
  onSummary: (total, done) => { summary.textContent = TaskList.summaryText(total, done); },
  onError: showError,
});

const projects = new ProjectList(db, {
  showAll: BIG,
  onSelect: (id) => select(id),
  onRows: (rows) => {
    projectRows = rows;
    tasks.setProjects(rows);
    // Keep a valid selection when the selected project was deleted (here or elsewhere).
    if (selected === null || (selected !== ALL && !rows.some((p) => p.id === selected))) {
      const remembered = localStorage.getItem(SELECTED_KEY);
      const fallback = BIG ? ALL : rows[0]?.id ?? null;
      select(remembered && (remembered === ALL ? BIG : rows.some((p) => p.id === remembered)) ? remembered : fallback);
    } else {
      renderTitle();
    }
  },
  onError: showError,
});

/** @param {string|null} id */
function select(id) {
  const changed = id !== selected;
  selected = id;
  if (id) localStorage.setItem(SELECTED_KEY, id);
  projects.select(id);
  renderTitle();
  if (changed) {
    if (id) tasks.show({ projectId: id === ALL ? null : id });
    else tasks.show({ projectId: "\u0000none" });
  }
}

function renderTitle() {
  const project = projectRows.find((p) => p.id === selected);
  title.textContent = selected === ALL ? "All tasks" : project?.name ?? (projectRows.length ? "" : "No projects yet");
  document.title = `${title.textContent || "tasks"} · tidesync`;
  $("#new-task-title").toggleAttribute("disabled", !projectRows.length && selected !== ALL);
  (/** @type {HTMLInputElement} */ ($("#new-task-title"))).placeholder = projectRows.length
    ? "Add a task and press Enter" : "Create a project first";
}

projects.start(async () => {
  // The first local result is on screen: no waiting for the server.
  await tasks.firstRender;
  app.dataset.state = "ready";
  window.dispatchEvent(new CustomEvent("tidesync-demo:ready"));
});

$("#project-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = /** @type {HTMLInputElement} */ ($("#new-project-name"));
  const name = input.value.trim();
  if (!name) return;
  const id = crypto.randomUUID();
  input.value = "";
  try {
    await db.insert("projects", { id, name });
    select(id);
  } catch (err) {
    input.value = name;
    showError(err);
  }
});

$("#task-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = /** @type {HTMLInputElement} */ ($("#new-task-title"));
  const text = input.value.trim();
  const projectId = selected === ALL || !selected ? projectRows[0]?.id : selected;
  if (!text || !projectId) return;
  input.value = "";
  try {
    await db.insert("tasks", { id: crypto.randomUUID(), project_id: projectId, title: text, done: 0 });
  } catch (err) {
    input.value = text;
    showError(err);
  }
});

// ---- large-data mode ---------------------------------------------------------------------------
$("#seed-big").addEventListener("click", async () => {
  const button = /** @type {HTMLButtonElement} */ ($("#seed-big"));
  button.disabled = true;
  try {
    const response = await fetch("api/seed?tasks=100000", { method: "POST" });
    if (response.ok) {
      toast("The server is adding 100,000 tasks; they stream in as they are committed.", { timeout: 5000 });
      if (!BIG) location.search = "?big=1";
    } else {
      toast("This server has no seed endpoint. Run: tidesync seed --db demo.db --tasks 100000, then open ?big=1", { kind: "warn", timeout: 12000 });
    }
  } catch {
    toast("The server is not reachable: seed it with `tidesync seed --db demo.db --tasks 100000`.", { kind: "warn" });
  } finally {
    button.disabled = false;
  }
});

// For tests, debugging and the curious: the open database and a few counters.
Object.assign(window, {
  tidesyncDemo: { db, big: BIG, visit, get selected() { return selected; }, formatCount },
});
