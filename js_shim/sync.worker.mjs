// @ts-check
/**
 * Sync Worker bootstrap: the one owner of the WebSocket to the sync server.
 *
 * Loads Pyodide (from the boot snapshot the Changes Worker restored or took, handed over
 * by the page with the wasm that worker compiled, else the stored one; it never takes
 * one itself), then hands control to
 * `tidesync.worker_sync.worker_thread.browser_entry`, which reaches the Changes
 * Worker through the MessageChannel port it is given and the server through
 * `js.WebSocket`.
 *
 * With `config.preconnectUrl` it opens that socket first and keeps every event of it
 * until Python adopts it (`sync_socket.mjs`), so connecting and the server's first frames
 * overlap the ~0.3-0.5 s boot.
 */
import { bootPyodide, messageInbox } from "./boot.mjs";
import { frameUtf8, openEarly } from "./sync_socket.mjs";

const inbox = messageInbox(self);
const init = await inbox.first((ev) => ev.data && ev.data.kind === "init");
const config = init.data.config;
const changesPort = init.ports[0];
const early = openEarly(config.preconnectUrl);

try {
  const pyodide = await bootPyodide(config.siteBase, {
    useSnapshot: config.snapshot !== false,
    snapshot: init.data.snapshot ?? undefined,
    wasmModule: init.data.wasmModule ?? undefined,
  });
  // The heap it restored: keep no reference (the init message lives on), it is 30 MB.
  pyodide.snapshotBytes = pyodide.wasmModule = null;
  init.data.snapshot = init.data.wasmModule = null;
  self.postMessage({ event: "booted", worker: "sync", boot: pyodide.bootInfo });
  const entry = pyodide.pyimport("tidesync.worker_sync.worker_thread.browser_entry");
  await entry.start({
    config: { ...config, bootMillis: pyodide.bootMillis },
    post: (/** @type {any} */ message) => self.postMessage(message),
    take: inbox.take,
    changesPort,
    early,
    frameUtf8,
  });
} catch (err) {
  if (early) early.ws.close(1000);
  const error = /** @type {Error} */ (err);
  console.error("tidesync sync worker failed to start", error);
  self.postMessage({ event: "fatal", error: { type: error.name, message: String(error.message) } });
}
