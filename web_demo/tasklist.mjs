// @ts-check
/**
 * The task list: a virtualised list with a fixed row height.
 *
 * Two live queries drive it: a count (`SELECT COUNT(*) ...`) sizes the scroll area,
 * and a window (`... ORDER BY rowid LIMIT ? OFFSET ?`) around the visible rows
 * fills it. Scrolling re-subscribes the window only when the visible rows leave
 * it, and only the rows on screen (plus a little overscan) are in the DOM, so a
 * list of 100,000 tasks scrolls like a list of ten.
 *
 * `ORDER BY rowid` inside one project walks the `tasks_project_id` index in order,
 * so neither the count nor a window needs a sort.
 */
import { $, el, editInline, formatCount } from "./dom.mjs";

export const ROW_HEIGHT = 48;
const OVERSCAN = 6;

/**
 * @typedef {{id: string, project_id: string|null, title: string, done: number}} Task
 * @typedef {{id: string, name: string}} Project
 * @typedef {{projectId: string|null}} Scope  projectId null = every task
 */

const TRASH = '<svg viewBox="0 0 24 24" width="18" height="18" aria-hidden="true"><path fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round" d="M4 7h16M10 11v6M14 11v6M6 7l1 12a2 2 0 0 0 2 2h6a2 2 0 0 0 2-2l1-12M9 7V4h6v3"/></svg>';

export class TaskList {
  /**
   * @param {import("./js/tidesync.mjs").TideSync} db
   * @param {{onSummary: (total: number, done: number) => void, onError: (err: Error) => void}} hooks
   */
  constructor(db, hooks) {
    this.db = db;
    this.hooks = hooks;
    this.scroller = $("#task-scroll");
    this.spacer = $("#task-spacer");
    this.empty = $("#task-empty");
    /** @type {Scope|null} */
    this.scope = null;
    this.count = 0;
    this.countKnown = false;
    /** @type {Task[]} */
    this.windowRows = [];
    this.windowOffset = 0;
    this.windowLimit = 0;
    this.windowLoaded = false;
    /** @type {() => void} */
    this.stopCount = () => {};
    /** @type {() => void} */
    this.stopWindow = () => {};
    /** @type {Map<string, HTMLElement>} */
    this.nodes = new Map();
    /**
     * Done boxes the user just toggled, until their write resolves: a live-query result
     * computed before that write (for an earlier change) must not flip the box back.
     * @type {Map<string, boolean>}
     */
    this.toggling = new Map();
    /** @type {Project[]} */
    this.projects = [];
    this.frame = 0;
    /** @type {Promise<void>} resolves at the first rendered result of a scope */
    this.firstRender = Promise.resolve();
    /** @type {(() => void)|null} */
    this.resolveFirst = null;

    this.scroller.addEventListener("scroll", () => this.schedule(), { passive: true });
    new ResizeObserver(() => this.schedule()).observe(this.scroller);
    this.bindEvents();
  }

  /** @param {Scope} scope */
  show(scope) {
    this.stopCount();
    this.stopWindow();
    this.scope = scope;
    this.count = 0;
    this.countKnown = false;
    this.windowRows = [];
    this.windowOffset = 0;
    this.windowLimit = 0;
    this.windowLoaded = false;
    for (const node of this.nodes.values()) node.remove();
    this.nodes.clear();
    this.scroller.scrollTop = 0;
    this.firstRender = new Promise((resolve) => { this.resolveFirst = () => resolve(undefined); });
    const { where, params } = this.where();
    this.stopCount = this.db.subscribe(
      `SELECT COUNT(*) AS n, COALESCE(SUM(done), 0) AS d FROM tasks ${where}`, params,
      (rows) => {
        if (this.scope !== scope) return;
        this.count = Number(rows[0]?.n ?? 0);
        this.countKnown = true;
        this.hooks.onSummary(this.count, Number(rows[0]?.d ?? 0));
        this.schedule();
      },
    );
    this.ensureWindow(true);
    this.render();
  }

  /** @param {Project[]} projects */
  setProjects(projects) {
    this.projects = projects;
    for (const node of this.nodes.values()) this.fillProjectSelect(node);
  }

  where() {
    return this.scope?.projectId
      ? { where: "WHERE project_id = ?", params: [this.scope.projectId] }
      : { where: "", params: [] };
  }

  visibleRange() {
    const height = this.scroller.clientHeight || 600;
    const first = Math.max(0, Math.floor(this.scroller.scrollTop / ROW_HEIGHT) - OVERSCAN);
    const last = Math.floor((this.scroller.scrollTop + height) / ROW_HEIGHT) + OVERSCAN;
    return { first, last, perScreen: Math.ceil(height / ROW_HEIGHT) };
  }

  /** Re-subscribe the window query when the visible rows are no longer inside it. */
  ensureWindow(force = false) {
    if (!this.scope) return;
    const { first, last, perScreen } = this.visibleRange();
    const end = this.windowOffset + this.windowLimit;
    const lastNeeded = this.countKnown ? Math.min(last, Math.max(0, this.count - 1)) : last;
    if (!force && first >= this.windowOffset && lastNeeded < end) return;
    const limit = Math.max(120, perScreen * 6);
    const offset = Math.max(0, first - Math.floor((limit - (last - first)) / 2));
    this.windowOffset = offset;
    this.windowLimit = limit;
    this.stopWindow();
    const scope = this.scope;
    const { where, params } = this.where();
    this.stopWindow = this.db.subscribe(
      `SELECT id, project_id, title, done FROM tasks ${where} ORDER BY rowid LIMIT ? OFFSET ?`,
      [...params, limit, offset],
      (rows) => {
        if (this.scope !== scope || this.windowOffset !== offset) return;
        this.windowRows = /** @type {Task[]} */ (rows);
        this.windowLoaded = true;
        this.schedule();
      },
    );
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.ensureWindow();
      this.render();
    });
  }

  render() {
    const total = this.countKnown ? this.count : this.windowRows.length;
    this.spacer.style.height = `${total * ROW_HEIGHT}px`;
    this.empty.hidden = !(this.countKnown && this.windowLoaded && total === 0);
    const { first, last } = this.visibleRange();
    const seen = new Set();
    for (let i = first; i <= Math.min(last, total - 1); i++) {
      const task = this.windowRows[i - this.windowOffset];
      const key = task ? task.id : `placeholder:${i}`;
      seen.add(key);
      let node = this.nodes.get(key);
      if (!node) {
        node = task ? this.createRow(task) : el("div", { class: "task-row placeholder", "aria-hidden": "true" }, el("span", { class: "skeleton" }));
        this.nodes.set(key, node);
        this.scroller.append(node);
      }
      if (task) this.updateRow(node, task);
      node.style.transform = `translateY(${i * ROW_HEIGHT}px)`;
      node.setAttribute("aria-posinset", String(i + 1));
      node.setAttribute("aria-setsize", String(total));
    }
    for (const [key, node] of this.nodes) {
      if (seen.has(key)) continue;
      if (node.classList.contains("editing") && this.windowRows.some((t) => t.id === key)) {
        node.style.transform = "translateY(-9999px)"; // scrolled away mid-rename: keep the editor alive
        continue;
      }
      if (node.contains(document.activeElement)) this.scroller.focus({ preventScroll: true });
      node.remove();
      this.nodes.delete(key);
    }
    if (this.windowLoaded && this.countKnown && this.resolveFirst) {
      this.resolveFirst();
      this.resolveFirst = null;
    }
  }

  /** @param {Task} task */
  createRow(task) {
    const row = el("div", { class: "task-row", "data-testid": "task-row", "data-id": task.id, role: "listitem", draggable: "true" },
      el("label", { class: "check" },
        el("input", { type: "checkbox", "data-testid": "task-done", "aria-label": "Done" }),
        el("span", { class: "checkmark", "aria-hidden": "true" })),
      el("span", { class: "task-title", "data-testid": "task-title", tabindex: "0", title: "Double-click to rename" }),
      el("select", { class: "task-project", "data-testid": "task-project", "aria-label": "Move to project", title: "Move to another project" }),
      el("button", { type: "button", class: "icon-btn danger", "data-testid": "task-delete", "aria-label": "Delete task", title: "Delete task", html: TRASH }),
    );
    this.fillProjectSelect(row);
    return row;
  }

  /** @param {HTMLElement} row @param {Task} task */
  updateRow(row, task) {
    const box = /** @type {HTMLInputElement} */ (row.querySelector("[data-testid=task-done]"));
    const done = this.toggling.get(task.id) ?? Boolean(Number(task.done));
    if (box.checked !== done) box.checked = done;
    row.classList.toggle("done", done);
    const title = /** @type {HTMLElement} */ (row.querySelector("[data-testid=task-title]"));
    if (title.textContent !== task.title) title.textContent = task.title;
    if (row.dataset.project !== (task.project_id ?? "")) {
      row.dataset.project = task.project_id ?? "";
      this.fillProjectSelect(row);
    }
  }

  /** @param {HTMLElement} row */
  fillProjectSelect(row) {
    const select = /** @type {HTMLSelectElement|null} */ (row.querySelector("[data-testid=task-project]"));
    if (!select) return;
    const current = row.dataset.project ?? "";
    const signature = `${current}|${this.projects.map((p) => `${p.id}:${p.name}`).join(",")}`;
    if (select.dataset.signature === signature) return;
    select.dataset.signature = signature;
    select.replaceChildren(...this.projects.map((p) => el("option", { value: p.id, selected: p.id === current }, p.name)));
    if (!this.projects.some((p) => p.id === current)) select.prepend(el("option", { value: current, selected: true }, "(no project)"));
    select.value = current;
  }

  bindEvents() {
    const s = this.scroller;
    /** @param {Event} ev */
    const rowOf = (ev) => /** @type {HTMLElement|null} */ (/** @type {HTMLElement} */ (ev.target).closest("[data-testid=task-row]"));
    /** @param {Promise<unknown>} p */
    const guard = (p) => p.catch((err) => this.hooks.onError(err));

    s.addEventListener("change", (ev) => {
      const row = rowOf(ev);
      const target = /** @type {HTMLInputElement} */ (ev.target);
      if (!row) return;
      const id = row.dataset.id;
      if (target.dataset.testid === "task-done" && id) {
        const done = target.checked;
        row.classList.toggle("done", done);
        this.toggling.set(id, done);
        // Every result posted after the write resolves includes it (one worker, in order);
        // a later toggle of the same box owns the entry until its own write resolves.
        guard(this.db.update("tasks", { id, done: done ? 1 : 0 })
          .finally(() => { if (this.toggling.get(id) === done) this.toggling.delete(id); }));
      } else if (target.dataset.testid === "task-project") {
        guard(this.db.update("tasks", { id, project_id: target.value }));
      }
    });
    s.addEventListener("click", (ev) => {
      const row = rowOf(ev);
      if (row && /** @type {HTMLElement} */ (ev.target).closest("[data-testid=task-delete]")) {
        row.classList.add("leaving");
        guard(this.db.delete("tasks", { id: row.dataset.id }));
      }
    });
    const rename = async (/** @type {HTMLElement} */ row) => {
      const title = /** @type {HTMLElement} */ (row.querySelector("[data-testid=task-title]"));
      const next = await editInline(title, { label: "Task title" });
      if (next !== null) {
        title.textContent = next;
        guard(this.db.update("tasks", { id: row.dataset.id, title: next }));
      }
    };
    s.addEventListener("dblclick", (ev) => {
      const row = rowOf(ev);
      if (row && /** @type {HTMLElement} */ (ev.target).closest("[data-testid=task-title]")) rename(row);
    });
    s.addEventListener("keydown", (ev) => {
      const row = rowOf(ev);
      const onTitle = /** @type {HTMLElement} */ (ev.target).dataset?.testid === "task-title";
      if (row && onTitle && (ev.key === "Enter" || ev.key === "F2")) { ev.preventDefault(); rename(row); }
    });
    s.addEventListener("dragstart", (ev) => {
      const row = rowOf(ev);
      if (!row || !ev.dataTransfer) return;
      ev.dataTransfer.setData("application/x-tidesync-task", row.dataset.id ?? "");
      ev.dataTransfer.effectAllowed = "move";
      row.classList.add("dragging");
    });
    s.addEventListener("dragend", (ev) => rowOf(ev)?.classList.remove("dragging"));
  }

  /** @param {number} total @param {number} done */
  static summaryText(total, done) {
    if (total === 0) return "no tasks";
    return `${formatCount(done)} of ${formatCount(total)} done`;
  }
}
