// @ts-check
/**
 * The inspector: the local change log (`db.localChanges()`), with each change's
 * state, attempts and LSN, plus first-visit / warm-start timings. Refreshed on
 * `change` and `status` events while it is open.
 */
import { $, el, formatMs } from "./dom.mjs";

const PAGE = 50;

/**
 * @typedef {Object} LocalChange one `local_changes` row
 * @property {number} seq
 * @property {string} id
 * @property {string} table_name
 * @property {string} operation
 * @property {string} pk
 * @property {string} data
 * @property {number} from_server
 * @property {string} state
 * @property {string|null} error
 * @property {string|null} skip_reason
 * @property {number} attempts
 * @property {number|null} lsn
 * @property {string} created_at
 */

/** @param {number|string|null|undefined} lsn */
export function formatLsn(lsn) {
  if (lsn === null || lsn === undefined || lsn === "") return "–";
  if (typeof lsn === "string") return lsn;
  return `${Math.floor(lsn / 2 ** 32).toString(16).toUpperCase()}/${(lsn % 2 ** 32).toString(16).toUpperCase()}`;
}

/**
 * What a person should read for a change's state.
 * @param {LocalChange} c
 * @returns {{label: string, kind: string, detail: string}}
 */
export function describeState(c) {
  if (c.from_server) {
    if (c.state === "applied") return { label: "from server", kind: "server", detail: "" };
    if (c.state === "skipped") return { label: "from server · skipped", kind: "skipped", detail: c.skip_reason ?? "a newer local edit won" };
    if (c.state === "retrying") return { label: "from server · retrying", kind: "pending", detail: c.error ?? "" };
    return { label: `from server · ${c.state}`, kind: "failed", detail: c.error ?? "" };
  }
  switch (c.state) {
    case "synced": return { label: "synced", kind: "synced", detail: "" };
    case "pending": return { label: "pending", kind: "pending", detail: "" };
    case "skipped": return { label: "skipped", kind: "skipped", detail: c.skip_reason ?? "lost last-write-wins" };
    case "rejected": return { label: "failed", kind: "failed", detail: c.error ?? "rejected by the server" };
    default: return { label: c.state, kind: "other", detail: c.error ?? "" };
  }
}

/** @param {LocalChange} c */
function summary(c) {
  /** @type {Record<string, any>} */
  let data = {};
  try { data = JSON.parse(c.data || "{}") ?? {}; } catch { /* not JSON */ }
  const name = data.title ?? data.name;
  let key = c.pk;
  try { key = JSON.parse(c.pk).join(", "); } catch { /* keep raw */ }
  const what = name !== undefined ? `“${name}”` : key;
  const extra = c.operation === "update" && data.done !== undefined && name === undefined ? ` done=${data.done}` : "";
  return `${c.operation} ${c.table_name} ${what}${extra}`;
}

export class Inspector {
  /** @param {import("./js/tidesync.mjs").TideSync} db @param {{visit: string}} info */
  constructor(db, info) {
    this.db = db;
    this.panel = $("#inspector");
    this.toggle = $("#inspector-toggle");
    this.rows = $("#inspector-rows");
    this.filter = /** @type {HTMLSelectElement} */ ($("#inspector-state"));
    this.more = $("#inspector-more");
    this.limit = PAGE;
    /** @type {number|undefined} */
    this.lastPending = undefined;
    /** @type {string|undefined} */
    this.lastLsn = undefined;
    this.refreshing = false;
    this.again = false;
    /** @type {ReturnType<typeof setTimeout>|undefined} */
    this.debounce = undefined;
    $("[data-testid=visit-kind]").textContent = info.visit;

    this.toggle.addEventListener("click", () => this.setOpen(this.panel.hidden));
    $("#inspector-close").addEventListener("click", () => this.setOpen(false));
    this.filter.addEventListener("change", () => { this.limit = PAGE; this.refresh(); });
    this.more.addEventListener("click", () => { this.limit += PAGE; this.refresh(); });
    db.on("change", () => this.schedule());
    if (new URLSearchParams(location.search).has("inspector")) this.setOpen(true);
  }

  /** @param {boolean} open */
  setOpen(open) {
    this.panel.hidden = !open;
    this.toggle.setAttribute("aria-pressed", String(open));
    document.body.classList.toggle("inspector-open", open);
    if (open) this.refresh();
  }

  get open() { return !this.panel.hidden; }

  schedule() {
    if (!this.open) return;
    clearTimeout(this.debounce);
    this.debounce = setTimeout(() => this.refresh(), 120);
  }

  /** @param {import("./statusbar.mjs").Status} s */
  renderStatus(s) {
    $("[data-testid=inspector-role]").textContent = s.role;
    const t = s.timings ?? {};
    $("[data-testid=timing-ready]").textContent = formatMs(t.ready);
    $("[data-testid=timing-boot]").textContent = formatMs(t.pyodideBoot ?? t.workers);
    $("[data-testid=timing-db]").textContent = formatMs(t.dbOpen);
    $("[data-testid=timing-live]").textContent = t.live !== undefined ? formatMs(t.live) : "not yet";
    // Any pending-count movement means rows changed state: refresh what is on screen.
    if (this.lastPending !== s.pending || this.lastLsn !== s.lsn) this.schedule();
    this.lastPending = s.pending;
    this.lastLsn = s.lsn;
  }

  async refresh() {
    if (!this.open) return;
    if (this.refreshing) { this.again = true; return; }
    this.refreshing = true;
    try {
      const filter = this.filter.value;
      /** @type {LocalChange[]} */
      const changes = await this.db.localChanges({ limit: this.limit + 1, offset: 0, ...(filter ? { state: filter } : {}) });
      this.more.hidden = changes.length <= this.limit;
      this.rows.replaceChildren(...changes.slice(0, this.limit).map((c) => this.row(c)));
      if (!changes.length) {
        this.rows.append(el("tr", {}, el("td", { colspan: 5, class: "muted empty-cell" }, "No changes yet: edit something.")));
      }
    } catch (err) {
      this.rows.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "error" }, String(/** @type {Error} */ (err).message))));
    } finally {
      this.refreshing = false;
      if (this.again) { this.again = false; this.refresh(); }
    }
  }

  /** @param {LocalChange} c */
  row(c) {
    const state = describeState(c);
    return el("tr", { "data-testid": "change-row", "data-state": c.state, "data-from-server": String(Boolean(c.from_server)) },
      el("td", { class: "num" }, String(c.seq)),
      el("td", { class: "change", title: `${c.id}\n${c.data}` },
        el("span", { class: c.from_server ? "dir dir-down" : "dir dir-up", title: c.from_server ? "from the server" : "made here" },
          c.from_server ? "↓" : "↑"),
        " ", summary(c)),
      el("td", {},
        el("span", { class: `badge badge-${state.kind}`, "data-testid": "change-state" }, state.label),
        state.detail ? el("div", { class: "detail", "data-testid": "change-detail" }, state.detail) : null),
      el("td", { class: "num", "data-testid": "change-attempts" }, String(c.attempts ?? 0)),
      el("td", { class: "num" }, el("code", { "data-testid": "change-lsn" }, formatLsn(c.lsn))),
    );
  }
}
