// @ts-check
/**
 * CPU cost of the page API's one-row insert in the Changes Worker's Python, in Node.
 *
 *   node bench/write_path_node.mjs [--src py_src] [--n 5000] [--warmup 500] [--sync 1]
 *                                  [--profile 40] [--pyodide DIR]
 *
 * Loads Pyodide (the pinned one: build/node_modules/pyodide, else the main checkout's),
 * copies the `tidesync` package from `--src` into MEMFS, and starts
 * `tidesync.changes.browser_entry.start` with a stub bridge: the demo schema, the
 * browser's PRAGMAs (js_shim/opfs_fs.mjs RECOMMENDED_PRAGMAS, read from that file), the
 * database on MEMFS (no OPFS, no I/O cost), `post` and the Sync Worker port's
 * `postMessage` stubbed (they only keep the last message). Then it calls the page
 * message handler the browser calls (`on_page_message`) with the JSON text `tidesync.mjs`
 * sends, `{"id":i,"cmd":"insert","args":{"table":"tasks","row":{"id":..,"title":..,
 * "done":0}}}`, N times, and reports the median and mean handler time per insert (us),
 * and the raw SQL of the same transaction alone (BEGIN, two `_ts_ctx` UPDATEs, the
 * INSERT with its trigger, COMMIT) run from Python on another MEMFS database, and a bare
 * Python handler that only posts a canned reply (the JS <-> Python floor).
 *
 * `--profile K`: also run N more inserts under cProfile and print the top K functions.
 * `--sync 0`: a page without a Sync Worker (no `local_change` post).
 * Prints one JSON line last (`bench/write_path.py` alternates revisions with it).
 * CPU only: the numbers are for A/B comparisons on one machine, not the browser's.
 */
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "..");

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const src = path.resolve(arg("src", path.join(repo, "py_src")));
const n = Number(arg("n", "5000"));
const warmup = Number(arg("warmup", "500"));
const profileTop = Number(arg("profile", "0"));
const sync = arg("sync", "1") !== "0";
const pyodideDir = path.resolve(
  arg(
    "pyodide",
    process.env.TIDESYNC_PYODIDE ||
      [path.join(repo, "build/node_modules/pyodide"), "/work/main/build/node_modules/pyodide"].find(
        (d) => fs.existsSync(path.join(d, "pyodide.mjs")),
      ) ||
      "",
  ),
);

const { loadPyodide } = await import(pathToFileURL(path.join(pyodideDir, "pyodide.mjs")).href);
const pyodide = await loadPyodide({ indexURL: pyodideDir + "/" });

// The tidesync package into MEMFS (not NODEFS: imports must not write __pycache__ into src).
function copyTree(from, to) {
  pyodide.FS.mkdirTree(to);
  for (const entry of fs.readdirSync(from, { withFileTypes: true })) {
    if (entry.name === "__pycache__") continue;
    const a = path.join(from, entry.name);
    const b = `${to}/${entry.name}`;
    if (entry.isDirectory()) copyTree(a, b);
    else pyodide.FS.writeFile(b, fs.readFileSync(a));
  }
}
copyTree(path.join(src, "tidesync"), "/home/pyodide/src/tidesync");
pyodide.runPython("import sys; sys.path.insert(0, '/home/pyodide/src')");

// The browser's PRAGMAs, as the worker gets them from opfs_fs.mjs.
const shim = fs.readFileSync(path.join(repo, "js_shim/opfs_fs.mjs"), "utf8");
const block = shim.slice(shim.indexOf("RECOMMENDED_PRAGMAS = Object.freeze(["));
const pragmas = [...block.slice(0, block.indexOf("]);")).matchAll(/"(PRAGMA [^"]+)"/g)].map(
  (m) => m[1],
);

let handler = null;
let lastPage = null;
let pagePosts = 0;
let syncPosts = 0;
const bridge = {
  config: { name: "bench", dbPath: "/home/pyodide/bench.sqlite3", sync, bootMillis: 0 },
  post: (message) => {
    lastPage = message;
    pagePosts += 1;
  },
  take: (fn) => {
    handler = fn;
  },
  syncPort: { postMessage: () => (syncPosts += 1), onmessage: null },
  storage: { recommendedPragmas: pragmas, flushAll: () => 0, close: () => undefined },
};
const entry = pyodide.pyimport("tidesync.changes.browser_entry");
await entry.start(bridge);
if (!handler) throw new Error("start() did not take a page message handler");

let nextId = 1;
function request() {
  const id = nextId++;
  const row = { id: `00000000-0000-4000-8000-${String(id).padStart(12, "0")}`, title: `bench ${id}`, done: 0 };
  return JSON.stringify({ id, cmd: "insert", args: { table: "tasks", row } });
}

function loop(count) {
  const times = new Float64Array(count);
  const texts = Array.from({ length: count }, request);
  for (let i = 0; i < count; i++) {
    const event = { data: texts[i] };
    const t0 = performance.now();
    handler(event);
    times[i] = performance.now() - t0;
  }
  const reply = JSON.parse(/** @type {string} */ (lastPage));
  if (!reply.ok || reply.result.rowsAffected !== 1 || !reply.events) {
    throw new Error(`unexpected reply: ${lastPage}`);
  }
  const sorted = Array.from(times).sort((a, b) => a - b);
  const sum = sorted.reduce((a, b) => a + b, 0);
  return { median: sorted[count >> 1] * 1000, mean: (sum / count) * 1000 };
}

loop(warmup);
const handlerTimes = loop(n);

// The floor: a Python handler that reads the event's text and posts a canned reply.
const bare = pyodide.runPython(`
def _bench_bare(event, post=None):
    text = event.data
    _bench_post('{"id":1,"ok":true,"result":{"rowsAffected":1,"lastInsertRowid":1}}')
_bench_bare
`);
pyodide.globals.set("_bench_post", bridge.post);
const bareTimes = [];
for (let round = 0; round < 2; round++) {
  const t0 = performance.now();
  for (let i = 0; i < n; i++) bare({ data: "{}" });
  bareTimes.push(((performance.now() - t0) / n) * 1000);
}

// The same transaction's SQL alone, on a database opened the same way.
const rawUs = pyodide.runPython(`
import time
from tidesync.changes.worker import ChangesWorker
from tidesync.changes.browser_entry import parse_pragmas
w = ChangesWorker("/home/pyodide/raw.sqlite3", pragmas=parse_pragmas(${JSON.stringify(pragmas)}))
c = w._conn
def run(count, base):
    t0 = time.perf_counter()
    for i in range(base, base + count):
        c.execute("BEGIN IMMEDIATE")
        c.execute("UPDATE _ts_ctx SET applying = 0, now = ? WHERE id = 1", ("2026-01-01T00:00:00.000Z",))
        c.execute('INSERT INTO "tasks" ("id", "title", "done", "updated_at") VALUES (?, ?, ?, ?)',
                  [f"raw-{i}", f"bench {i}", 0, "2026-01-01T00:00:00.000Z"])
        c.execute("UPDATE _ts_ctx SET applying = 0, now = NULL, hlc = max(hlc, ?) WHERE id = 1", (i,))
        c.execute("COMMIT")
    return (time.perf_counter() - t0) / count * 1e6
run(${warmup}, 0)
run(${n}, ${warmup})
`);

const result = {
  src,
  n,
  sync,
  handler_median_us: Number(handlerTimes.median.toFixed(1)),
  handler_mean_us: Number(handlerTimes.mean.toFixed(1)),
  raw_sql_us: Number(rawUs.toFixed(1)),
  bare_handler_us: Number(bareTimes[1].toFixed(1)),
  page_posts: pagePosts,
  sync_posts: syncPosts,
};

if (profileTop > 0) {
  pyodide.runPython("import cProfile; _bench_prof = cProfile.Profile(); _bench_prof.enable()");
  loop(n);
  console.log(
    pyodide.runPython(`
_bench_prof.disable()
import io, pstats
out = io.StringIO()
stats = pstats.Stats(_bench_prof, stream=out)
print(f"{stats.total_calls / ${n}:.1f} Python calls per insert (cProfile)", file=out)
stats.sort_stats("tottime").print_stats(${profileTop})
out.getvalue()
`),
  );
}
console.log(JSON.stringify(result));
