// @ts-check
/**
 * Changes Worker bootstrap: the one owner of the SQLite database on OPFS.
 *
 * Loads Pyodide (from the boot snapshot when there is one; on a boot without one it
 * takes it and stores it for the next start in the background), hands that heap to the
 * page, with the wasm module it compiled, for the Sync Worker (started after this worker is
 * ready, it restores that heap without reading Cache Storage and does not compile the wasm
 * again), mounts the OPFS file system under SQLite, then hands control to
 * `tidesync.changes.browser_entry`. The page posts `{kind: "init", config}` with one end
 * of the MessageChannel to the Sync Worker; every later message (page requests, Sync
 * Worker requests) is handled in Python. A database that does not exist yet may start from
 * the server's image of it (`bootstrap_fetch.mjs`), which the page downloads meanwhile.
 */
import { bootPyodide, messageInbox } from "./boot.mjs";
import { mountOpfs } from "./opfs_fs.mjs";

const inbox = messageInbox(self);
const init = await inbox.first((ev) => ev.data && ev.data.kind === "init");
const config = init.data.config;
const syncPort = init.ports[0];
// A new database's image, downloaded by the page while Pyodide boots here
// (bootstrap_fetch.mjs): posted as `{kind: "bootstrap", bytes?, skipped?, fetchMs}`.
const bootstrap = config.bootstrapPending
  ? inbox.first((ev) => ev.data && ev.data.kind === "bootstrap").then((ev) => ev.data)
  : undefined;

try {
  const useSnapshot = config.snapshot !== false;
  const pyodide = await bootPyodide(config.siteBase, { useSnapshot, makeSnapshot: useSnapshot });
  // Transferred, not copied (30 MB); a page without sync has no use for it. Either way this
  // worker keeps no reference: it would hold the 30 MB for its whole life.
  // The compiled wasm goes with it (cloned: a Module shares its code, it is not copied).
  if ((pyodide.snapshotBytes || pyodide.wasmModule) && config.sync !== false) {
    const bytes = pyodide.snapshotBytes;
    const transfer = bytes ? [bytes.buffer] : [];
    try {
      self.postMessage({ event: "snapshot", bytes, wasmModule: pyodide.wasmModule }, transfer);
    } catch {
      // A browser that cannot post a WebAssembly.Module (DataCloneError, nothing was
      // transferred): the heap alone; the Sync Worker then compiles the wasm itself.
      if (bytes) self.postMessage({ event: "snapshot", bytes, wasmModule: null }, transfer);
    }
  }
  pyodide.snapshotBytes = pyodide.wasmModule = null;
  self.postMessage({ event: "booted", worker: "changes", boot: pyodide.bootInfo });
  const dbFile = `${config.name}.sqlite3`;
  const mounting = mountOpfs(pyodide, {
    mountPoint: "/opfs",
    dir: config.opfsDir || "tidesync",
    files: [dbFile],
    // A tab that crashed holds its OPFS locks until the browser notices: wait for them.
    lockTimeoutMs: config.lockTimeoutMs ?? 30000,
    // Group flush (docs/storage.md): commits are renderer-kill durable when they
    // return; the power-loss flush runs at most once per flushDelayMs.
    flushDelayMs: config.flushDelayMs ?? 0,
  });
  // The snapshot is stored meanwhile: nothing here waits for it.
  const storage = await mounting;
  const entry = pyodide.pyimport("tidesync.changes.browser_entry");
  await entry.start({
    config: { ...config, dbPath: `/opfs/${dbFile}`, bootMillis: pyodide.bootMillis },
    post: (/** @type {any} */ message) => self.postMessage(message),
    take: inbox.take,
    syncPort,
    storage,
    bootstrap: bootstrap ?? undefined, // not null: Python sees None
  });
} catch (err) {
  const error = /** @type {Error} */ (err);
  console.error("tidesync changes worker failed to start", error);
  self.postMessage({ event: "fatal", error: { type: error.name, message: String(error.message) } });
}
