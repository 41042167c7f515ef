// @ts-check
/**
 * Worker boot: load the pinned Pyodide from this site and install the tidesync wheel.
 *
 * Shared by both worker bootstraps. Nothing is fetched from outside the site:
 * Pyodide lives under `pyodide/`, the wheel under `wheels/`, both named in
 * `manifest.json` (written by build/build_site.py). The wheel is a pure-Python
 * `py3-none-any` archive, so unpacking it into site-packages installs it; no
 * micropip round trip is needed.
 */
import { loadPyodide } from "../pyodide/pyodide.mjs";

/**
 * Buffer messages that arrive before Python is ready to take them.
 *
 * A module worker runs `await` at top level, and messages posted to it while it
 * waits would find no handler; this installs one at once and replays the queue
 * to whoever calls `take(handler)`.
 * @param {{addEventListener: Function}} target
 */
export function messageInbox(target) {
  /** @type {MessageEvent[]} */
  const queued = [];
  /** @type {((ev: MessageEvent) => void) | null} */
  let handler = null;
  target.addEventListener("message", (/** @type {MessageEvent} */ ev) => {
    if (handler) handler(ev);
    else queued.push(ev);
  });
  return {
    /** Resolve with the first message that satisfies `predicate` (removed from the queue). */
    first(/** @type {(ev: MessageEvent) => boolean} */ predicate) {
      return new Promise((resolve) => {
        const found = queued.findIndex(predicate);
        if (found >= 0) {
          resolve(queued.splice(found, 1)[0]);
          return;
        }
        handler = (ev) => {
          if (predicate(ev)) {
            handler = null;
            resolve(ev);
          } else queued.push(ev);
        };
      });
    },
    /** Hand every further message (and the queued ones, in order) to `fn`. */
    take(/** @type {(ev: MessageEvent) => void} */ fn) {
      handler = fn;
      while (queued.length) fn(/** @type {MessageEvent} */ (queued.shift()));
    },
  };
}

/**
 * @param {string} siteBase absolute URL of the site root (ends with "/")
 * @returns {Promise<any>} the Pyodide API object, with tidesync importable
 */
export async function bootPyodide(siteBase) {
  const started = performance.now();
  const manifestPromise = fetch(new URL("manifest.json", siteBase), { cache: "no-cache" }).then(
    (r) => {
      if (!r.ok) throw new Error(`manifest.json: HTTP ${r.status}`);
      return r.json();
    },
  );
  const pyodide = await loadPyodide({ indexURL: new URL("pyodide/", siteBase).href });
  const manifest = await manifestPromise;
  const wheel = await fetch(new URL(manifest.wheel, siteBase));
  if (!wheel.ok) throw new Error(`${manifest.wheel}: HTTP ${wheel.status}`);
  const sitePackages = pyodide.runPython("import sysconfig; sysconfig.get_path('purelib')");
  pyodide.unpackArchive(await wheel.arrayBuffer(), "wheel", { extractDir: sitePackages });
  pyodide.runPython(
    "import logging, sys\n" +
      "logging.basicConfig(stream=sys.stderr, level=logging.INFO,\n" +
      "    format='%(levelname)s %(name)s: %(message)s')\n",
  );
  pyodide.bootMillis = performance.now() - started;
  return pyodide;
}
