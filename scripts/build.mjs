// `npm run build`: the package as users install it, in dist/. Plain JavaScript, so that it runs with no TypeScript
// loader (it is also what `npm ci` and `npm pack` run, through `prepare`). In order:
//   1. `npm run build:wasm` where that script exists (it writes generated TypeScript under src/);
//   2. tsc with tsconfig.build.json: src/ -> dist/ as ES modules and .d.ts files (imports of ./x.ts become ./x.js);
//   3. the files under src/ that are not TypeScript and are read at run time, copied beside the compiled modules;
//   4. the demo page (web/), bundled by esbuild into dist/web/, which `mamba-ts demo` serves from an installed
//      package (esbuild stays a development dependency).
// A failing step stops the build with its exit code. Usage: node scripts/build.mjs
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const dist = path.join(root, "dist");
const npm = process.platform === "win32" ? "npm.cmd" : "npm";

function run(label, command, args) {
  const t0 = Date.now();
  // the steps' stdout goes to stderr: stdout is left to whoever runs the build (`npm pack --json` reports there)
  const r = spawnSync(command, args, { cwd: root, stdio: ["inherit", 2, "inherit"], shell: process.platform === "win32" });
  if (r.error) {
    console.error(`build: ${label}: ${r.error.message}`);
    process.exit(1);
  }
  if (r.status !== 0) {
    console.error(`build: ${label} failed (exit code ${r.status ?? r.signal})`);
    process.exit(r.status || 1);
  }
  console.error(`build: ${label} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
}

/** Copies every file under `from` whose name does not end in .ts to the same place under `to`. */
function copyAssets(from, to) {
  let n = 0;
  for (const entry of readdirSync(from, { withFileTypes: true })) {
    const src = path.join(from, entry.name);
    if (entry.isDirectory()) n += copyAssets(src, path.join(to, entry.name));
    else if (entry.isFile() && !entry.name.endsWith(".ts")) {
      mkdirSync(to, { recursive: true });
      copyFileSync(src, path.join(to, entry.name));
      n++;
    }
  }
  return n;
}

const scripts = JSON.parse(readFileSync(path.join(root, "package.json"), "utf8")).scripts ?? {};
if (scripts["build:wasm"]) run("build:wasm", npm, ["run", "--silent", "build:wasm"]);

rmSync(dist, { recursive: true, force: true });
// tsc's own entry, run by this Node: no shell and no PATH lookup of node_modules/.bin
const tsc = path.join(root, "node_modules", "typescript", "bin", "tsc");
if (!existsSync(tsc)) {
  console.error("build: TypeScript is not installed (npm install, with the development dependencies)");
  process.exit(1);
}
run("tsc -p tsconfig.build.json", process.execPath, [tsc, "-p", "tsconfig.build.json"]);

const assets = copyAssets(path.join(root, "src"), dist);
console.error(`build: ${assets} non-TypeScript file(s) copied from src/`);

// the compiled bundler code bundles the page (web/main.ts and what it imports from src/)
const t0 = Date.now();
const { writeWebDist } = await import(pathToFileURL(path.join(dist, "cli", "web-bundle.js")).href);
const written = await writeWebDist(path.join(dist, "web"), { sourcemap: false });
console.error(`build: demo page -> dist/web/ (${written.length} files, ${((Date.now() - t0) / 1000).toFixed(1)} s)`);
