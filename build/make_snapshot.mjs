// Take the site's Pyodide memory snapshot under Node (build/build_site.py calls this).
//   node make_snapshot.mjs <site dir> <wheel> <out.pages.bin.gz>
// Boots the site's own Pyodide (<site>/pyodide/, the stdlib zip served there), installs the
// site's wheel and imports what a snapshot must hold with the site's js/boot.mjs
// (`installWheel`, `takeSnapshot`: the steps a browser worker runs before it takes one), so
// the heap is the one a first visit would otherwise build itself. Writes it as a gzipped
// paged heap (the site's js/paged_heap.mjs: the pages that hold something, and their map)
// and prints its raw length (JSON) for the manifest.
//
// The heap is the same bytes in Node and in a browser worker: one wasm, one stdlib, one
// wheel, and no JS object but globals reachable by path held by Python when it is taken.
// What the environment leaves in it: `time.timezone`/`tzname` are computed when `time` is
// imported (Pyodide has no `time.tzset`), so TZ is UTC here; tidesync reads UTC only.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { gzipSync } from "node:zlib";

const [siteDir, wheel, out] = process.argv.slice(2);
if (!out) throw new Error("usage: make_snapshot.mjs <site dir> <wheel> <out.pages.bin.gz>");
process.env.TZ = "UTC";
const boot = await import(pathToFileURL(join(siteDir, "js", "boot.mjs")).href);
const { pageHeap } = await import(pathToFileURL(join(siteDir, "js", "paged_heap.mjs")).href);
const { loadPyodide } = await import(pathToFileURL(join(siteDir, "pyodide", "pyodide.mjs")).href);
const pyodide = await loadPyodide({ indexURL: join(siteDir, "pyodide") + "/", _makeSnapshot: true });
boot.installWheel(pyodide, new Uint8Array(readFileSync(wheel)));
const heap = boot.takeSnapshot(pyodide);
writeFileSync(out, gzipSync(pageHeap(heap), { level: 6 }));
console.log(JSON.stringify({ bytes: heap.length }));
