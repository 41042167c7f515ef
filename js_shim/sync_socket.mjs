// @ts-check
/**
 * The Sync Worker's socket helpers that must run in JavaScript, before or beside Python.
 *
 * `openEarly`: the socket to the server opened before Pyodide is up, with every event kept
 * in arrival order; `browser_websocket.BrowserWebSocketTransport` adopts it (replaying the
 * kept events first) when it was opened for the URL Python asks for, else closes it. Nothing
 * here reads or answers a frame: connecting and the server's first frames overlap the boot.
 *
 * `frameUtf8`: a text frame's UTF-8 bytes. Pyodide converts a JS string to Python one
 * UTF-16 unit at a time in JavaScript (~4 ms for a 260 KB snapshot chunk); `TextEncoder`
 * and one copy into the heap cost a tenth of that.
 */

/**
 * @typedef {object} EarlySocket
 * @property {string} url
 * @property {WebSocket} ws
 * @property {Event[]} events  open/message/error/close events not handled yet, in order
 */

/**
 * @param {unknown} url the URL the Changes Worker's "ready" named (`syncUrl`), if any
 * @returns {EarlySocket | undefined} undefined (not null: Python sees None) when there is none
 */
export function openEarly(url) {
  if (typeof url !== "string" || !url) return undefined;
  /** @type {Event[]} */
  const events = [];
  let ws;
  try {
    ws = new WebSocket(url);
  } catch {
    return undefined; // Python opens its own socket and reports why that fails
  }
  const keep = (/** @type {Event} */ ev) => { events.push(ev); };
  ws.onopen = ws.onmessage = ws.onclose = ws.onerror = keep;
  return { url, ws, events };
}

const encoder = new TextEncoder();

/**
 * @param {MessageEvent} ev a WebSocket message event
 * @returns {Uint8Array | undefined} the text frame's UTF-8 bytes; undefined for a binary frame
 */
export function frameUtf8(ev) {
  return typeof ev.data === "string" ? encoder.encode(ev.data) : undefined;
}
