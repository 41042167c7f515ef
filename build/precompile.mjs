// Run build/precompile.py in the pinned Pyodide under Node (build/build_site.py calls this).
//   node precompile.mjs <pyodide dir> [stdlib <in.zip> <out.zip>] [wheel <in.whl> <out.whl>]
// Pyodide boots from the stdlib zip given by TIDESYNC_BOOT_STDLIB when set (an already
// compiled one boots faster); the result does not depend on it.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const [pyodideDir, ...jobs] = process.argv.slice(2);
const { loadPyodide } = await import(pathToFileURL(join(pyodideDir, "pyodide.mjs")).href);
const bootStdlib = process.env.TIDESYNC_BOOT_STDLIB;
const pyodide = await loadPyodide({
  indexURL: pyodideDir + "/",
  ...(bootStdlib ? { stdLibURL: bootStdlib } : {}),
});
const here = dirname(fileURLToPath(import.meta.url));
pyodide.FS.writeFile("/tmp/precompile.py", readFileSync(join(here, "precompile.py")));
pyodide.runPython("import sys; sys.path.insert(0, '/tmp'); import precompile");
const precompile = pyodide.pyimport("precompile");
for (let i = 0; i < jobs.length; i += 3) {
  const [kind, input, output] = jobs.slice(i, i + 3);
  if (kind !== "stdlib" && kind !== "wheel") throw new Error(`unknown job ${kind}`);
  pyodide.FS.writeFile("/tmp/in", readFileSync(input));
  const n = precompile[kind]("/tmp/in", "/tmp/out");
  writeFileSync(output, pyodide.FS.readFile("/tmp/out"));
  console.log(`precompiled ${n} ${kind} modules: ${output}`);
}
