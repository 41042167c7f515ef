// @ts-check
/** Small DOM helpers shared by the demo's modules. */

/**
 * The element with this CSS selector; throws when it is missing (a broken page should fail loudly).
 * @template {Element} [T=HTMLElement]
 * @param {string} selector
 * @param {ParentNode} [root]
 * @returns {T}
 */
export function $(selector, root = document) {
  const found = root.querySelector(selector);
  if (!found) throw new Error(`missing element ${selector}`);
  return /** @type {T} */ (/** @type {unknown} */ (found));
}

/**
 * Create an element: `el("button", {class: "btn", dataset: {id}}, "Save")`.
 * @param {string} tag
 * @param {Record<string, any>} [attrs]
 * @param {...(Node|string|null|undefined|false)} children
 * @returns {HTMLElement}
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "class") node.className = String(value);
    else if (key === "html") node.innerHTML = String(value);
    else if (key in node && typeof value !== "string") /** @type {any} */ (node)[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child);
  }
  return node;
}

/** @param {number|undefined|null} ms */
export function formatMs(ms) {
  if (ms === undefined || ms === null || Number.isNaN(ms)) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
}

const numberFormat = new Intl.NumberFormat();
/** @param {number} n */
export const formatCount = (n) => numberFormat.format(n);

/** @type {ReturnType<typeof setTimeout> | undefined} */
let toastTimer;

/**
 * Show a message in `#toast` for a few seconds.
 * @param {string} message
 * @param {{kind?: "info"|"warn"|"error"|"conflict", timeout?: number, action?: {label: string, run: () => void}}} [options]
 */
export function toast(message, options = {}) {
  const box = $("#toast");
  const { kind = "info", timeout = 6000, action } = options;
  box.replaceChildren(el("span", { class: "toast-text", "data-testid": "toast-text" }, message));
  if (action) {
    box.append(el("button", { type: "button", class: "btn btn-small", onclick: () => { hide(); action.run(); } }, action.label));
  }
  box.append(el("button", { type: "button", class: "toast-close", "aria-label": "Dismiss", onclick: hide }, "✕"));
  box.dataset.kind = kind;
  box.hidden = false;
  requestAnimationFrame(() => box.classList.add("show"));
  clearTimeout(toastTimer);
  if (timeout > 0) toastTimer = setTimeout(hide, timeout);

  function hide() {
    box.classList.remove("show");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { box.hidden = true; }, 200);
  }
}

/**
 * Turn a text node into an inline editor; resolves with the new text, or null when cancelled.
 * @param {HTMLElement} target the element whose text is edited (it is hidden while editing)
 * @param {{label: string, maxLength?: number}} options
 * @returns {Promise<string|null>}
 */
export function editInline(target, { label, maxLength = 300 }) {
  return new Promise((resolve) => {
    const original = target.textContent ?? "";
    const input = /** @type {HTMLInputElement} */ (el("input", {
      type: "text", class: "inline-edit", value: original, "aria-label": label, maxLength,
      "data-testid": "inline-edit",
    }));
    target.hidden = true;
    target.after(input);
    target.closest("[data-id]")?.classList.add("editing");
    input.focus();
    input.select();
    let done = false;
    /** @param {string|null} value */
    const finish = (value) => {
      if (done) return;
      done = true;
      input.remove();
      target.hidden = false;
      target.closest("[data-id]")?.classList.remove("editing");
      const trimmed = value?.trim() ?? "";
      resolve(value === null || !trimmed || trimmed === original ? null : trimmed);
    };
    input.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") { ev.preventDefault(); finish(input.value); }
      else if (ev.key === "Escape") { ev.preventDefault(); finish(null); }
    });
    input.addEventListener("blur", () => finish(input.value));
  });
}
