// @ts-check
/**
 * The download of a new client's whole database (`GET /api/bootstrap`, docs/protocol.md),
 * run by the page (the leader tab) while the Changes Worker boots Pyodide, and posted to
 * that worker. Not in the worker: its thread is busy with the boot, and a body read there
 * waited for it (measured: the image was complete ~1.6 s after the start, as the boot).
 *
 * Only for a database that does not exist yet in OPFS (no file, or an empty one), with
 * sync on. Python (`tidesync.changes.bootstrap_image.adopt_image`) checks the image and
 * adopts it, or keeps the empty database and streams the initial sync as always: a
 * server without the endpoint (404), a small snapshot (204), a network error or a failed
 * check all end on the streamed path. Nothing here reads the bytes.
 */
import { RECOMMENDED_PRAGMAS } from "./opfs_fs.mjs";

/**
 * @typedef {object} BootstrapDownload
 * @property {Uint8Array} [bytes] the SQLite file (absent when there is none to adopt)
 * @property {string} [skipped] why there is none (absent, not null: Python sees None)
 * @property {boolean} [existing] the database exists already: nothing was fetched
 * @property {number} fetchMs from the worker's start to the whole file, ms
 */

/** The page size new databases get (`RECOMMENDED_PRAGMAS`): the image must have it. */
export function newDatabasePageSize() {
  for (const pragma of RECOMMENDED_PRAGMAS) {
    const found = /^PRAGMA page_size=(\d+)$/.exec(pragma);
    if (found) return Number(found[1]);
  }
  return 4096; // SQLite's default
}

/**
 * `ws(s)://host/api/sync?...` -> `http(s)://host/api/bootstrap?...&pageSize=N`.
 * @param {string} syncUrl @param {number} pageSize @returns {string|null}
 */
export function bootstrapUrl(syncUrl, pageSize) {
  let url;
  try {
    url = new URL(syncUrl);
  } catch {
    return null;
  }
  const scheme = { "ws:": "http:", "wss:": "https:", "http:": "http:", "https:": "https:" }[url.protocol];
  if (!scheme) return null;
  url.protocol = scheme;
  url.pathname = url.pathname.replace(/[^/]*$/, "bootstrap");
  url.searchParams.set("pageSize", String(pageSize));
  return url.href;
}

/**
 * Whether `dir/file` in this origin's OPFS is missing or empty. Any doubt (no OPFS, a
 * handle another context holds) answers false: an existing database is never replaced.
 * @param {string} dir @param {string} file @returns {Promise<boolean>}
 */
async function databaseIsNew(dir, file) {
  try {
    const root = await navigator.storage.getDirectory();
    let folder;
    try {
      folder = await root.getDirectoryHandle(dir);
    } catch (err) {
      return /** @type {Error} */ (err).name === "NotFoundError";
    }
    let handle;
    try {
      handle = await folder.getFileHandle(file);
    } catch (err) {
      return /** @type {Error} */ (err).name === "NotFoundError";
    }
    return (await handle.getFile()).size === 0;
  } catch {
    return false;
  }
}

/**
 * Start the download when this database is new; null when the config rules it out.
 * @param {{sync?: boolean, url?: string, bootstrap?: boolean, name: string, opfsDir?: string}} config
 * @returns {Promise<BootstrapDownload>|null}
 */
export function startBootstrap(config) {
  if (config.sync === false || config.bootstrap === false || typeof config.url !== "string") {
    return null;
  }
  const url = bootstrapUrl(config.url, newDatabasePageSize());
  if (!url) return null;
  const started = performance.now();
  const done = (/** @type {string} */ skipped) => ({ skipped, fetchMs: performance.now() - started });
  return (async () => {
    if (!(await databaseIsNew(config.opfsDir || "tidesync", `${config.name}.sqlite3`))) {
      return { ...done("the database exists"), existing: true };
    }
    try {
      const response = await fetch(url, { cache: "no-store" });
      if (response.status !== 200) {
        response.body?.cancel().catch(() => {});
        return done(`HTTP ${response.status}`);
      }
      const bytes = new Uint8Array(await response.arrayBuffer());
      return { bytes, fetchMs: performance.now() - started };
    } catch (err) {
      return done(`download failed: ${err}`);
    }
  })();
}
