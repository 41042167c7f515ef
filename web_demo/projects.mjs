// @ts-check
/**
 * The sidebar: projects from a live query, with rename (double-click or ✎),
 * two-step delete (its tasks go with it), selection, and drop targets for
 * dragging a task into another project.
 */
import { $, el, editInline, formatCount } from "./dom.mjs";

/** @typedef {{id: string, name: string, total: number, open: number}} ProjectRow */

export const ALL = "__all__";
const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

const PENCIL = '<svg viewBox="0 0 24 24" width="16" height="16" aria-hidden="true"><path fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round" d="M4 20h4L19 9l-4-4L4 16v4zM13.5 6.5l4 4"/></svg>';
const TRASH = '<svg viewBox="0 0 24 24" width="16" height="16" aria-hidden="true"><path fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round" d="M4 7h16M6 7l1 12a2 2 0 0 0 2 2h6a2 2 0 0 0 2-2l1-12M9 7V4h6v3"/></svg>';

export class ProjectList {
  /**
   * @param {import("./js/tidesync.mjs").TideSync} db
   * @param {{showAll: boolean, onSelect: (id: string) => void, onRows: (rows: ProjectRow[]) => void, onError: (err: Error) => void}} hooks
   */
  constructor(db, hooks) {
    this.db = db;
    this.hooks = hooks;
    this.list = $("#project-list");
    /** @type {ProjectRow[]} */
    this.rows = [];
    /** @type {string|null} */
    this.selected = null;
    this.allTotal = 0;
    /** @type {string|null} the project whose delete button was clicked once */
    this.armed = null;
    /** @type {ReturnType<typeof setTimeout>|undefined} */
    this.armedTimer = undefined;
    this.bind();
  }

  /** @param {() => void} onFirst */
  start(onFirst) {
    let first = true;
    this.db.subscribe(
      `SELECT p.id, p.name,
              (SELECT COUNT(*) FROM tasks t WHERE t.project_id = p.id) AS total,
              (SELECT COUNT(*) FROM tasks t WHERE t.project_id = p.id AND t.done = 0) AS open
         FROM projects p ORDER BY p.name COLLATE NOCASE, p.id`,
      [],
      (rows) => {
        // Natural order ("Project 2" before "Project 10"), as people sort.
        this.rows = /** @type {ProjectRow[]} */ (rows).sort((a, b) => collator.compare(a.name, b.name) || (a.id < b.id ? -1 : 1));
        this.hooks.onRows(this.rows);
        this.render();
        if (first) { first = false; onFirst(); }
      },
    );
    if (this.hooks.showAll) {
      this.db.subscribe("SELECT COUNT(*) AS n FROM tasks", [], (rows) => {
        this.allTotal = Number(rows[0]?.n ?? 0);
        this.render();
      });
    }
  }

  /** @param {string|null} id */
  select(id) {
    this.selected = id;
    this.render();
  }

  render() {
    if (this.list.querySelector(".editing")) return; // finish the rename first; the next result re-renders
    const items = [];
    if (this.hooks.showAll) {
      items.push(this.item({ id: ALL, name: "All tasks", total: this.allTotal, open: -1 }, true));
    }
    for (const row of this.rows) items.push(this.item(row, false));
    this.list.replaceChildren(...items);
    $("[data-testid=project-count]").textContent = this.rows.length ? formatCount(this.rows.length) : "";
  }

  /** @param {ProjectRow} row @param {boolean} all */
  item(row, all) {
    const selected = row.id === this.selected;
    const count = all ? formatCount(row.total) : row.open > 0 ? formatCount(row.open) : row.total > 0 ? "✓" : "";
    return el("li", {
      class: `project-row${selected ? " selected" : ""}${all ? " all" : ""}`,
      "data-testid": all ? "project-all" : "project-row", "data-id": row.id,
      "aria-current": selected ? "page" : null, tabindex: "0", role: "link",
    },
      el("span", { class: "project-name", "data-testid": "project-name", title: all ? "Every task" : "Double-click to rename" }, row.name),
      el("span", { class: "project-badge", "data-testid": "project-open", title: all ? "tasks" : `${row.open} open of ${row.total}` }, count),
      all ? null : el("button", { type: "button", class: "icon-btn", "data-testid": "project-rename", "aria-label": `Rename ${row.name}`, title: "Rename", html: PENCIL }),
      all ? null : el("button", {
        type: "button", class: `icon-btn danger${this.armed === row.id ? " armed" : ""}`, "data-testid": "project-delete",
        "data-armed": this.armed === row.id ? "1" : null, "aria-label": `Delete ${row.name}`, html: TRASH,
        title: this.armed === row.id ? "Click again to delete the project and its tasks" : "Delete project and its tasks",
      }),
    );
  }

  bind() {
    const list = this.list;
    /** @param {Event} ev */
    const rowOf = (ev) => /** @type {HTMLElement|null} */ (/** @type {HTMLElement} */ (ev.target).closest("[data-id]"));
    /** @param {Promise<unknown>} p */
    const guard = (p) => p.catch((err) => this.hooks.onError(err));

    list.addEventListener("click", (ev) => {
      const row = rowOf(ev);
      const target = /** @type {HTMLElement} */ (ev.target);
      if (!row?.dataset.id) return;
      const id = row.dataset.id;
      if (target.closest("[data-testid=project-delete]")) {
        if (this.armed !== id) {
          // Two steps: a project takes its tasks with it. (Kept here, not on the button:
          // a live-query result may re-render the list between the two clicks.)
          this.armed = id;
          this.render();
          clearTimeout(this.armedTimer);
          this.armedTimer = setTimeout(() => { this.armed = null; this.render(); }, 3000);
          return;
        }
        this.armed = null;
        guard(this.db.transaction((tx) => {
          tx.execute("DELETE FROM tasks WHERE project_id = ?", [id]);
          tx.delete("projects", { id });
        }));
      } else if (target.closest("[data-testid=project-rename]")) {
        this.rename(row);
      } else if (!target.closest("input")) {
        this.hooks.onSelect(id);
      }
    });
    list.addEventListener("keydown", (ev) => {
      const row = rowOf(ev);
      if (!row?.dataset.id || ev.target !== row) return;
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); this.hooks.onSelect(row.dataset.id); }
      else if (ev.key === "F2" && row.dataset.id !== ALL) { ev.preventDefault(); this.rename(row); }
    });
    list.addEventListener("dblclick", (ev) => {
      const row = rowOf(ev);
      if (row && row.dataset.id !== ALL) this.rename(row);
    });
    list.addEventListener("dragover", (ev) => {
      const row = rowOf(ev);
      if (!row || row.dataset.id === ALL || !ev.dataTransfer?.types.includes("application/x-tidesync-task")) return;
      ev.preventDefault();
      ev.dataTransfer.dropEffect = "move";
      row.classList.add("drop-target");
    });
    list.addEventListener("dragleave", (ev) => rowOf(ev)?.classList.remove("drop-target"));
    list.addEventListener("drop", (ev) => {
      const row = rowOf(ev);
      const taskId = ev.dataTransfer?.getData("application/x-tidesync-task");
      row?.classList.remove("drop-target");
      if (!row?.dataset.id || row.dataset.id === ALL || !taskId) return;
      ev.preventDefault();
      guard(this.db.update("tasks", { id: taskId, project_id: row.dataset.id }));
    });
  }

  /** @param {HTMLElement} row */
  async rename(row) {
    const name = /** @type {HTMLElement} */ (row.querySelector("[data-testid=project-name]"));
    const next = await editInline(name, { label: "Project name", maxLength: 120 });
    if (next !== null) {
      name.textContent = next;
      await this.db.update("projects", { id: row.dataset.id, name: next }).catch((err) => this.hooks.onError(err));
    }
    this.render();
  }
}
