// @ts-check
/**
 * Page side of the browser test harness (tests/pyodide/browser_harness.py).
 *
 * Starts MODULE Web Workers running ./py_worker.mjs (Pyodide + the tidesync wheel)
 * and relays request/response messages; Playwright drives it through
 * `window.tidesyncTest`.
 */
import { listOpfs, removeOpfsDir } from "/js/opfs_fs.mjs";

/** @type {Map<string, {worker: Worker, pending: Map<number, {resolve: Function, reject: Function}>, ready: Promise<any>}>} */
const workers = new Map();
let nextId = 1;
/** @type {string[]} */
const log = [];

/** @param {string} name */
function start(name) {
  if (workers.has(name)) throw new Error(`worker ${name} already started`);
  const worker = new Worker(new URL("./py_worker.mjs", import.meta.url), {
    type: "module",
    name,
  });
  const pending = new Map();
  /** @type {(v: any) => void} */
  let readyResolve = () => {};
  /** @type {(e: any) => void} */
  let readyReject = () => {};
  const ready = new Promise((res, rej) => {
    readyResolve = res;
    readyReject = rej;
  });
  worker.onmessage = (ev) => {
    const m = ev.data;
    if (m.kind === "ready") return readyResolve(m);
    if (m.kind === "boot-error") return readyReject(new Error(m.error));
    if (m.kind === "log") {
      log.push(`[${name}] ${m.text}`);
      return;
    }
    const p = pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    if (m.ok) p.resolve(m.result);
    else p.reject(new Error(m.error));
  };
  worker.onerror = (ev) => {
    const msg = `worker ${name} error: ${ev.message} (${ev.filename}:${ev.lineno})`;
    log.push(msg);
    readyReject(new Error(msg));
    for (const p of pending.values()) p.reject(new Error(msg));
    pending.clear();
  };
  workers.set(name, { worker, pending, ready });
  return ready;
}

/**
 * @param {string} name
 * @param {string} op
 * @param {any} args
 */
async function call(name, op, args) {
  const w = workers.get(name);
  if (!w) throw new Error(`no worker ${name}`);
  await w.ready;
  const id = nextId++;
  return new Promise((resolve, reject) => {
    w.pending.set(id, { resolve, reject });
    w.worker.postMessage({ id, op, args });
  });
}

/** @param {string} name */
function terminate(name) {
  const w = workers.get(name);
  if (!w) return;
  w.worker.terminate();
  for (const p of w.pending.values()) p.reject(new Error(`worker ${name} terminated`));
  workers.delete(name);
}

/** @type {any} */ (window).tidesyncTest = {
  start,
  call,
  terminate,
  listOpfs,
  removeOpfsDir,
  log,
  loaded: true,
};
