// @ts-check
/**
 * Sync made visible: the status bar, the initial-sync progress bar, the tab role
 * and the reconnect countdown, all driven by `db.on("status")`.
 */
import { $, formatCount } from "./dom.mjs";

/** @typedef {import("./js/tidesync.mjs").SyncStatus & {reconnectAt?: number|null}} Status */

/**
 * How the connection looks to a person: a word and a colour key.
 * @param {Status} s
 * @param {boolean} userOffline the "Go offline" toggle is on in this tab
 * @returns {{text: string, state: string}}
 */
export function connectionState(s, userOffline = false) {
  if (s.connected) return { text: "online", state: "online" };
  if (userOffline || s.phase === "offline" || s.phase === "stopped") return { text: "offline", state: "offline" };
  if (typeof navigator !== "undefined" && navigator.onLine === false) return { text: "offline (no network)", state: "offline" };
  if (s.phase === "backoff" || typeof s.reconnectIn === "number" || typeof s.reconnectAt === "number") {
    return { text: "server unreachable", state: "down" };
  }
  if (s.phase === "disconnected") return { text: "disconnected", state: "down" };
  return { text: "connecting…", state: "connecting" };
}

export class StatusBar {
  constructor() {
    this.conn = $("[data-testid=connection]");
    this.phase = $("[data-testid=phase]");
    this.lsn = $("[data-testid=lsn]");
    this.pending = $("[data-testid=pending]");
    this.reconnect = $("[data-testid=reconnect]");
    this.lastError = $("[data-testid=last-error]");
    this.role = $("[data-testid=role]");
    this.progress = $("#init-progress");
    this.progressBar = $("#init-progress .init-progress-bar span");
    this.progressText = $("[data-testid=init-progress-text]");
    /** @type {number|null} epoch ms of the next reconnect attempt */
    this.reconnectAt = null;
    this.timer = setInterval(() => this.renderCountdown(), 250);
    /** set by the app while its "Go offline" toggle is on */
    this.userOffline = false;
  }

  /** @param {Status} s */
  render(s) {
    const conn = connectionState(s, this.userOffline);
    this.conn.textContent = conn.text;
    this.conn.dataset.state = conn.state;
    this.phase.textContent = s.phase;
    this.lsn.textContent = s.lsn;
    this.pending.textContent = formatCount(s.pending ?? 0);
    this.pending.parentElement?.classList.toggle("has-pending", (s.pending ?? 0) > 0);
    this.role.textContent = s.role === "starting" ? "starting…" : `${s.role} tab`;
    this.role.dataset.role = s.role;
    this.role.title = s.role === "follower"
      ? "Another tab of this browser owns the database; this one works through it"
      : "This tab owns the local database file and the connection";

    this.lastError.hidden = !s.lastError;
    this.lastError.textContent = s.lastError ? `⚠ ${s.lastError}` : "";
    this.lastError.title = s.lastError ?? "";

    // `reconnectAt` (epoch ms) when the library gives it, else derived from `reconnectIn` (seconds).
    if (typeof s.reconnectAt === "number") this.reconnectAt = s.reconnectAt;
    else if (typeof s.reconnectIn === "number" && !s.connected) this.reconnectAt = Date.now() + s.reconnectIn * 1000;
    else this.reconnectAt = null;
    this.renderCountdown();

    const p = s.initProgress;
    this.progress.hidden = !p;
    if (p) {
      const pct = p.total > 0 ? Math.min(100, Math.round((p.chunk / p.total) * 100)) : 0;
      this.progressBar.style.width = `${pct}%`;
      this.progress.setAttribute("aria-valuenow", String(pct));
      this.progressText.textContent =
        `Initial sync · ${p.table} · chunk ${formatCount(p.chunk)} of ${formatCount(p.total)} · ${formatCount(p.rows)} rows`;
    }
  }

  renderCountdown() {
    if (this.reconnectAt === null) {
      this.reconnect.hidden = true;
      return;
    }
    const seconds = Math.max(0, Math.ceil((this.reconnectAt - Date.now()) / 1000));
    this.reconnect.hidden = false;
    this.reconnect.textContent = seconds > 0 ? `reconnecting in ${seconds} s` : "reconnecting…";
  }
}
