// The firmware unit suite on a 32-bit MicroPython: the webassembly port
// under Node. Its small integers are 31 bits and time.ticks_us wraps at
// 2**30 us, as on the Pico, where the 64-bit unix port cannot show what
// allocates a long integer. Usage: node mp32_runner.mjs ROOT MODULE...
// (ROOT: the repository). Exit status 1 when a test fails.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const root = path.resolve(process.argv[2]);
const modules = process.argv.slice(3);
// The runtime is the project's npm dependency (package.json at ROOT).
const require = createRequire(path.join(root, "package.json"));
const entry = require.resolve("@micropython/micropython-webassembly-pyscript/micropython.mjs");
const { loadMicroPython } = await import(entry);

const mp = await loadMicroPython({
  heapsize: 64 * 1024 * 1024, // the tests' recorded board output too, as on the unix port
  stdout: (line) => process.stdout.write(line + "\n"),
  stderr: (line) => process.stderr.write(line + "\n"),
});

// The interpreter's filesystem is in memory: copy the firmware and the suite in.
function copyTree(src, dst) {
  mp.FS.mkdir(dst);
  for (const name of fs.readdirSync(src)) {
    const p = path.join(src, name);
    if (fs.statSync(p).isDirectory()) {
      if (name !== "__pycache__") copyTree(p, dst + "/" + name);
    } else if (name.endsWith(".py")) {
      mp.FS.writeFile(dst + "/" + name, fs.readFileSync(p));
    }
  }
}
copyTree(path.join(root, "firmware"), "/firmware");
copyTree(path.join(root, "tests", "fw"), "/suite");

let failed = 1;
try {
  mp.runPython(`
import sys
sys.path[:0] = ["/firmware", "/suite"]
import mpy_runner
failed = mpy_runner.run(${JSON.stringify(modules)})
`);
  failed = mp.globals.get("failed");
} catch (err) {
  process.stderr.write(String(err) + "\n");
}
process.exit(failed ? 1 : 0);
