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
import { readPagedHeap } from "./paged_heap.mjs";
import { writeStoredWheel } from "./wheel_files.mjs";

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

/** Cache Storage cache that holds the boot snapshot (one entry: the current one). */
export const SNAPSHOT_CACHE = "tidesync-pyodide-snapshot";
/**
 * Bumped whenever what a snapshot holds changes without the wheel changing (the modules
 * imported before it is taken, the boot steps below): it is part of the cache key.
 */
const SNAPSHOT_FORMAT = 1;
/**
 * Imported before a snapshot is taken: everything either worker imports to start, so a
 * worker booted from the snapshot imports nothing from source.
 */
export const SNAPSHOT_MODULES = [
  "tidesync._pyodide",
  "tidesync.changes.browser_entry",
  "tidesync.worker_sync.worker_thread.browser_entry",
];

/**
 * Install the tidesync wheel into a booted Pyodide: it is a pure-Python `py3-none-any`
 * archive, so unpacking it into site-packages is the whole install. The site's wheel is
 * stored uncompressed (build/precompile.py) and its files are copied in from JavaScript
 * (wheel_files.mjs, checked entry by entry); any other wheel goes through Pyodide's
 * `unpackArchive`.
 * @param {any} pyodide @param {ArrayBuffer|Uint8Array} wheelBytes
 */
export function installWheel(pyodide, wheelBytes) {
  const sitePackages = pyodide.runPython("import sysconfig; sysconfig.get_path('purelib')");
  const bytes = wheelBytes instanceof Uint8Array ? wheelBytes : new Uint8Array(wheelBytes);
  if (writeStoredWheel(pyodide.FS, bytes, sitePackages)) {
    // Directories listed before (in the heap a snapshot restored) are read again.
    pyodide.runPython("import importlib; importlib.invalidate_caches()");
  } else {
    pyodide.unpackArchive(bytes, "wheel", { extractDir: sitePackages });
  }
}

/**
 * Import what a snapshot must hold and take it (Pyodide booted with `_makeSnapshot: true`
 * and the wheel installed). Shared by the browser's boot below and by the build's
 * `build/make_snapshot.mjs`, so both snapshots hold the same modules.
 * @param {any} pyodide @returns {Uint8Array}
 */
export function takeSnapshot(pyodide) {
  for (const name of SNAPSHOT_MODULES) pyodide.pyimport(name).destroy();
  return pyodide.makeMemorySnapshot();
}

/**
 * @typedef {Object} BootOptions
 * @property {boolean} [useSnapshot] boot from the stored memory snapshot when there is a
 *   valid one for this Pyodide and this wheel (falls back to a normal boot otherwise)
 * @property {boolean} [makeSnapshot] after a normal boot, take a snapshot and store it
 *   (`pyodide.snapshotStored` settles when it is stored, or failed to be)
 * @property {Uint8Array} [snapshot] a snapshot to restore instead of the stored one: the
 *   Changes Worker hands over the heap it just took or restored (`pyodide.snapshotBytes`),
 *   so the Sync Worker neither waits for the store nor reads it back
 * @property {WebAssembly.Module} [wasmModule] Pyodide's wasm, compiled by another worker
 *   (`pyodide.wasmModule` there): instantiated instead of compiling it again
 * @property {boolean} [siteSnapshot] with `useSnapshot` and nothing stored yet, restore the
 *   snapshot the site ships (`manifest.snapshot`, made by the build) when it was made from
 *   this very Pyodide, stdlib and wheel (default true)
 */

/**
 * @typedef {Object} BootInfo
 * @property {"loaded"|"site"|"made"|"none"|"failed"} snapshot how this boot used the
 *   snapshot: booted from the stored one, booted from the site's (first visit; stored for
 *   the next start when this worker makes snapshots), took a new one, neither, or a stored
 *   or the site's one failed to load (normal boot)
 * @property {number} millis whole boot, ms
 * @property {string} [error] why a stored snapshot was not used / could not be stored
 * @property {"shared"|"compiled"} [wasm] Pyodide's wasm came from another worker
 *   (`BootOptions.wasmModule`) or was compiled here
 */

/**
 * Where the snapshot for this site's Pyodide and wheel is stored (a Cache Storage key;
 * nothing is served there). Keyed by the wheel's SHA-256, so a new wheel never boots
 * from the old wheel's interpreter state, and by the stdlib zip's (the heap holds
 * zipimport's index of it); null when the manifest predates the hashes.
 * @param {string} siteBase
 * @param {{pyodide?: string, wheelSha256?: string, stdlibSha256?: string}} manifest
 */
export function snapshotKey(siteBase, manifest) {
  if (!manifest.wheelSha256 || !manifest.pyodide || !manifest.stdlibSha256) return null;
  const { pyodide, stdlibSha256, wheelSha256 } = manifest;
  return new URL(
    `.tidesync-snapshot/${SNAPSHOT_FORMAT}/${pyodide}/${stdlibSha256}/${wheelSha256}`,
    siteBase,
  ).href;
}

/** Cache Storage exists only in secure contexts (https, localhost). */
function snapshotCache() {
  return typeof caches === "undefined" ? null : caches.open(SNAPSHOT_CACHE);
}

/** @param {string} key @returns {Promise<Uint8Array|null>} */
async function readSnapshot(key) {
  const cache = await snapshotCache();
  const hit = cache && (await cache.match(key));
  if (!hit) return null;
  const bytes = new Uint8Array(await hit.arrayBuffer());
  // A put is atomic, but check the length anyway: a short heap would boot a broken Python.
  if (String(bytes.length) !== hit.headers.get("x-tidesync-snapshot-bytes")) {
    await cache?.delete(key);
    return null;
  }
  return bytes;
}

/**
 * The snapshot the site ships, when the build made one from this manifest's Pyodide,
 * stdlib and wheel: a promise of its bytes once the server has answered (null when there
 * is none, or it is stale or missing), so the heap's download and gunzip overlap Pyodide's
 * own fetches and the wasm compile.
 *
 * Why: on a first visit there is no stored snapshot, and a normal boot runs the
 * interpreter's start-up and imports every module (~0.6 s of CPU on a 2-core machine)
 * before anything is readable. `build/make_snapshot.mjs` takes the same snapshot under
 * Node at build time (the heap is the same bytes: one wasm, one stdlib, one wheel); it is
 * served as a gzipped paged heap (31 MB -> ~5.5 MB, paged_heap.mjs). Sites built with
 * `TIDESYNC_SITE_SNAPSHOT=0` ship none.
 * @param {string} siteBase
 * @param {{snapshot?: {file?: string, bytes?: number, encoding?: string, wheelSha256?: string,
 *   stdlibSha256?: string, pyodide?: string}, wheelSha256?: string, stdlibSha256?: string,
 *   pyodide?: string}} manifest
 * @returns {Promise<{heap: Promise<Uint8Array>}|null>} (wrapped: an async function
 *   would wait for the whole download before returning a promise of it)
 */
async function siteSnapshot(siteBase, manifest) {
  const shipped = manifest.snapshot;
  if (
    !shipped?.file || !shipped.bytes || shipped.encoding !== "pages" ||
    typeof DecompressionStream === "undefined" ||
    shipped.wheelSha256 !== manifest.wheelSha256 ||
    shipped.stdlibSha256 !== manifest.stdlibSha256 || shipped.pyodide !== manifest.pyodide
  ) return null;
  const response = await fetch(new URL(shipped.file, siteBase));
  if (!response.ok || !response.body) return null;
  // A paged heap (paged_heap.mjs), gzipped: a short or broken one is refused there, so a
  // heap that is not whole never boots a Python (the build records its length).
  const heap = readPagedHeap(
    response.body.pipeThrough(new DecompressionStream("gzip")),
    shipped.bytes,
  );
  heap.catch(() => {}); // awaited by the boot; a failure is reported there, once
  return { heap };
}

/**
 * Store `bytes` under `key` and drop every other (stale) snapshot. The Response copies
 * the bytes before this returns, so the caller may transfer them away at once.
 * @param {string} key @param {Uint8Array} bytes @returns {Promise<void>}
 */
function storeSnapshot(key, bytes) {
  const response = new Response(bytes, {
    headers: {
      "content-type": "application/octet-stream",
      "x-tidesync-snapshot-bytes": String(bytes.length),
    },
  });
  return (async () => {
    const cache = await snapshotCache();
    if (!cache) return;
    await cache.put(key, response);
    for (const old of await cache.keys()) {
      if (old.url !== key) await cache.delete(old);
    }
  })();
}

/**
 * `loadPyodide(config)`, instantiating Pyodide's wasm from `module` when one is given
 * (compiled by another worker of this page and posted here), and returning the module it
 * used either way.
 *
 * Why: each worker would otherwise compile the same 9.6 MB `pyodide.asm.wasm` again, and
 * on a 2-core machine that compile (and its background tier-up) competes with the other
 * worker's start and the initial sync. A posted `WebAssembly.Module` shares the code the
 * first worker compiled, optimised functions included. Pyodide instantiates through
 * `WebAssembly.instantiateStreaming` (pyodide.mjs, `getInstantiateWasmFunc`), so that one
 * call is swapped for the length of this load; without the swap taking effect (another
 * Pyodide build), the load is a normal one.
 * @param {Record<string, any>} config
 * @param {WebAssembly.Module|null} module
 * @returns {Promise<{pyodide: any, module: WebAssembly.Module|null}>}
 */
async function loadPyodideWith(config, module) {
  const streaming = WebAssembly.instantiateStreaming;
  /** @type {WebAssembly.Module|null} */
  let used = null;
  WebAssembly.instantiateStreaming = async (source, imports) => {
    if (module) {
      try {
        const instance = await WebAssembly.instantiate(module, imports);
        used = module;
        Promise.resolve(source).then((r) => r.body?.cancel(), () => {});
        return { instance, module };
      } catch (err) {
        // Pyodide only logs a failed instantiation and then waits forever: compile instead.
        console.warn("tidesync: the posted wasm module did not instantiate, compiling", err);
      }
    }
    const result = await streaming.call(WebAssembly, source, imports);
    used = result.module;
    return result;
  };
  try {
    return { pyodide: await loadPyodide(config), module: used };
  } finally {
    WebAssembly.instantiateStreaming = streaming;
  }
}

/**
 * @param {string} siteBase absolute URL of the site root (ends with "/")
 * @param {BootOptions} [options] default: a normal boot, no snapshot read or written
 * @returns {Promise<any>} the Pyodide API object, with tidesync importable; it also carries
 *   `bootMillis`, `bootInfo` (BootInfo), `snapshotStored` (a Promise that never rejects),
 *   `snapshotBytes` (the heap it restored or took, for another worker; else null) and
 *   `wasmModule` (the compiled wasm it ran, for another worker; null if not seen)
 *
 * Memory snapshot: Pyodide can restore its whole wasm heap from a snapshot taken after
 * tidesync's modules were imported (`_loadSnapshot`), which skips the interpreter's
 * start-up and every import (seconds on a slow machine). The emscripten file system is
 * JS state and not in the snapshot: the stdlib zip is reinstalled by Pyodide and the
 * wheel is unpacked again below (cheap), so lazy imports and package data still work.
 * A snapshot may only be taken while Python holds no JS object other than globals
 * reachable by a path (`js.X.Y`) and Pyodide's own: hence right after the imports,
 * before the workers hand Python their ports and storage.
 */
export async function bootPyodide(siteBase, options = {}) {
  const started = performance.now();
  const indexURL = new URL("pyodide/", siteBase).href;
  const manifest = await fetch(new URL("manifest.json", siteBase), { cache: "no-cache" }).then(
    (r) => {
      if (!r.ok) throw new Error(`manifest.json: HTTP ${r.status}`);
      return r.json();
    },
  );
  // Fetched while Pyodide boots: the wheel is needed after either kind of boot.
  const wheelBytes = fetch(new URL(manifest.wheel, siteBase)).then((r) => {
    if (!r.ok) throw new Error(`${manifest.wheel}: HTTP ${r.status}`);
    return r.arrayBuffer();
  });
  wheelBytes.catch(() => {}); // awaited below; do not report it unhandled meanwhile
  const key = snapshotKey(siteBase, manifest);
  /** @type {BootInfo} */
  const info = { snapshot: "none", millis: 0 };
  /** @type {any} */
  let pyodide = null;
  /** @type {Uint8Array|null} */
  let snapshotBytes = null;
  let module = options.wasmModule ?? null;
  /** @type {Promise<void>} */
  let stored = Promise.resolve();
  if (key && options.useSnapshot) {
    /** @type {"loaded"|"site"} */
    let source = "loaded";
    try {
      /** @type {Uint8Array|Promise<Uint8Array>|null} */
      let bytes = options.snapshot ?? (await readSnapshot(key));
      const shipped = !bytes && options.siteSnapshot !== false
        ? await siteSnapshot(siteBase, manifest)
        : null;
      if (shipped) {
        bytes = shipped.heap;
        source = "site";
      }
      if (bytes) {
        ({ pyodide, module } = await loadPyodideWith({ indexURL, _loadSnapshot: bytes }, module));
        const heap = await bytes; // settled: Pyodide restored from it
        // Pyodide keeps its config for the instance's life: let the 30 MB copy go.
        delete pyodide._api.config._loadSnapshot;
        const missing = pyodide.runPython(
          `import sys; [m for m in ${JSON.stringify(SNAPSHOT_MODULES)} if m not in sys.modules]`,
        );
        if (missing.length) throw new Error(`snapshot lacks ${missing.join(", ")}`);
        info.snapshot = source;
        snapshotBytes = heap;
        if (source === "site" && options.makeSnapshot) {
          // Stored for the next start, as a snapshot this worker took would be.
          stored = storeSnapshot(key, heap).catch((err) => {
            console.warn("tidesync: could not store the boot snapshot", err);
            info.error = String(err);
          });
        }
      }
    } catch (err) {
      // Never trust it again: a normal boot below, and a new snapshot if this worker makes them.
      console.warn(`tidesync: boot snapshot (${source === "site" ? "the site's" : "stored"}) not usable, booting normally`, err);
      info.snapshot = "failed";
      info.error = String(err);
      pyodide = null;
      if (source === "loaded") {
        try { await (await snapshotCache())?.delete(key); } catch { /* best effort */ }
      }
    }
  }
  const make = Boolean(key && options.makeSnapshot && !pyodide);
  if (!pyodide) ({ pyodide, module } = await loadPyodideWith({ indexURL, _makeSnapshot: make }, module));
  installWheel(pyodide, await wheelBytes);
  if (make && key) {
    try {
      const bytes = takeSnapshot(pyodide);
      info.snapshot = "made";
      snapshotBytes = bytes;
      stored = storeSnapshot(key, bytes).catch((err) => {
        console.warn("tidesync: could not store the boot snapshot", err);
        info.error = String(err);
      });
    } catch (err) {
      // Not fatal: this boot goes on, the next one boots normally again.
      console.warn("tidesync: could not take a boot snapshot", err);
      info.error = String(err);
    }
  }
  pyodide.runPython(
    "import logging, sys\n" +
      "logging.basicConfig(stream=sys.stderr, level=logging.INFO,\n" +
      "    format='%(levelname)s %(name)s: %(message)s')\n" +
      // A restored heap repeats the snapshot's random state: reseed (backoff jitter).
      "if 'random' in sys.modules:\n" +
      "    sys.modules['random'].seed()\n",
  );
  info.wasm = module && module === options.wasmModule ? "shared" : "compiled";
  info.millis = performance.now() - started;
  pyodide.bootMillis = info.millis;
  pyodide.bootInfo = info;
  pyodide.snapshotStored = stored;
  pyodide.snapshotBytes = snapshotBytes;
  pyodide.wasmModule = module;
  return pyodide;
}
