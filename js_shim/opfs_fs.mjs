// @ts-check
/**
 * OPFSFS: an Emscripten file system whose files are OPFS FileSystemSyncAccessHandles.
 *
 * Python's stdlib sqlite3 inside Pyodide talks to SQLite's unix VFS, which talks to
 * Emscripten's POSIX layer (`pyodide.FS`). Mounting this file system at `/opfs` puts
 * SQLite's files in the Origin Private File System with no copy step: every
 * `pwrite` SQLite issues is one `handle.write(view, {at})` straight into the OPFS
 * file, every `fsync` is `handle.flush()`. Commit cost therefore depends on the
 * pages a transaction touches, never on the database size (unlike
 * `mountNativeFS` + `syncfs`, which copies whole files).
 *
 * OPFS sync access handles can only be *created* asynchronously, while Emscripten
 * file operations are synchronous. So `mountOpfs` opens, before Python touches
 * anything, one handle for each file SQLite may use: for each database `X` the
 * files `X`, `X-journal`, `X-wal` and `X-shm`. Those are the only files that exist
 * in the mount; creating any other name fails with EPERM (and a console message
 * naming the file).
 *
 * Deleting a file (SQLite deletes the rollback journal in journal_mode=DELETE,
 * and the WAL on a clean close) truncates it to 0 bytes, flushes, and hides it
 * from lookups and directory listings. A 0-byte file is treated as absent when a
 * later `mountOpfs` opens the directory again, which is exactly what SQLite's
 * hot-journal / WAL-recovery logic expects of a deleted file.
 *
 * Each handle holds an exclusive OPFS lock on its file: only one worker (in one
 * tab) can have a database mounted at a time. `closeOpfs()` flushes and releases
 * the handles so another worker can mount later; a crashed renderer releases them
 * too (the browser may take a moment, hence `lockTimeoutMs`).
 *
 * Durability: a write returns once the bytes are in the operating system's file
 * (they survive the renderer being killed); `fsync`/`flush()` pushes them to the
 * disk (they survive power loss). See docs/storage.md for the measured commit
 * rates and the reasons for RECOMMENDED_PRAGMAS.
 *
 * Usage (in a module Web Worker, before Python opens the database):
 *
 *     const storage = await mountOpfs(pyodide, {mountPoint: "/opfs", dir: "tidesync",
 *                                               files: ["app.sqlite3"]});
 *     // Python: sqlite3.connect("/opfs/app.sqlite3"); apply RECOMMENDED_PRAGMAS
 *     ...
 *     await closeOpfs(storage);   // after Python closed its connections
 */

/**
 * PRAGMAs to run, in this order, on every connection right after
 * `sqlite3.connect(...)` and before any other statement. Measured in Chromium,
 * see docs/storage.md. `locking_mode=EXCLUSIVE` must come before
 * `journal_mode=WAL` so that SQLite keeps the WAL index in heap memory and never
 * needs the `-shm` file (no shared memory across workers exists anyway: the
 * OPFS handles are exclusive to one worker).
 */
export const RECOMMENDED_PRAGMAS = Object.freeze([
  // 2 KiB pages for new databases (an existing file keeps its size): a one-row insert
  // writes ~10 pages (the row, its indexes, the local_changes row and its indexes, _ts_ctx)
  // and a sync access handle write costs about per byte (in the browser process too), so
  // half the page is ~40% fewer WAL bytes per commit (docs/storage.md).
  "PRAGMA page_size=2048",
  "PRAGMA locking_mode=EXCLUSIVE",
  "PRAGMA journal_mode=WAL",
  "PRAGMA synchronous=FULL",
  "PRAGMA cache_size=-16384",
  "PRAGMA temp_store=MEMORY",
  // Pages: ~8 MiB of WAL. A checkpoint copies each page the WAL holds once, however often it
  // was written since the last one, so a longer interval copies fewer pages per commit (the
  // random index pages of a one-row write): 2000 -> 4000 took 153 -> 137 us per local write at
  // 100k rows, in one worker on OPFS; recovering an 8 MiB WAL after a crash took ~12 ms
  // (docs/performance.md, "What was tuned").
  "PRAGMA wal_autocheckpoint=4000",
  "PRAGMA journal_size_limit=67108864",
]);

/** Suffixes of the files SQLite may create next to a database file. */
export const SQLITE_SUFFIXES = Object.freeze(["", "-journal", "-wal", "-shm"]);

const DIR_MODE = 0o040755;
const FILE_MODE = 0o100644;
// Emscripten's errno numbering (not Linux's): see ERRNO_CODES in pyodide.asm.mjs.
const EPERM = 63;
const ENOENT = 44;
const EIO = 29;
const EINVAL = 28;
const ENODEV = 43;
const ENOTEMPTY = 55;
const ENOSPC = 51;

/** @type {Set<OpfsStorage>} */
const mounted = new Set();

/**
 * @typedef {object} OpfsEntry
 * @property {string} name
 * @property {FileSystemFileHandle} fileHandle
 * @property {any} handle FileSystemSyncAccessHandle
 * @property {boolean} exists  false once unlinked (0 bytes, hidden)
 * @property {number} size    cached; this worker is the only writer
 * @property {number} atime
 * @property {number} mtime
 * @property {number} ctime
 * @property {number} mode
 * @property {boolean} dirty  written since the last flush
 */

/**
 * @typedef {object} OpfsStats
 * @property {number} reads
 * @property {number} writes
 * @property {number} bytesRead
 * @property {number} bytesWritten
 * @property {number} flushes   handle.flush() calls (fsync, unlink, close)
 * @property {number} truncates
 * @property {number} unlinks
 * @property {number} barrierFlushes  flushes done to order writes across files
 * @property {number} idleFlushes     idle flush rounds after writes (microtask or group timer)
 * @property {number} gatheredWrites  SQLite writes to a -wal file gathered into fewer
 *   handle.write() calls (`writes` counts the handle.write() calls)
 */

/**
 * What `mountOpfs` returns (the Changes Worker hands it to Python as `storage`).
 * @typedef {object} OpfsStorage
 * @property {string} mountPoint   e.g. "/opfs"
 * @property {string} dir          OPFS directory path, e.g. "tidesync"
 * @property {string[]} databases  database names as given in `files`
 * @property {string[]} files      every pre-opened file name (databases x suffixes)
 * @property {string[]} recommendedPragmas  a copy of RECOMMENDED_PRAGMAS, for Python
 * @property {OpfsStats} stats
 * @property {boolean} closed
 * @property {(name: string) => string} path  absolute FS path of a file in the mount
 * @property {() => string[]} existing       names currently visible (not unlinked)
 * @property {() => number} flushAll          flush every dirty handle now (durable against
 *   power loss when it returns); returns how many were flushed
 * @property {() => Promise<void>} close      same as closeOpfs(storage)
 * @property {() => void} resetStats
 */

/**
 * @param {FileSystemDirectoryHandle} root
 * @param {string} path  "a/b/c"
 */
async function openDir(root, path) {
  let dir = root;
  for (const part of path.split("/").filter(Boolean)) {
    dir = await dir.getDirectoryHandle(part, { create: true });
  }
  return dir;
}

/**
 * createSyncAccessHandle, retrying while another context (e.g. a renderer that is
 * being torn down after a crash, or a worker that has not closed yet) holds the lock.
 * @param {FileSystemFileHandle} fileHandle
 * @param {number} timeoutMs
 */
async function openSyncHandle(fileHandle, timeoutMs) {
  const deadline = performance.now() + timeoutMs;
  let delay = 10;
  for (;;) {
    try {
      return await /** @type {any} */ (fileHandle).createSyncAccessHandle();
    } catch (err) {
      const e = /** @type {Error} */ (err);
      if (e.name !== "NoModificationAllowedError" || performance.now() > deadline) {
        const why = new Error(
          `OPFS: cannot open ${fileHandle.name} for synchronous access ` +
            `(${e.name}: ${e.message}); is the database open in another tab or worker?`,
        );
        why.name = e.name;
        throw why;
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 200);
    }
  }
}

/**
 * Open the OPFS directory and its files, define the file system and mount it.
 *
 * @param {any} pyodide the object `loadPyodide()` resolved to
 * @param {object} [options]
 * @param {string} [options.mountPoint="/opfs"]  where it appears in Pyodide's FS
 * @param {string} [options.dir="tidesync"]      OPFS directory ("a/b" nests)
 * @param {string[]} [options.files=[]]          database names; each brings its
 *   `-journal`, `-wal`, `-shm` companions
 * @param {string[]} [options.suffixes=SQLITE_SUFFIXES]
 * @param {number} [options.lockTimeoutMs=10000] how long to wait for a handle
 *   another context still holds
 * @param {boolean} [options.barriers=true] before writing or truncating one file,
 *   flush every other file with unflushed writes (the ordering SQLite's fsyncs
 *   would give; see "fdatasync" in docs/storage.md)
 * @param {boolean} [options.flushOnIdle=true] flush unflushed files after a write:
 *   with `flushDelayMs` 0 in a microtask, i.e. as soon as Python returns control to
 *   JavaScript (after `runPython`, or at an `await` of `runPythonAsync`)
 * @param {number} [options.flushDelayMs=0] group flush: when > 0, the idle flush runs
 *   in a timer this many ms after the first unflushed write instead of a microtask, so
 *   all the commits of that window share one `flush()` per file. Writes are durable
 *   against a killed renderer when `write()` returns either way; this only widens the
 *   power-loss window to about `flushDelayMs` (docs/storage.md). `flushAll()` and
 *   `close()` flush at once.
 * @param {boolean} [options.gatherWal=true] gather the contiguous writes SQLite makes to a
 *   `-wal` file (a 24-byte frame header, then the page, for every page of a transaction)
 *   and hand them to the sync access handle as one `write()` when the transaction's
 *   commit frame is complete, i.e. before SQLite's COMMIT returns; so a commit is still
 *   in the OS file (renderer-kill durable) when it returns, with 1-2 writes instead of ~20.
 *   Anything else that touches a file first writes what is gathered.
 * @returns {Promise<OpfsStorage>}
 */
export async function mountOpfs(pyodide, options = {}) {
  const {
    mountPoint = "/opfs",
    dir = "tidesync",
    files = [],
    suffixes = SQLITE_SUFFIXES,
    lockTimeoutMs = 10000,
    barriers = true,
    flushOnIdle = true,
    flushDelayMs = 0,
    gatherWal = true,
  } = options;
  if (!(typeof flushDelayMs === "number" && flushDelayMs >= 0 && flushDelayMs <= 60000)) {
    throw new Error(`OPFS: flushDelayMs must be a number of ms in 0..60000, not ${flushDelayMs}`);
  }
  if (typeof navigator === "undefined" || !navigator.storage?.getDirectory) {
    throw new Error("OPFS: navigator.storage.getDirectory is not available here");
  }
  if (typeof (/** @type {any} */ (globalThis).FileSystemSyncAccessHandle) === "undefined") {
    throw new Error("OPFS: sync access handles exist only in dedicated Web Workers");
  }
  for (const f of files) {
    if (!f || f.includes("/")) throw new Error(`OPFS: bad database file name ${JSON.stringify(f)}`);
  }
  const FS = pyodide.FS;
  const Module = pyodide._module;

  const dirHandle = await openDir(await navigator.storage.getDirectory(), dir);
  const names = [...new Set(files.flatMap((f) => suffixes.map((s) => f + s)))];
  /** @type {Map<string, OpfsEntry>} */
  const entries = new Map();
  try {
    for (const name of names) {
      const fileHandle = await dirHandle.getFileHandle(name, { create: true });
      const handle = await openSyncHandle(fileHandle, lockTimeoutMs);
      const size = handle.getSize();
      const now = Date.now();
      entries.set(name, {
        name,
        fileHandle,
        handle,
        exists: size > 0,
        size,
        atime: now,
        mtime: now,
        ctime: now,
        mode: FILE_MODE,
        dirty: false,
      });
    }
  } catch (err) {
    for (const e of entries.values()) e.handle.close();
    throw err;
  }

  /** @type {OpfsStats} */
  const stats = {
    reads: 0,
    writes: 0,
    bytesRead: 0,
    bytesWritten: 0,
    flushes: 0,
    truncates: 0,
    unlinks: 0,
    barrierFlushes: 0,
    idleFlushes: 0,
    gatheredWrites: 0,
  };
  let closed = false;

  const err = (/** @type {number} */ errno) => new FS.ErrnoError(errno);
  const live = () => {
    if (closed) throw err(EIO);
  };
  // A sync access handle reports failures as DOMExceptions. Emscripten passes
  // only ErrnoErrors back to C as an errno; anything else unwinds straight
  // through SQLite's C frames, leaving the connection unusable (or the worker
  // hung). So: the quota used up is ENOSPC (SQLite: "database or disk is
  // full"), anything else EIO, with the browser's own message on the console.
  /** @template T @param {OpfsEntry} e @param {string} op @param {() => T} fn @returns {T} */
  const io = (e, op, fn) => {
    try {
      return fn();
    } catch (x) {
      const error = /** @type {any} */ (x);
      if (error?.name === "ErrnoError") throw error;
      const full = error?.name === "QuotaExceededError";
      console.error(
        `opfs_fs: ${op} ${e.name} failed: ${error?.name}: ${error?.message}` +
          (full ? " (the storage quota of this site is used up)" : ""),
      );
      throw err(full ? ENOSPC : EIO);
    }
  };
  /** @param {OpfsEntry} e */
  const flush = (e) => {
    io(e, "flush", () => e.handle.flush());
    e.dirty = false;
    stats.flushes++;
  };
  // Pyodide's Emscripten runtime implements fdatasync() as a no-op that never
  // reaches a file system, and SQLite's unix VFS syncs with fdatasync. So SQLite's
  // sync points are invisible here; we recreate their effect: (1) ordering, by
  // flushing the other dirty files before touching a file (WAL before the
  // checkpoint writes the database, the database before the WAL restarts, the
  // journal before the database, the database before the journal is
  // truncated/deleted); (2) durability, by flushing whatever is dirty as soon as
  // Python hands control back to JavaScript, and in storage.flushAll().
  /** @type {Set<OpfsEntry>} */
  const dirtySet = new Set();
  let idleScheduled = false;
  /** @type {ReturnType<typeof setTimeout> | null} */
  let idleTimer = null;
  const idleFlush = () => {
    idleScheduled = false;
    idleTimer = null;
    if (closed) return;
    drainGathered();
    for (const e of dirtySet) flush(e);
    dirtySet.clear();
    stats.idleFlushes++;
  };
  /** @param {OpfsEntry} target */
  const beforeModify = (target) => {
    if (!barriers || dirtySet.size === 0) return;
    for (const e of dirtySet) {
      if (e !== target) {
        flush(e);
        dirtySet.delete(e);
        stats.barrierFlushes++;
      }
    }
  };
  /** @param {OpfsEntry} e */
  const markDirty = (e) => {
    e.dirty = true;
    dirtySet.add(e);
    if (flushOnIdle && !idleScheduled) {
      idleScheduled = true;
      if (flushDelayMs > 0) idleTimer = setTimeout(idleFlush, flushDelayMs);
      else queueMicrotask(idleFlush);
    }
  };
  /** @param {any} node @returns {OpfsEntry} */
  const entryOf = (node) => node.opfsEntry;

  // WAL write gathering (option gatherWal). SQLite appends a transaction to the WAL
  // as frame header (24 bytes) + page, frame after frame, all contiguous; the header
  // of the transaction's last frame carries the database size after the commit
  // (bytes 4..7, zero in every other frame: the WAL file format). The frames are
  // copied here and written with one handle.write() when that commit frame's page
  // arrives, i.e. inside SQLite's COMMIT, before it returns: the renderer-kill
  // guarantee (docs/storage.md) holds. Every other operation on any file, and any
  // write that does not continue the run, first writes what is gathered
  // (`drainGathered`), so reads, barriers, truncates and flushes see the file as
  // SQLite wrote it. Frames of a transaction that never commits may stay gathered
  // until the next operation; a crash loses them, as SQLite's recovery would ignore them.
  const GATHER_MAX = 1 << 20;
  /** @type {OpfsEntry | null} */
  let gEntry = null;
  let gStart = 0;
  let gLen = 0;
  let gCommitNext = false;
  let gDrainScheduled = false;
  let gBuf = new Uint8Array(0);
  /** A failed write of gathered frames in the end-of-task drain, where nobody could see it. */
  /** @type {unknown} */
  let gDeferredError = null;
  const drainGathered = () => {
    if (gDeferredError !== null) {
      // Report it to SQLite on its next file operation, so the transaction whose frames
      // were lost fails instead of committing over a hole in the WAL.
      const err = gDeferredError;
      gDeferredError = null;
      throw err;
    }
    if (gEntry === null) return;
    const e = gEntry;
    const len = gLen;
    gEntry = null;
    gLen = 0;
    gCommitNext = false;
    const n = io(e, "write", () => e.handle.write(gBuf.subarray(0, len), { at: gStart }));
    checkWritten(e, n, len, gStart);
    markDirty(e);
    stats.writes++;
    stats.bytesWritten += n;
  };
  /**
   * @param {OpfsEntry} e @param {Int8Array} buffer @param {number} offset
   * @param {number} length @param {number} position
   * @returns {boolean} false when this write is not for gathering (the caller writes it)
   */
  const gatherWrite = (e, buffer, offset, length, position) => {
    if (!gatherWal || !e.name.endsWith("-wal") || length > GATHER_MAX) return false;
    if (gDeferredError !== null) drainGathered(); // throws it
    if (gEntry !== null && (gEntry !== e || position !== gStart + gLen || gLen + length > GATHER_MAX)) {
      drainGathered();
    }
    if (gEntry === null) {
      beforeModify(e);
      gEntry = e;
      gStart = position;
    }
    if (gBuf.length < gLen + length) {
      const grown = new Uint8Array(Math.min(GATHER_MAX, Math.max(65536, 2 * (gLen + length))));
      grown.set(gBuf.subarray(0, gLen));
      gBuf = grown;
    }
    gBuf.set(new Uint8Array(buffer.buffer, buffer.byteOffset + offset, length), gLen);
    gLen += length;
    if (position + length > e.size) e.size = position + length;
    e.mtime = e.ctime = Date.now();
    e.exists = true;
    stats.gatheredWrites++;
    const commitFrameHeader =
      length === 24 && (buffer[offset + 4] | buffer[offset + 5] | buffer[offset + 6] | buffer[offset + 7]) !== 0;
    if (gCommitNext && !commitFrameHeader) {
      drainGathered(); // the commit frame's page: the transaction is complete
    } else {
      gCommitNext = commitFrameHeader;
      if (!gDrainScheduled) {
        // Never keep bytes gathered past this task, whatever SQLite does next.
        gDrainScheduled = true;
        queueMicrotask(() => {
          gDrainScheduled = false;
          if (closed) return;
          try {
            drainGathered();
          } catch (err) {
            gDeferredError = err;
          }
        });
      }
    }
    return true;
  };
  /** @param {OpfsEntry} e @param {number} n @param {number} length @param {number} position */
  const checkWritten = (e, n, length, position) => {
    if (n === length) return;
    // Chromium 156 reports a full disk / used-up quota by returning base::File's
    // error code as an unsigned count (-8, FILE_ERROR_NO_SPACE -> 4294967288)
    // instead of throwing; a short count means no room for the rest too.
    const code = n | 0;
    const full = code === -8 || (code >= 0 && code < length);
    console.error(
      `opfs_fs: write ${e.name} failed: wrote ${n} of ${length} bytes at ${position}` +
        (full ? " (no space: the storage quota of this site is used up)" : ""),
    );
    throw err(full ? ENOSPC : EIO);
  };

  const fileAttr = (/** @type {any} */ node) => {
    const e = entryOf(node);
    return {
      dev: 1,
      ino: node.id,
      mode: e.mode,
      nlink: 1,
      uid: 0,
      gid: 0,
      rdev: 0,
      size: e.size,
      atime: new Date(e.atime),
      mtime: new Date(e.mtime),
      ctime: new Date(e.ctime),
      blksize: 4096,
      blocks: Math.ceil(e.size / 4096),
    };
  };

  const fileStreamOps = {
    open(/** @type {any} */ stream) {
      live();
      stream.opfsEntry = entryOf(stream.node);
    },
    close(/** @type {any} */ _stream) {},
    dup(/** @type {any} */ _stream) {},
    read(
      /** @type {any} */ stream,
      /** @type {Int8Array} */ buffer,
      /** @type {number} */ offset,
      /** @type {number} */ length,
      /** @type {number} */ position,
    ) {
      live();
      drainGathered();
      const e = /** @type {OpfsEntry} */ (stream.opfsEntry);
      if (length <= 0 || position >= e.size) return 0;
      const n = io(e, "read", () =>
        e.handle.read(buffer.subarray(offset, offset + length), { at: position }),
      );
      stats.reads++;
      stats.bytesRead += n;
      return n;
    },
    write(
      /** @type {any} */ stream,
      /** @type {Int8Array} */ buffer,
      /** @type {number} */ offset,
      /** @type {number} */ length,
      /** @type {number} */ position,
    ) {
      live();
      if (!length) return 0;
      const e = /** @type {OpfsEntry} */ (stream.opfsEntry);
      if (gatherWrite(e, buffer, offset, length, position)) return length;
      drainGathered();
      beforeModify(e);
      const n = io(e, "write", () =>
        e.handle.write(buffer.subarray(offset, offset + length), { at: position }),
      );
      checkWritten(e, n, length, position);
      if (position + n > e.size) e.size = position + n;
      e.mtime = e.ctime = Date.now();
      markDirty(e);
      e.exists = true;
      stats.writes++;
      stats.bytesWritten += n;
      return n;
    },
    llseek(/** @type {any} */ stream, /** @type {number} */ offset, /** @type {number} */ whence) {
      let position = offset;
      if (whence === 1) position += stream.position;
      else if (whence === 2) position += entryOf(stream.node).size;
      if (position < 0) throw err(EINVAL);
      return position;
    },
    fsync(/** @type {any} */ stream) {
      live();
      drainGathered();
      flush(stream.opfsEntry);
      dirtySet.delete(stream.opfsEntry);
      return 0;
    },
    // Only SQLite's -shm file is ever mapped, and only when WAL runs without
    // locking_mode=EXCLUSIVE. A private copy per mapping is coherent because
    // SQLite shares one mapping per file among the connections of a process.
    mmap(
      /** @type {any} */ stream,
      /** @type {number} */ length,
      /** @type {number} */ position,
      /** @type {number} */ _prot,
      /** @type {number} */ _flags,
    ) {
      live();
      drainGathered();
      if (typeof Module?.mmapAlloc !== "function") throw err(ENODEV);
      const ptr = Module.mmapAlloc(length);
      if (!ptr) throw err(48 /* ENOMEM */);
      const e = /** @type {OpfsEntry} */ (stream.opfsEntry);
      const avail = Math.max(0, Math.min(length, e.size - position));
      if (avail > 0) {
        e.handle.read(Module.HEAPU8.subarray(ptr, ptr + avail), { at: position });
      }
      return { ptr, allocated: true };
    },
    msync(
      /** @type {any} */ stream,
      /** @type {Uint8Array} */ buffer,
      /** @type {number} */ offset,
      /** @type {number} */ length,
      /** @type {number} */ _flags,
    ) {
      fileStreamOps.write(stream, /** @type {any} */ (buffer), 0, length, offset);
      return 0;
    },
  };

  const fileNodeOps = {
    getattr: fileAttr,
    setattr(/** @type {any} */ node, /** @type {any} */ attr) {
      live();
      const e = entryOf(node);
      if (attr.mode != null) e.mode = (attr.mode & 0o7777) | (FILE_MODE & ~0o7777);
      for (const key of /** @type {const} */ (["atime", "mtime", "ctime"])) {
        if (attr[key] != null) e[key] = attr[key];
      }
      if (attr.size !== undefined) {
        if (attr.size < 0) throw err(EINVAL);
        drainGathered();
        beforeModify(e);
        io(e, "truncate", () => e.handle.truncate(attr.size));
        e.size = attr.size;
        e.mtime = e.ctime = Date.now();
        markDirty(e);
        stats.truncates++;
      }
    },
  };

  /** @param {any} parent @param {OpfsEntry} e */
  const fileNode = (parent, e) => {
    const node = FS.createNode(parent, e.name, e.mode, 0);
    node.node_ops = fileNodeOps;
    node.stream_ops = fileStreamOps;
    node.opfsEntry = e;
    return node;
  };

  const dirNodeOps = {
    getattr(/** @type {any} */ node) {
      const now = new Date();
      return {
        dev: 1,
        ino: node.id,
        mode: DIR_MODE,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        size: 4096,
        atime: now,
        mtime: now,
        ctime: now,
        blksize: 4096,
        blocks: 1,
      };
    },
    setattr(/** @type {any} */ _node, /** @type {any} */ _attr) {},
    lookup(/** @type {any} */ parent, /** @type {string} */ name) {
      const e = entries.get(name);
      if (closed || !e || !e.exists) throw err(ENOENT);
      return fileNode(parent, e);
    },
    mknod(
      /** @type {any} */ parent,
      /** @type {string} */ name,
      /** @type {number} */ mode,
      /** @type {number} */ _dev,
    ) {
      live();
      const e = entries.get(name);
      if (!e || !FS.isFile(mode)) {
        console.error(
          `OPFSFS: cannot create ${mountPoint}/${name}: only the files opened by mountOpfs ` +
            `exist here (${[...entries.keys()].join(", ")}); pass its database name in ` +
            "mountOpfs({files}) instead",
        );
        throw err(EPERM);
      }
      e.exists = true;
      e.mode = (mode & 0o7777) | (FILE_MODE & ~0o7777);
      e.ctime = e.mtime = Date.now();
      return fileNode(parent, e);
    },
    unlink(/** @type {any} */ _parent, /** @type {string} */ name) {
      live();
      const e = entries.get(name);
      if (!e || !e.exists) throw err(ENOENT);
      drainGathered();
      // Deleting a rollback journal is SQLite's commit point in DELETE mode: make
      // the "deletion" (truncate to 0) durable, after the database, before returning.
      beforeModify(e);
      io(e, "truncate", () => e.handle.truncate(0));
      e.size = 0;
      flush(e);
      dirtySet.delete(e);
      e.exists = false;
      stats.unlinks++;
    },
    rename(/** @type {any} */ _old, /** @type {any} */ _dir, /** @type {string} */ _name) {
      throw err(EPERM);
    },
    rmdir(/** @type {any} */ _parent, /** @type {string} */ _name) {
      throw err(ENOTEMPTY);
    },
    readdir(/** @type {any} */ _node) {
      return [
        ".",
        "..",
        ...[...entries.values()].filter((e) => e.exists && !closed).map((e) => e.name),
      ];
    },
    symlink() {
      throw err(EPERM);
    },
    readlink() {
      throw err(EINVAL);
    },
  };
  const dirStreamOps = {
    llseek(/** @type {any} */ stream, /** @type {number} */ offset, /** @type {number} */ whence) {
      let position = offset;
      if (whence === 1) position += stream.position;
      if (position < 0) throw err(EINVAL);
      return position;
    },
    // SQLite fsyncs the directory after creating a journal; OPFS has no
    // directory entries to sync (files exist from mountOpfs on).
    fsync() {
      return 0;
    },
  };

  const OPFSFS = {
    mount(/** @type {any} */ _mount) {
      const root = FS.createNode(null, "/", DIR_MODE, 0);
      root.node_ops = dirNodeOps;
      root.stream_ops = dirStreamOps;
      return root;
    },
    syncfs(/** @type {any} */ _mount, /** @type {boolean} */ _populate, /** @type {Function} */ cb) {
      try {
        storage.flushAll();
        cb(null);
      } catch (e) {
        cb(e);
      }
    },
  };

  try {
    FS.mkdirTree(mountPoint);
  } catch (_e) {
    // exists
  }
  try {
    FS.mount(OPFSFS, {}, mountPoint);
  } catch (e) {
    for (const en of entries.values()) en.handle.close();
    throw new Error(`OPFS: cannot mount at ${mountPoint}: ${/** @type {Error} */ (e).message}`);
  }

  /** @type {OpfsStorage} */
  const storage = {
    mountPoint,
    dir,
    databases: [...files],
    files: names,
    recommendedPragmas: [...RECOMMENDED_PRAGMAS],
    stats,
    get closed() {
      return closed;
    },
    path: (name) => `${mountPoint}/${name}`,
    existing: () => [...entries.values()].filter((e) => e.exists).map((e) => e.name),
    flushAll() {
      drainGathered();
      let n = 0;
      for (const e of entries.values()) {
        if (e.dirty) {
          flush(e);
          n++;
        }
      }
      dirtySet.clear();
      return n;
    },
    resetStats() {
      for (const k of Object.keys(stats)) /** @type {any} */ (stats)[k] = 0;
    },
    async close() {
      if (closed) return;
      if (idleTimer !== null) clearTimeout(idleTimer);
      idleTimer = null;
      idleScheduled = false;
      /** @type {unknown} */
      let first = null;
      try {
        drainGathered();
      } catch (x) {
        first = x;
      }
      for (const e of entries.values()) {
        try {
          e.handle.flush();
          e.handle.close();
        } catch (x) {
          first ??= x;
        }
      }
      closed = true;
      mounted.delete(storage);
      try {
        FS.unmount(mountPoint);
      } catch (_e) {
        // already unmounted
      }
      if (first) throw first;
    },
  };
  mounted.add(storage);
  return storage;
}

/**
 * Flush and close the sync access handles (releasing the OPFS locks so another
 * worker or tab can mount the files) and unmount. Close Python's sqlite3
 * connections first: afterwards every operation on the mount fails with EIO.
 * @param {OpfsStorage} [storage] one mount; all mounts of this worker if omitted
 */
export async function closeOpfs(storage) {
  const targets = storage ? [storage] : [...mounted];
  for (const s of targets) await s.close();
}

/**
 * Sizes of the files in an OPFS directory (async, no locks needed), for tests and
 * diagnostics. Works in windows and workers.
 * @param {string} [dir="tidesync"]
 * @returns {Promise<Record<string, number>>}
 */
export async function listOpfs(dir = "tidesync") {
  const d = await openDir(await navigator.storage.getDirectory(), dir);
  /** @type {Record<string, number>} */
  const out = {};
  for await (const [name, h] of /** @type {any} */ (d).entries()) {
    if (h.kind === "file") out[name] = (await h.getFile()).size;
  }
  return out;
}

/**
 * Remove an OPFS directory and everything in it (files must not be mounted).
 * @param {string} dir
 */
export async function removeOpfsDir(dir) {
  const parts = dir.split("/").filter(Boolean);
  const last = parts.pop();
  if (!last) throw new Error("removeOpfsDir: empty path");
  let parent = await navigator.storage.getDirectory();
  try {
    for (const p of parts) parent = await parent.getDirectoryHandle(p);
    await parent.removeEntry(last, { recursive: true });
  } catch (e) {
    if (/** @type {Error} */ (e).name !== "NotFoundError") throw e;
  }
}
