// @ts-check
/**
 * tidesync page API: a local SQLite database that syncs itself.
 *
 *   const db = await TideSync.open({ url: "ws://127.0.0.1:8765/api/sync", name: "todo" });
 *   await db.insert("projects", { id: crypto.randomUUID(), name: "Garden" });
 *   const stop = db.subscribe("SELECT * FROM projects ORDER BY name", [], (rows) => render(rows));
 *   db.on("status", (s) => console.log(s.phase, s.lsn, s.pending));
 *
 * The page never sees a worker. One tab per origin and database owns the OPFS
 * file (Web Locks leader election); other tabs of the same database work
 * through it over a BroadcastChannel and take over when it closes.
 */
import { startBootstrap } from "./bootstrap_fetch.mjs";

/**
 * @typedef {Object} OpenOptions
 * @property {string} [url] WebSocket URL of the sync server; default `/api/sync` on this page's host
 * @property {string} [name] database name (one OPFS file each); default "tidesync"
 * @property {string} [schema] `CREATE TABLE` SQL of the synced tables; default: the demo schema
 * @property {string} [siteBase] URL of the site root holding `pyodide/` and `manifest.json`
 * @property {number} [heartbeatInterval] seconds between heartbeats; default 5
 * @property {boolean} [sync] false keeps the database local-only (no Sync Worker)
 * @property {boolean} [multiTab] false skips leader election (the tab always opens the file)
 * @property {number} [flushDelayMs] group flush for power loss, in ms; default 100. A write is
 *   durable against a crashed or killed tab when its promise resolves; the OPFS files are
 *   flushed to disk (durable against power loss / an OS crash) at most this long after it,
 *   when the page is hidden or unloaded, on `flush()` and on `close()`. 0 flushes after
 *   every request (slower: one disk flush per commit). See docs/storage.md.
 * @property {boolean} [snapshot] false boots Pyodide without the memory snapshot (neither
 *   reads nor takes one); default true: warm starts restore the interpreter with tidesync
 *   imported instead of starting it (js_shim/boot.mjs)
 * @property {boolean} [bootstrap] false never starts a new database from the server's image
 *   of it (`GET /api/bootstrap`); default true: a database that does not exist yet downloads
 *   it while Pyodide boots and, once checked, starts from it and only catches up
 *   (docs/protocol.md); anything else streams the initial sync
 */

/**
 * @typedef {Object} SyncStatus
 * @property {"starting"|"leader"|"follower"} role which tab owns the database file
 * @property {boolean} ready local data is readable
 * @property {string|null} clientId this database's client id (once the Sync Worker reported)
 * @property {boolean} connected the socket to the server is open
 * @property {string} phase while connected: "connecting", "initial", "catchup", "live";
 *   while not: "offline" (goOffline() or no network), "backoff" (waiting to reconnect),
 *   "connecting", "disconnected", "stopped"; "starting" before the Sync Worker reports
 * @property {string} lsn the server position this database has applied (`H/L`)
 * @property {number} pending local changes the server has not acknowledged
 * @property {string|null} lastError the last sync or worker error (cleared when live again)
 * @property {number|null} reconnectIn seconds until the next reconnect attempt, when backing off
 * @property {number|null} reconnectAt the same as a `Date.now()` time, for a countdown
 * @property {{table: string, chunk: number, total: number, rows: number}|null} initProgress
 * @property {number} repairs integrity checks that found a table differing from the server
 * @property {number} tableRepairs repairs done by re-syncing only the differing tables
 * @property {number} fullResyncs repairs that re-synced everything (server without the
 *   table re-sync extension, or a table repair that kept failing)
 * @property {{tables: string[], mode: "tables"|"full"}|null} lastRepair the latest repair
 * @property {string[]} repairing tables being repaired right now
 * @property {Record<string, number>} timings milliseconds: `pyodideBoot`, `dbOpen` (in the
 *   worker), `syncBoot` (the Sync Worker's Pyodide boot), `ready` (open() to local data
 *   readable) and `live` (open() to live), page-side
 * @property {{changes?: string, sync?: string, syncWasm?: string}} boot how each worker
 *   booted Pyodide: "loaded" (from the memory snapshot), "site" (first visit, from the
 *   snapshot the site ships: `TIDESYNC_SITE_SNAPSHOT=1 make site`), "made" (normal boot,
 *   then took the snapshot), "none" (normal boot), "failed" (a snapshot did not load;
 *   normal boot); `syncWasm` "shared" when the Sync Worker ran the wasm the Changes Worker
 *   compiled, "compiled" when it compiled its own
 * @property {{used: boolean, rows?: number, lsn?: string, bytes?: number, fetchMs?: number,
 *   checkMs?: number, verifyMs?: number, copyMs?: number, reason?: string}|null} [bootstrap]
 *   how this database started: from the server's image (`used`; `fetchMs` its download
 *   from open, `verifyMs` its checks, `copyMs` its copy into OPFS), or why not (`reason`);
 *   null when the database already existed
 * @property {string} [earlySocket] the socket the Sync Worker opened before Pyodide was up:
 *   "adopted" (its first connection), "replaced" (opened for another URL, closed), "dropped"
 *   (not claimed in time), "waiting", "none"
 */

/** An error raised in Python, carried to the page with its message and type. */
export class TideSyncError extends Error {
  /** @param {string} message @param {string} [pythonType] */
  constructor(message, pythonType = "Error") {
    super(message);
    this.name = "TideSyncError";
    this.pythonType = pythonType;
  }
}

/** @param {{type?: string, message?: string}|undefined} error */
function toError(error) {
  return new TideSyncError(error?.message ?? "unknown error", error?.type);
}

/**
 * True when `JSON.stringify` carries `value` exactly: null, booleans, strings, finite
 * numbers, and arrays / plain objects of those (no undefined, BigInt, typed arrays, ...).
 * @param {any} value @param {number} [depth]
 * @returns {boolean}
 */
function isPlainJson(value, depth = 0) {
  if (value === null) return true;
  switch (typeof value) {
    case "string":
    case "boolean":
      return true;
    case "number":
      return Number.isFinite(value);
    case "object": {
      if (depth > 64) return false;
      if (Array.isArray(value)) {
        for (const item of value) if (!isPlainJson(item, depth + 1)) return false;
        return true;
      }
      const proto = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) return false;
      for (const key of Object.keys(value)) if (!isPlainJson(value[key], depth + 1)) return false;
      return true;
    }
    default:
      return false;
  }
}

/** Request/response over a Worker or MessagePort; `{id, cmd, args}` -> `{id, ok, result|error}`. */
class Rpc {
  /**
   * @param {{postMessage: Function}} target @param {(data: any) => void} onEvent
   * @param {boolean} [json] send requests as JSON text when that is exact (the Changes
   *   Worker's Python reads text much faster than it converts a JS object); replies and
   *   events may arrive as JSON text either way
   */
  constructor(target, onEvent, json = false) {
    this.target = target;
    this.onEvent = onEvent;
    this.json = json;
    this.nextId = 1;
    /** @type {Map<number, {resolve: Function, reject: Function}>} */
    this.waiting = new Map();
  }

  /** @param {string} cmd @param {any} [args] */
  call(cmd, args = {}) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      const request = { id, cmd, args };
      this.target.postMessage(this.json && isPlainJson(args) ? JSON.stringify(request) : request);
    });
  }

  /** @param {any} message */
  receive(message) {
    const data = typeof message === "string" ? JSON.parse(message) : message;
    // Events a request caused (a write's `tables_changed`) ride on its reply
    // (browser_entry.PageEvents): handled first, as if they had come before it.
    if (Array.isArray(data?.events)) for (const event of data.events) this.onEvent(event);
    if (data && typeof data.id === "number" && this.waiting.has(data.id)) {
      const pending = this.waiting.get(data.id);
      this.waiting.delete(data.id);
      if (data.ok) pending?.resolve(data.result);
      else pending?.reject(toError(data.error));
    } else if (data && data.event) {
      this.onEvent(data);
    }
  }

  /** @param {Error} error */
  failAll(error) {
    for (const pending of this.waiting.values()) pending.reject(error);
    this.waiting.clear();
  }
}

export class TideSync {
  /**
   * Open (or create) a database and start syncing it.
   * Resolves as soon as local data is readable, before the server is reached.
   * @param {OpenOptions} [options]
   * @returns {Promise<TideSync>}
   */
  static async open(options = {}) {
    const db = new TideSync(options);
    await db._start();
    return db;
  }

  /** @param {OpenOptions} options */
  constructor(options) {
    const here = new URL(".", import.meta.url);
    const wsBase = location.origin.replace(/^http/, "ws");
    this.options = {
      name: options.name ?? "tidesync",
      url: options.url ?? `${wsBase}/api/sync`,
      schema: options.schema ?? null,
      siteBase: options.siteBase ?? new URL("../", here).href,
      heartbeatInterval: options.heartbeatInterval ?? 5,
      sync: options.sync ?? true,
      multiTab: options.multiTab ?? true,
      flushDelayMs: options.flushDelayMs ?? 100,
      snapshot: options.snapshot ?? true,
      bootstrap: options.bootstrap ?? true,
    };
    this.t0 = performance.now();
    this.tabId = crypto.randomUUID();
    /** @type {SyncStatus} */
    this._status = {
      role: "starting", ready: false, clientId: null, connected: false, phase: "starting",
      lsn: "0/0", pending: 0, lastError: null, reconnectIn: null, reconnectAt: null,
      initProgress: null, repairs: 0, tableRepairs: 0, fullResyncs: 0, lastRepair: null,
      repairing: [], timings: {}, boot: {},
    };
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
    /** @type {Map<string, {sql: string, params: any[], callback: Function}>} */
    this._subs = new Map();
    this._nextSub = 1;
    /** @type {Rpc|null} */
    this._rpc = null;
    /** @type {Rpc|null} follower's line to the leader tab */
    this._leaderRpc = null;
    /** @type {Worker[]} */
    this._workers = [];
    /** @type {BroadcastChannel|null} */
    this._channel = null;
    /**
     * Leader: the tabs known to follow it (by tabId). Events are forwarded over the
     * BroadcastChannel only while there is one: a post there crosses the browser process
     * (~0.1 ms, measured), which a one-row write's reply would pay for nobody otherwise.
     * @type {Set<string>}
     */
    this._followers = new Set();
    this._closed = false;
    /** @type {() => void} */
    this._releaseLock = () => {};
    /** @type {((value: unknown) => void) | null} */
    this._onReady = null;
    /** @type {((error: Error) => void) | null} */
    this._onFatal = null;
    /** @type {(() => void) | undefined} page-visibility listeners of the leader (flush early) */
    this._flushOnHide = undefined;
    /** @type {(() => void) | undefined} */
    this._flushOnPageHide = undefined;
  }

  // --- reading and writing -------------------------------------------------------------

  /** @param {string} sql @param {any[]} [params] @returns {Promise<Record<string, any>[]>} */
  query(sql, params = []) { return this._call("query", { sql, params }); }

  /**
   * Raw SQL. Writes to synced tables are recorded and synced like the typed calls.
   * @param {string} sql @param {any[]} [params]
   * @returns {Promise<{rowsAffected: number, lastInsertRowid: number|null}>}
   */
  execute(sql, params = []) { return this._call("execute", { sql, params }); }

  /** @param {string} table @param {Record<string, any>} row */
  insert(table, row) { return this._call("insert", { table, row }); }
  /** @param {string} table @param {Record<string, any>} row primary key plus the columns to change */
  update(table, row) { return this._call("update", { table, row }); }
  /** @param {string} table @param {Record<string, any>} row at least the primary key */
  delete(table, row) { return this._call("delete", { table, row }); }
  /** @param {string} table @param {Record<string, any>} row */
  upsert(table, row) { return this._call("upsert", { table, row }); }

  /**
   * Several writes, all or nothing. The callback queues writes on `tx`; they are
   * committed together when it resolves, and none of them if it throws.
   * @param {(tx: {insert: Function, update: Function, delete: Function, upsert: Function, execute: Function}) => any} fn
   */
  async transaction(fn) {
    /** @type {any[]} */
    const ops = [];
    /** @param {string} op */
    const queue = (op) => (/** @type {any} */ a, /** @type {any} */ b) =>
      ops.push(op === "execute" ? { op, sql: a, params: b ?? [] } : { op, table: a, row: b });
    const tx = {
      insert: queue("insert"), update: queue("update"), delete: queue("delete"),
      upsert: queue("upsert"), execute: queue("execute"),
    };
    const value = await fn(tx);
    if (ops.length) await this._call("transaction", { ops });
    return value;
  }

  /**
   * Live query: `callback(rows)` now and whenever a table the query reads changes
   * (local writes, other tabs, the server). Returns a function that stops it.
   * @param {string} sql @param {any[]} params @param {(rows: Record<string, any>[]) => void} callback
   */
  subscribe(sql, params, callback) {
    const subId = `${this.tabId}:${this._nextSub++}`;
    this._subs.set(subId, { sql, params: params ?? [], callback });
    this._call("subscribe", { subId, sql, params: params ?? [] }).catch((err) => {
      this._subs.delete(subId);
      this._emit("error", err);
    });
    return () => {
      if (this._subs.delete(subId)) this._call("unsubscribe", { subId }).catch(() => {});
    };
  }

  /**
   * Flush the database files to disk now: every write resolved so far is then durable
   * against power loss too (they already survive a crashed tab). See `flushDelayMs`.
   * @returns {Promise<number>} how many files needed a flush
   */
  flush() { return this._call("flush", {}); }

  /** Local changes not yet acknowledged by the server, oldest first. */
  pendingChanges() { return this._call("pendingChanges", {}); }

  /**
   * The `local_changes` history (the inspector's view).
   * @param {{limit?: number, offset?: number, state?: string}} [options]
   */
  localChanges(options = {}) { return this._call("localChanges", options); }

  /** Drop the socket and stay offline (edits keep working and sync later). */
  goOffline() { return this._call("setOnline", { online: false }); }
  goOnline() { return this._call("setOnline", { online: true }); }

  /** @returns {SyncStatus} */
  get status() { return { ...this._status }; }

  /**
   * `"status"` (SyncStatus), `"change"` ({tables, source}), `"conflict"` (a local edit that
   * lost last-write-wins: {id, table, operation, local, localUpdatedAt, row, deleted}: `row` is
   * the server's winning row, `deleted` true when the row was deleted there), `"error"` (TideSyncError). Returns an
   * unsubscribe function.
   * @param {string} event @param {Function} fn
   */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event)?.add(fn);
    return () => this._listeners.get(event)?.delete(fn);
  }

  /** Stop syncing, close the database and release it to other tabs. */
  async close() {
    if (this._closed) return;
    this._closed = true;
    this._unwatchPage();
    if (this._rpc) {
      try { await this._rpc.call("close", {}); } catch { /* already gone */ }
    }
    for (const worker of this._workers) worker.terminate();
    this._rpc?.failAll(new TideSyncError("database closed"));
    this._leaderRpc?.failAll(new TideSyncError("database closed"));
    if (this._status.role === "follower") this._channel?.postMessage({ type: "bye", from: this.tabId });
    this._channel?.close();
    this._releaseLock();
  }

  // --- internals ---------------------------------------------------------------------

  /** @param {string} cmd @param {any} args */
  _call(cmd, args) {
    if (this._closed) return Promise.reject(new TideSyncError("database closed"));
    const rpc = this._rpc ?? this._leaderRpc;
    if (!rpc) return Promise.reject(new TideSyncError("database is not open yet"));
    return rpc.call(cmd, args);
  }

  /** @param {string} event @param {any} value */
  _emit(event, value) {
    for (const fn of this._listeners.get(event) ?? []) {
      try { fn(value); } catch (err) { console.error(err); }
    }
  }

  /** @param {Partial<SyncStatus>} patch */
  _setStatus(patch) {
    this._status = { ...this._status, ...patch, timings: { ...this._status.timings, ...(patch.timings ?? {}) } };
    if (this._status.phase === "live" && this._status.timings.live === undefined) {
      this._status.timings.live = Math.round(performance.now() - this.t0);
    }
    this._emit("status", this.status);
  }

  async _start() {
    const lockName = `tidesync:${this.options.name}`;
    if (!this.options.multiTab || !navigator.locks) {
      await this._becomeLeader();
      return;
    }
    const held = new Promise((resolve) => { this._releaseLock = () => resolve(undefined); });
    const gotIt = await new Promise((resolve) => {
      navigator.locks.request(lockName, { ifAvailable: true }, async (lock) => {
        resolve(Boolean(lock));
        if (lock) await held;
      });
    });
    if (gotIt) {
      await this._becomeLeader();
      return;
    }
    await this._becomeFollower();
    // Wait in line; when the owning tab closes, its lock is released and we take over.
    navigator.locks.request(lockName, async () => {
      if (this._closed) return;
      await this._takeOver();
      await held;
    });
  }

  async _becomeLeader() {
    const opts = this.options;
    const config = {
      name: opts.name, url: opts.url, schema: opts.schema, siteBase: opts.siteBase,
      heartbeatInterval: opts.heartbeatInterval, sync: opts.sync, flushDelayMs: opts.flushDelayMs,
      snapshot: opts.snapshot, bootstrap: opts.bootstrap,
    };
    const changes = new Worker(new URL("./changes.worker.mjs", import.meta.url), { type: "module", name: "tidesync-changes" });
    this._workers.push(changes);
    const channel = new MessageChannel();
    this._rpc = new Rpc(changes, (data) => this._onWorkerEvent(data), true);
    /** @type {Uint8Array|null} the Changes Worker's heap, for the Sync Worker's boot */
    let snapshot = null;
    /** @type {WebAssembly.Module|null} Pyodide's wasm as that worker compiled it */
    let wasmModule = null;
    changes.onmessage = (ev) => {
      // Kept here, never forwarded to other tabs (30 MB).
      if (ev.data?.event === "snapshot") {
        if (ev.data.bytes instanceof Uint8Array) snapshot = ev.data.bytes;
        if (ev.data.wasmModule instanceof WebAssembly.Module) wasmModule = ev.data.wasmModule;
        return;
      }
      this._rpc?.receive(ev.data);
    };
    const ready = new Promise((resolve, reject) => { this._onReady = resolve; this._onFatal = reject; });
    // A new database's image downloads here, on the page, while the worker boots Pyodide:
    // the worker's thread is busy with the boot, and a body read there would wait for it.
    const download = opts.sync ? startBootstrap(config) : null;
    changes.postMessage({ kind: "init", config: { ...config, bootstrapPending: Boolean(download) } }, [channel.port1]);
    download?.then((result) => {
      // Transferred, not copied (17 MB per 100k demo rows).
      changes.postMessage({ kind: "bootstrap", ...result }, result.bytes ? [result.bytes.buffer] : []);
    });
    this._setStatus({ role: "leader" });
    this._serveFollowers();
    this._watchPage();
    const { syncUrl } = /** @type {{syncUrl?: string}} */ (await ready);
    if (opts.sync && !this._closed) {
      this._startSyncWorker({ ...config, preconnectUrl: syncUrl ?? null }, channel.port2, snapshot, wasmModule);
      snapshot = wasmModule = null;
    }
  }

  /**
   * Start the Sync Worker once local data is readable (the Changes Worker's "ready"): two
   * Pyodide boots at once would share the cores and delay reading (measured: starting it
   * at the Changes Worker's "booted" made cold "ready" ~250 ms later and live no sooner;
   * starting it while a new database adopts the server's image made the image's check and
   * the Sync Worker's boot each ~0.1-0.2 s longer and live no sooner either).
   * It boots from the heap the Changes Worker restored or took (handed over, not read back
   * from Cache Storage) and instantiates the wasm that worker compiled. Messages the
   * Changes Worker posts to it meanwhile wait in the channel. `config.preconnectUrl` (the
   * ready event's `syncUrl`) lets it open its socket before Pyodide is up.
   * @param {Record<string, any>} config @param {MessagePort} port @param {Uint8Array|null} heap
   * @param {WebAssembly.Module|null} wasmModule
   */
  _startSyncWorker(config, port, heap, wasmModule) {
    const sync = new Worker(new URL("./sync.worker.mjs", import.meta.url), { type: "module", name: "tidesync-sync" });
    this._workers.push(sync);
    sync.onmessage = (ev) => {
      if (ev.data?.event === "fatal" || ev.data?.event === "booted") this._onWorkerEvent(ev.data);
    };
    const transfer = heap ? [port, heap.buffer] : [port];
    try {
      sync.postMessage({ kind: "init", config, snapshot: heap, wasmModule }, transfer);
    } catch {
      // The module could not be posted (DataCloneError, nothing transferred): without it.
      sync.postMessage({ kind: "init", config, snapshot: heap, wasmModule: null }, transfer);
    }
  }

  /**
   * Leader: flush the group-flush window early when the page is hidden or unloaded (the
   * moments a user or the OS is most likely to end it). Best effort: a killed tab keeps
   * its commits anyway; this narrows the power-loss window.
   */
  _watchPage() {
    if (typeof document === "undefined" || this._flushOnHide) return;
    const flushNow = () => { this._rpc?.call("flush", {}).catch(() => {}); };
    this._flushOnHide = () => { if (document.visibilityState === "hidden") flushNow(); };
    this._flushOnPageHide = flushNow;
    document.addEventListener("visibilitychange", this._flushOnHide);
    window.addEventListener("pagehide", this._flushOnPageHide);
  }

  _unwatchPage() {
    if (this._flushOnHide) document.removeEventListener("visibilitychange", this._flushOnHide);
    if (this._flushOnPageHide) window.removeEventListener("pagehide", this._flushOnPageHide);
    this._flushOnHide = this._flushOnPageHide = undefined;
  }

  /** @param {any} data */
  _onWorkerEvent(data) {
    switch (data.event) {
      case "ready":
        this._setStatus({
          ready: true,
          bootstrap: data.bootstrap ?? null,
          timings: { ...(data.timings ?? {}), ready: Math.round(performance.now() - this.t0) },
        });
        this._onReady?.(data);
        break;
      case "fatal": {
        const err = toError(data.error);
        this._setStatus({ lastError: err.message });
        this._emit("error", err);
        this._onFatal?.(err);
        break;
      }
      case "status":
        this._setStatus(data.status);
        break;
      case "booted":
        this._setStatus({
          boot: {
            ...this._status.boot,
            [data.worker]: data.boot?.snapshot,
            ...(data.worker === "sync" ? { syncWasm: data.boot?.wasm } : {}),
          },
          ...(data.worker === "sync" ? { timings: { syncBoot: Math.round(data.boot?.millis ?? 0) } } : {}),
        });
        break;
      case "query_result": {
        const sub = this._subs.get(data.subId);
        if (sub) sub.callback(data.rows);
        break;
      }
      case "tables_changed":
        this._emit("change", { tables: data.tables, source: data.source });
        break;
      case "conflict":
        this._emit("conflict", data.change);
        break;
      default:
        break;
    }
    if (this._status.role === "leader" && this._channel && this._followers.size && data.event !== "ready") {
      this._channel.postMessage({ type: "event", data });
    }
  }

  /** Leader: answer other tabs' requests through our Changes Worker. */
  _serveFollowers() {
    if (typeof BroadcastChannel === "undefined" || !this.options.multiTab) return;
    this._channel?.close();
    this._channel = new BroadcastChannel(`tidesync:${this.options.name}`);
    this._followers.clear();
    this._channel.onmessage = async (ev) => {
      const msg = ev.data;
      // A follower makes itself known by any request (its first is "status"), by answering
      // the "leader" call below, and leaves with "bye" (a crashed one never does: it is
      // kept, which only costs the forwarding).
      if (typeof msg?.from === "string") {
        if (msg.type === "bye") this._followers.delete(msg.from);
        else if (msg.type === "req" || msg.type === "follower") this._followers.add(msg.from);
      }
      if (msg?.type !== "req" || !this._rpc) return;
      try {
        const result = await this._rpc.call(msg.cmd, msg.args);
        this._channel?.postMessage({ type: "res", to: msg.from, id: msg.id, ok: true, result });
      } catch (err) {
        const e = /** @type {TideSyncError} */ (err);
        this._channel?.postMessage({ type: "res", to: msg.from, id: msg.id, ok: false, error: { type: e.pythonType ?? e.name, message: e.message } });
      }
    };
    // Tabs already following (this tab took over from a leader that closed) answer this.
    this._channel.postMessage({ type: "leader" });
  }

  /** Follower: every call goes to the leader tab over the BroadcastChannel. */
  async _becomeFollower() {
    this._channel = new BroadcastChannel(`tidesync:${this.options.name}`);
    const channel = this._channel;
    this._leaderRpc = new Rpc(
      { postMessage: (/** @type {any} */ m) => channel.postMessage({ type: "req", from: this.tabId, ...m }) },
      () => {},
    );
    channel.onmessage = (ev) => {
      const msg = ev.data;
      if (msg?.type === "res" && msg.to === this.tabId) this._leaderRpc?.receive(msg);
      else if (msg?.type === "event") this._onFollowerEvent(msg.data);
      else if (msg?.type === "leader") channel.postMessage({ type: "follower", from: this.tabId });
    };
    this._setStatus({ role: "follower" });
    const status = await Promise.race([
      this._leaderRpc.call("status", {}),
      new Promise((resolve) => setTimeout(() => resolve(null), 15000)),
    ]);
    if (status) this._setStatus({ ...status, role: "follower", ready: true, timings: { ready: Math.round(performance.now() - this.t0) } });
    else this._setStatus({ lastError: "another tab owns this database and did not answer" });
  }

  /** @param {any} data */
  _onFollowerEvent(data) {
    if (data.event === "status") this._setStatus({ ...data.status, role: "follower" });
    else if (data.event === "query_result") this._subs.get(data.subId)?.callback(data.rows);
    else if (data.event === "tables_changed") this._emit("change", { tables: data.tables, source: data.source });
    else if (data.event === "conflict") this._emit("conflict", data.change);
  }

  /** The owning tab closed: open the file here, re-run our live queries. */
  async _takeOver() {
    const old = this._leaderRpc;
    this._leaderRpc = null;
    old?.failAll(new TideSyncError("the tab that owned the database closed before answering; retry"));
    this._channel?.close();
    this._channel = null;
    // The old leader's last status (live, nothing pending) is not ours: until our own workers
    // report, this tab is starting, so nobody mistakes the handover for a live database.
    this._setStatus({ ready: false, connected: false, phase: "starting" });
    await this._becomeLeader();
    for (const [subId, sub] of this._subs) {
      this._call("subscribe", { subId, sql: sub.sql, params: sub.params }).catch((err) => this._emit("error", err));
    }
  }
}

export default TideSync;
