// @ts-check
/**
 * Comparison engines for bench/run.py item 1, each in its own module worker:
 *   pyodide-memfs    Pyodide's sqlite3 on a MEMFS file (no durability: the ceiling)
 *   sqlite-wasm      @sqlite.org/sqlite-wasm, opfs-sahpool VFS at its defaults
 *   pglite           @electric-sql/pglite on opfs-ahp://
 * Every engine runs the same two-table transaction per commit as a tidesync insert:
 *   BEGIN; INSERT INTO tasks(...); INSERT INTO changes(...); COMMIT
 * measured in a loop inside the worker (no page<->worker round trip).
 * Messages: {cmd: "setup", engine, rows} -> {ok, setupMs}; {cmd: "run", seconds} -> {ok, commits, ms}
 */
const NM = "/bench/node_modules/";
const TASK_COLS = "id, project_id, title, done, updated_at";
const CHANGE_COLS = "table_name, operation, row_id, data, updated_at, state";
const now = () => new Date().toISOString();
let engine = null;
let seq = 0;

/** @param {number} i */
function taskRow(i) {
  return [`t-${i}-${Math.random().toString(36).slice(2)}`, null, `task ${i}`, 0, now()];
}

async function pyodideMemfs(rows) {
  const { loadPyodide } = await import("/pyodide/pyodide.mjs");
  const py = await loadPyodide({ indexURL: "/pyodide/" });
  py.runPython(`
import sqlite3, time, json, random
c = sqlite3.connect("/tmp/memfs-bench.sqlite3", isolation_level=None)
for p in ["PRAGMA locking_mode=EXCLUSIVE", "PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL",
          "PRAGMA cache_size=-16384", "PRAGMA temp_store=MEMORY"]:
    c.execute(p)
c.execute("CREATE TABLE IF NOT EXISTS tasks(id TEXT PRIMARY KEY, project_id TEXT, title TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL)")
c.execute("CREATE TABLE IF NOT EXISTS changes(id INTEGER PRIMARY KEY, table_name TEXT, operation TEXT, row_id TEXT, data TEXT, updated_at TEXT, state TEXT)")
def seed(n):
    c.execute("BEGIN")
    c.executemany("INSERT INTO tasks VALUES (?,?,?,?,?)", ((f"seed-{i}", None, f"task {i}", 0, "2025-01-01T00:00:00.000Z") for i in range(n)))
    c.executemany("INSERT INTO changes(${CHANGE_COLS}) VALUES (?,?,?,?,?,?)", (("tasks", "insert", f"seed-{i}", "{}", "2025-01-01T00:00:00.000Z", "synced") for i in range(n)))
    c.execute("COMMIT")
seq = [0]
def run(seconds):
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        seq[0] += 1
        rid = f"r-{seq[0]}-{random.random()}"
        ts = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        c.execute("BEGIN")
        c.execute("INSERT INTO tasks VALUES (?,?,?,?,?)", (rid, None, "task", 0, ts))
        c.execute("INSERT INTO changes(${CHANGE_COLS}) VALUES (?,?,?,?,?,?)", ("tasks", "insert", rid, json.dumps({"id": rid, "title": "task"}), ts, "pending"))
        c.execute("COMMIT")
        n += 1
    return json.dumps([n, (time.perf_counter() - t0) * 1000])
`);
  if (rows) py.runPython(`seed(${rows})`);
  return {
    run: async (/** @type {number} */ seconds) => {
      const [commits, ms] = JSON.parse(py.runPython(`run(${seconds})`));
      return { commits, ms };
    },
  };
}

async function sqliteWasm(rows) {
  const { default: init } = await import(NM + "@sqlite.org/sqlite-wasm/dist/index.mjs");
  const sqlite3 = await init();
  const pool = await sqlite3.installOpfsSAHPoolVfs({ clearOnInit: true });  // defaults otherwise
  const db = new pool.OpfsSAHPoolDb(`/bench-${rows}.sqlite3`);
  db.exec("CREATE TABLE IF NOT EXISTS tasks(id TEXT PRIMARY KEY, project_id TEXT, title TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL)");
  db.exec("CREATE TABLE IF NOT EXISTS changes(id INTEGER PRIMARY KEY, table_name TEXT, operation TEXT, row_id TEXT, data TEXT, updated_at TEXT, state TEXT)");
  if (rows) {
    db.exec(`WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < ${rows})
             INSERT INTO tasks SELECT 'seed-'||i, NULL, 'task '||i, 0, '2025-01-01T00:00:00.000Z' FROM c`);
    db.exec(`WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < ${rows})
             INSERT INTO changes(${CHANGE_COLS}) SELECT 'tasks', 'insert', 'seed-'||i, '{}', '2025-01-01T00:00:00.000Z', 'synced' FROM c`);
  }
  const journal = db.selectValue("PRAGMA journal_mode");
  const sync = db.selectValue("PRAGMA synchronous");
  const s1 = db.prepare(`INSERT INTO tasks(${TASK_COLS}) VALUES (?,?,?,?,?)`);
  const s2 = db.prepare(`INSERT INTO changes(${CHANGE_COLS}) VALUES (?,?,?,?,?,?)`);
  return {
    info: { version: sqlite3.version.libVersion, journal_mode: journal, synchronous: sync },
    run: async (/** @type {number} */ seconds) => {
      let n = 0;
      const t0 = performance.now();
      while (performance.now() - t0 < seconds * 1000) {
        const r = taskRow(++seq);
        db.exec("BEGIN");
        s1.bind(r).stepReset();
        s2.bind(["tasks", "insert", r[0], JSON.stringify({ id: r[0], title: r[2] }), r[4], "pending"]).stepReset();
        db.exec("COMMIT");
        n++;
      }
      return { commits: n, ms: performance.now() - t0 };
    },
  };
}

async function pglite(rows) {
  const { PGlite } = await import(NM + "@electric-sql/pglite/dist/index.js");
  const pg = await PGlite.create(`opfs-ahp://bench-pglite-${rows}`);
  await pg.exec(`CREATE TABLE IF NOT EXISTS tasks(id TEXT PRIMARY KEY, project_id TEXT, title TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS changes(id SERIAL PRIMARY KEY, table_name TEXT, operation TEXT, row_id TEXT, data TEXT, updated_at TEXT, state TEXT);
                 TRUNCATE tasks; TRUNCATE changes;`);
  if (rows) {
    await pg.exec(`INSERT INTO tasks SELECT 'seed-'||i, NULL, 'task '||i, 0, '2025-01-01T00:00:00.000Z' FROM generate_series(1, ${rows}) i;
                   INSERT INTO changes(${CHANGE_COLS}) SELECT 'tasks', 'insert', 'seed-'||i, '{}', '2025-01-01T00:00:00.000Z', 'synced' FROM generate_series(1, ${rows}) i;
                   CHECKPOINT;`);
  }
  const version = (await pg.query("SELECT version() AS v")).rows[0].v;
  const fsync = (await pg.query("SHOW fsync")).rows[0].fsync;
  const sc = (await pg.query("SHOW synchronous_commit")).rows[0].synchronous_commit;
  return {
    info: { version, fsync, synchronous_commit: sc },
    run: async (/** @type {number} */ seconds) => {
      let n = 0;
      const t0 = performance.now();
      while (performance.now() - t0 < seconds * 1000) {
        const r = taskRow(++seq);
        await pg.transaction(async (tx) => {
          await tx.query(`INSERT INTO tasks(${TASK_COLS}) VALUES ($1,$2,$3,$4,$5)`, r);
          await tx.query(`INSERT INTO changes(${CHANGE_COLS}) VALUES ($1,$2,$3,$4,$5,$6)`,
            ["tasks", "insert", r[0], JSON.stringify({ id: r[0], title: r[2] }), r[4], "pending"]);
        });
        n++;
      }
      return { commits: n, ms: performance.now() - t0 };
    },
  };
}

const ENGINES = { "pyodide-memfs": pyodideMemfs, "sqlite-wasm": sqliteWasm, pglite };

self.onmessage = async (ev) => {
  const msg = ev.data;
  try {
    if (msg.cmd === "setup") {
      const t0 = performance.now();
      engine = await ENGINES[msg.engine](msg.rows);
      self.postMessage({ ok: true, setupMs: performance.now() - t0, info: engine.info ?? {} });
    } else if (msg.cmd === "run") {
      self.postMessage({ ok: true, ...(await engine.run(msg.seconds)) });
    }
  } catch (err) {
    const e = /** @type {Error} */ (err);
    self.postMessage({ ok: false, error: `${e.name}: ${e.message}\n${e.stack ?? ""}` });
  }
};
