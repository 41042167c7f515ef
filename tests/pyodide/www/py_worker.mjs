// @ts-check
/**
 * Worker side of the browser test harness: Pyodide (booted exactly like the
 * production workers, via js_shim/boot.mjs, so the tidesync wheel is installed)
 * plus the OPFS file system, driven by {id, op, args} messages.
 *
 * ops:
 *   run   {code}             runPythonAsync in this worker's namespace; result via toJs
 *   mount {options}          mountOpfs(pyodide, options); Python sees it as `opfs_storage`
 *   close {}                 closeOpfs() (all mounts)
 *   stats {reset?}           the mount's I/O counters
 *   js    {code}             run `async (ctx) => { code }` with ctx = {pyodide, storage, opfs}
 */
import { bootPyodide } from "/js/boot.mjs";
import * as opfs from "/js/opfs_fs.mjs";

const post = (/** @type {any} */ m) => self.postMessage(m);
const forward = (/** @type {string} */ level) => (/** @type {any[]} */ ...a) =>
  post({ kind: "log", text: `${level}: ${a.map(String).join(" ")}` });

/** @type {any} */
let pyodide;
/** @type {any} */
let storage = null;
/** @type {any} */
let ns;

/** @param {any} value */
function toPlain(value) {
  if (value && typeof value === "object" && typeof value.toJs === "function") {
    const out = value.toJs({
      dict_converter: Object.fromEntries,
      create_pyproxies: false,
      default_converter: (/** @type {any} */ v) => String(v),
    });
    value.destroy();
    return out;
  }
  return value;
}

const ops = {
  async run(/** @type {any} */ args) {
    return toPlain(await pyodide.runPythonAsync(args.code, { globals: ns }));
  },
  async mount(/** @type {any} */ args) {
    storage = await opfs.mountOpfs(pyodide, args.options || {});
    ns.set("opfs_storage", storage);
    return { files: storage.files, existing: storage.existing(), mountPoint: storage.mountPoint };
  },
  async close() {
    await opfs.closeOpfs();
    storage = null;
    return true;
  },
  async stats(/** @type {any} */ args) {
    if (!storage) throw new Error("nothing mounted");
    const s = { ...storage.stats };
    if (args && args.reset) storage.resetStats();
    return s;
  },
  async js(/** @type {any} */ args) {
    const AsyncFunction = Object.getPrototypeOf(async () => {}).constructor;
    const fn = new AsyncFunction("ctx", args.code);
    return toPlain(await fn({ pyodide, storage, opfs }));
  },
};

const queue = [];
/** @type {((m: any) => void) | null} */
let handler = null;
self.onmessage = (ev) => (handler ? handler(ev.data) : queue.push(ev.data));

try {
  pyodide = await bootPyodide(new URL("/", self.location.href).href);
  pyodide.setStdout({ batched: forward("stdout") });
  pyodide.setStderr({ batched: forward("stderr") });
  ns = pyodide.globals.get("dict")();
  post({ kind: "ready", bootMillis: pyodide.bootMillis, python: pyodide.runPython("import sys; sys.version") });
} catch (e) {
  post({ kind: "boot-error", error: String(/** @type {Error} */ (e).stack || e) });
  throw e;
}

handler = async (/** @type {any} */ m) => {
  const op = /** @type {any} */ (ops)[m.op];
  try {
    if (!op) throw new Error(`unknown op ${m.op}`);
    post({ id: m.id, ok: true, result: await op(m.args || {}) });
  } catch (e) {
    post({ id: m.id, ok: false, error: String(/** @type {Error} */ (e).message || e) });
  }
};
while (queue.length) handler(queue.shift());
