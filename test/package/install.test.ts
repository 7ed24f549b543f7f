/**
 * The package as users get it: `npm pack` (which runs the build), then `npm install --omit=optional <tarball>` into
 * an empty project in a temporary folder. Checked there, with no TypeScript loader anywhere (tsx is not installed, and
 * the children run with an empty NODE_OPTIONS):
 *  - neither `webgpu` (optional) nor `tsx` (development only) is installed, and the package holds compiled modules,
 *    their .d.ts files and the prebuilt demo page, not the TypeScript sources;
 *  - "mamba-ts" and "mamba-ts/browser" export exactly the values that src/index.ts and src/browser.ts export;
 *  - the installed API generates, greedily on the embedded model, what the sources generate in this process;
 *  - asking for WebGPU without the `webgpu` package is one MambaError that says how to install it, and "auto"
 *    falls back to the CPU and says why;
 *  - a TypeScript project type-checks against the package's declarations, and esbuild bundles a page from the
 *    browser entry without reaching for the `webgpu` package;
 *  - `npx mamba-ts generate` prints what the sources' CLI prints, and `npx mamba-ts demo` serves the prebuilt page
 *    with the cross-origin isolation headers; in Chromium the page is isolated and generates what the sources do.
 * Every child process is bounded and killed with its process group when it runs too long; the folder is removed.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import * as srcBrowser from "../../src/browser.ts";
import * as srcIndex from "../../src/index.ts";
import { ISOLATION_HEADERS } from "../../src/cli/demo-server.ts";
import { chromiumSkip, launchChromium } from "../helpers/chromium.ts";
import { ROOT, cli } from "../helpers/cli.ts";

const NPM = process.platform === "win32" ? "npm.cmd" : "npm";
const NPX = process.platform === "win32" ? "npx.cmd" : "npx";
/** children run with no loader and no inherited debugging switches */
const CHILD_ENV: NodeJS.ProcessEnv = Object.fromEntries(Object.entries({ ...process.env, NODE_OPTIONS: "" })
  .filter(([name]) => name !== "MAMBA_TS_DEBUG" && name !== "MAMBA_TS_DEFAULT_MODEL"));

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Kills a child started with `detached: true` together with what it started (npx starts node). */
function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  try {
    if (child.pid !== undefined) process.kill(process.platform === "win32" ? child.pid : -child.pid, signal);
  } catch {
    // already gone
  }
}

/** Runs a command to its end, killed (with its process group) after `timeoutMs`, which then rejects. */
function run(command: string, args: string[], o: { cwd: string; timeoutMs: number }): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: o.cwd, env: CHILD_ENV, stdio: ["ignore", "pipe", "pipe"], detached: true });
    let stdout = "", stderr = "";
    let killed = false;
    const timer = setTimeout(() => {
      killed = true;
      killGroup(child, "SIGKILL");
    }, o.timeoutMs);
    child.stdout!.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    child.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      if (killed) reject(new Error(`${command} ${args.join(" ")} ran past ${o.timeoutMs / 1000} s and was killed; stderr:\n${stderr}`));
      else resolve({ code, stdout, stderr });
    });
  });
}

let scripts = 0;

/** Runs an ES module script (a .mjs file in the project, as a user's would be) with plain node; parses the JSON it prints last. */
async function nodeScript<T>(cwd: string, script: string): Promise<T> {
  const file = path.join(cwd, `script-${++scripts}.mjs`);
  await fs.writeFile(file, script);
  const r = await run(process.execPath, [file], { cwd, timeoutMs: 120_000 });
  assert.equal(r.code, 0, `node ${path.basename(file)} failed:\n${r.stderr}`);
  const lines = r.stdout.trim().split("\n");
  return JSON.parse(lines[lines.length - 1]!) as T;
}

/** The value names a module exports, sorted (type-only exports leave no name). */
function valueNames(mod: object): string[] {
  return Object.keys(mod).sort();
}

/** All files under a folder, relative to it. */
async function listFiles(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    const rel = path.posix.join(prefix, e.name);
    if (e.isDirectory()) out.push(...await listFiles(path.join(dir, e.name), rel));
    else out.push(rel);
  }
  return out;
}

describe("the packed package, installed with --omit=optional into an empty project", { timeout: 900_000 }, () => {
  let tmp = "";
  let project = "";
  let installed = ""; // <project>/node_modules/mamba-ts

  before(async () => {
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), "mamba-ts-install-"));
    const packDir = path.join(tmp, "pack");
    await fs.mkdir(packDir);
    // npm pack runs `prepare`, the build: the tarball holds what this tree builds now
    const pack = await run(NPM, ["pack", "--json", "--pack-destination", packDir], { cwd: ROOT, timeoutMs: 400_000 });
    assert.equal(pack.code, 0, `npm pack failed:\n${pack.stderr}`);
    // the JSON report is the last thing on stdout (a build step may have printed before it)
    const info = JSON.parse(pack.stdout.slice(pack.stdout.search(/^\[/m))) as { filename: string }[];
    const tarball = path.join(packDir, info[0]!.filename);
    project = path.join(tmp, "project");
    await fs.mkdir(project);
    await fs.writeFile(path.join(project, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }));
    const install = await run(NPM, ["install", "--omit=optional", "--no-audit", "--no-fund", "--prefer-offline", tarball],
      { cwd: project, timeoutMs: 400_000 });
    assert.equal(install.code, 0, `npm install failed:\n${install.stderr}`);
    installed = path.join(project, "node_modules", "mamba-ts");
  });

  after(async () => {
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
  });

  test("no webgpu, no tsx; compiled modules, declarations and the prebuilt page, no TypeScript sources", async () => {
    assert.ok(existsSync(path.join(installed, "package.json")), "mamba-ts is installed");
    assert.ok(!existsSync(path.join(project, "node_modules", "webgpu")), "webgpu (optional) is not installed");
    assert.ok(!existsSync(path.join(project, "node_modules", "tsx")), "tsx (development only) is not installed");
    const files = await listFiles(installed);
    for (const f of ["dist/index.js", "dist/index.d.ts", "dist/browser.js", "dist/browser.d.ts", "dist/cli/main.js",
      "bin/mamba-ts.js", "dist/web/index.html", "dist/web/main.js", "models/default/config.json"]) {
      assert.ok(files.includes(f), `the package holds ${f}`);
    }
    const sources = files.filter((f) => f.endsWith(".ts") && !f.endsWith(".d.ts"));
    assert.deepEqual(sources, [], "no TypeScript sources");
    assert.ok(!files.some((f) => /^(src|test|bench|web)\//.test(f)), "no src/, test/, bench/ or web/");
    for (const f of files.filter((name) => name.endsWith(".js"))) {
      const text = await fs.readFile(path.join(installed, f), "utf8");
      assert.doesNotMatch(text, /["']tsx(\/[^"']*)?["']/, `${f} does not reach tsx`);
    }
  });

  test("\"mamba-ts\" and \"mamba-ts/browser\" export exactly what src/index.ts and src/browser.ts export", async () => {
    const got = await nodeScript<{ index: string[]; browser: string[] }>(project, `
      const index = await import("mamba-ts");
      const browser = await import("mamba-ts/browser");
      console.log(JSON.stringify({ index: Object.keys(index).sort(), browser: Object.keys(browser).sort() }));`);
    assert.deepEqual(got.index, valueNames(srcIndex));
    assert.deepEqual(got.browser, valueNames(srcBrowser));
  });

  test("the installed API generates greedily what the sources generate", async () => {
    const prompt = "Mamba is";
    const got = await nodeScript<{ ids: number[]; folder: string; backend: string }>(project, `
      import { loadModel, loadTokenizer, defaultModelFolder } from "mamba-ts";
      const folder = defaultModelFolder();
      const tokenizer = await loadTokenizer(folder);
      const model = await loadModel(folder, { backend: "cpu" });
      const ids = await model.generate(tokenizer.encode(${JSON.stringify(prompt)}), { maxNewTokens: 8 });
      console.log(JSON.stringify({ ids: Array.from(ids), folder, backend: model.backend.name }));
      await model.dispose();`);
    assert.equal(await fs.realpath(got.folder), await fs.realpath(path.join(installed, "models", "default")),
      "defaultModelFolder() is the installed package's model");
    const tokenizer = await srcIndex.loadTokenizer(srcIndex.defaultModelFolder());
    const model = await srcIndex.loadModel(srcIndex.defaultModelFolder(), { backend: "cpu" });
    try {
      const want = await model.generate(tokenizer.encode(prompt), { maxNewTokens: 8 });
      assert.deepEqual(got.ids, Array.from(want));
      assert.ok(want.length > tokenizer.encode(prompt).length, "new tokens were generated");
    } finally {
      await model.dispose();
    }
  });

  test("backend 'webgpu' without the webgpu package: a MambaError naming the install; 'auto' says it chose the CPU", async () => {
    const got = await nodeScript<{ name: string; isMambaError: boolean; message: string; auto: string; notices: string[] }>(project, `
      import { loadModel, defaultModelFolder, MambaError } from "mamba-ts";
      let name = "", isMambaError = false, message = "";
      try {
        const m = await loadModel(defaultModelFolder(), { backend: "webgpu" });
        await m.dispose();
      } catch (err) {
        name = err.name; isMambaError = err instanceof MambaError; message = err.message;
      }
      const notices = [];
      const auto = await loadModel(defaultModelFolder(), { backend: "auto", onNotice: (m) => notices.push(m) });
      console.log(JSON.stringify({ name, isMambaError, message, auto: auto.backend.name, notices }));
      await auto.dispose();`);
    assert.ok(got.isMambaError, `a MambaError, got ${got.name}: ${got.message}`);
    assert.match(got.message, /npm install webgpu/);
    assert.equal(got.auto, "cpu");
    assert.equal(got.notices.length, 1, got.notices.join("\n"));
    assert.match(got.notices[0]!, /^backend: cpu \(no WebGPU: .+\)$/);
  });

  test("a TypeScript project type-checks against the package's declarations", async () => {
    await fs.writeFile(path.join(project, "tsconfig.json"), JSON.stringify({
      compilerOptions: { target: "ES2022", module: "NodeNext", moduleResolution: "NodeNext", strict: true, noEmit: true,
        skipLibCheck: true, types: ["node"], typeRoots: [path.join(ROOT, "node_modules", "@types")] },
      files: ["consumer.ts"],
    }));
    await fs.writeFile(path.join(project, "consumer.ts"), [
      `import { loadModel, defaultModelFolder, type GenerateOptions, type MambaModel } from "mamba-ts";`,
      `import { loadModelFromFiles, type LoadedModel } from "mamba-ts/browser";`,
      `const options: GenerateOptions = { maxNewTokens: 4 };`,
      `export const model: Promise<MambaModel> = loadModel(defaultModelFolder(), { backend: "cpu" });`,
      `export const page: (u: URL) => Promise<LoadedModel> = (u) => loadModelFromFiles(u);`,
      `export const n: number | undefined = options.maxNewTokens;`,
      `// @ts-expect-error: not an option`,
      `export const bad: GenerateOptions = { notAnOption: 1 };`,
    ].join("\n"));
    const tsc = path.join(ROOT, "node_modules", "typescript", "bin", "tsc");
    const r = await run(process.execPath, [tsc, "-p", "tsconfig.json"], { cwd: project, timeoutMs: 120_000 });
    assert.equal(r.code, 0, `tsc:\n${r.stdout}${r.stderr}`);
  });

  test("a bundler builds a browser page from \"mamba-ts/browser\", never reaching for Dawn", async () => {
    const esbuild = await import("esbuild");
    await fs.writeFile(path.join(project, "page.js"),
      `import { loadModelFromFiles } from "mamba-ts/browser";\nglobalThis.loadModelFromFiles = loadModelFromFiles;\n`);
    const asked: string[] = [];
    const result = await esbuild.build({
      entryPoints: [path.join(project, "page.js")], bundle: true, format: "esm", platform: "browser", write: false,
      logLevel: "silent", absWorkingDir: project,
      plugins: [{
        name: "dawn-stand-in",
        setup(build) {
          // where `webgpu` is installed (the default), a bundler that followed the import would reach Node modules
          build.onResolve({ filter: /^webgpu$/ }, () => {
            asked.push("webgpu");
            return { path: "webgpu", namespace: "dawn-stand-in" };
          });
          build.onLoad({ filter: /.*/, namespace: "dawn-stand-in" }, () => ({
            contents: `import { createRequire } from "node:module";\nexport const create = createRequire;\n`, loader: "js",
          }));
        },
      }],
    });
    assert.deepEqual(result.errors, []);
    assert.deepEqual(asked, [], "the bundler was sent to the webgpu package");
    const js = result.outputFiles[0]!.text;
    assert.match(js, /loadModelFromFiles/);
    assert.doesNotMatch(js, /from\s*["']node:/, "no static import of a Node module");
  });

  test("npx mamba-ts generate prints what the sources' CLI prints", async () => {
    const args = ["generate", "--max-new-tokens", "8", "--temperature", "0", "--prompt", "Mamba is"];
    const r = await run(NPX, ["--no-install", "mamba-ts", ...args], { cwd: project, timeoutMs: 120_000 });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.trim().length > "Mamba is".length, `text on stdout: ${JSON.stringify(r.stdout)}`);
    const want = await cli(args, { timeoutMs: 120_000 });
    assert.equal(want.code, 0, want.stderr);
    assert.equal(r.stdout, want.stdout);
  });

  describe("npx mamba-ts demo", () => {
    let child: ChildProcess | null = null;
    let url = "";
    let stderr = "";
    let exited: Promise<number | null> = Promise.resolve(null);
    let bound: NodeJS.Timeout | undefined;

    before(async () => {
      const demo = spawn(NPX, ["--no-install", "mamba-ts", "demo", "--port", "0"],
        { cwd: project, env: CHILD_ENV, stdio: ["ignore", "pipe", "pipe"], detached: true });
      child = demo;
      bound = setTimeout(() => killGroup(demo, "SIGKILL"), 240_000);
      exited = new Promise((resolve) => demo.on("close", (code) => resolve(code)));
      let stdout = "";
      url = await new Promise<string>((resolve, reject) => {
        demo.stdout!.setEncoding("utf8").on("data", (d: string) => {
          stdout += d;
          const m = /serving (http:\/\/127\.0\.0\.1:\d+\/)/.exec(stdout);
          if (m) resolve(m[1]!);
        });
        demo.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
        demo.on("error", reject);
        void exited.then((code) => reject(new Error(`the demo exited (${code}) before serving:\n${stderr}`)));
      });
    });

    after(async () => {
      if (!child) return;
      killGroup(child, "SIGINT");
      const code = await exited;
      clearTimeout(bound);
      assert.ok(code === 0 || code === 130 || code === null, `exit code ${code} after Ctrl-C:\n${stderr}`);
    });

    test("serves the prebuilt page and the package's model, cross-origin isolated", async () => {
      const page = await fetch(url, { signal: AbortSignal.timeout(30_000) });
      assert.equal(page.status, 200);
      assert.match(page.headers.get("content-type")!, /text\/html/);
      for (const [name, value] of Object.entries(ISOLATION_HEADERS)) assert.equal(page.headers.get(name), value, name);
      assert.match(await page.text(), /<script type="module" src="main\.js">/);
      const js = await fetch(new URL("main.js", url), { signal: AbortSignal.timeout(30_000) });
      assert.equal(js.status, 200);
      assert.ok((await js.arrayBuffer()).byteLength > 1000, "main.js has the bundle");
      const info = await (await fetch(new URL("demo.json", url), { signal: AbortSignal.timeout(30_000) })).json() as { model: unknown };
      assert.deepEqual(info.model, { url: "model/", name: "default" });
    });

    test("the prebuilt page, in Chromium, is cross-origin isolated and generates what the sources generate", { skip: chromiumSkip() }, async () => {
      const browser = await launchChromium();
      try {
        const page = await browser.newPage();
        const errors: string[] = [];
        page.on("pageerror", (e) => errors.push(e.message));
        await page.goto(`${url}?backend=cpu`, { timeout: 60_000 });
        const state = () => page.evaluate(() => (globalThis as unknown as { mambaDemo: { error: string | null; promptIds: number[]; newIds: number[] } }).mambaDemo);
        const waitFor = (states: string[]) => page.waitForFunction((s) => s.includes(document.body.dataset.state ?? ""), states, { timeout: 90_000 });
        await waitFor(["ready", "error"]);
        assert.equal((await state()).error, null);
        assert.equal(await page.evaluate(() => globalThis.crossOriginIsolated), true, "crossOriginIsolated");
        const prompt = "Mamba is";
        await page.fill("#prompt", prompt);
        await page.fill("#max-new", "8");
        await page.fill("#temperature", "0");
        await page.fill("#seed", "0");
        await page.click("#generate");
        await waitFor(["done", "error"]);
        const demo = await state();
        assert.equal(demo.error, null);
        const tokenizer = await srcIndex.loadTokenizer(srcIndex.defaultModelFolder());
        const model = await srcIndex.loadModel(srcIndex.defaultModelFolder(), { backend: "cpu" });
        try {
          const ids = tokenizer.encode(prompt);
          const want = await model.generate(ids, { maxNewTokens: 8, temperature: 0, seed: 0 });
          assert.deepEqual(demo.promptIds, Array.from(ids));
          assert.deepEqual(demo.newIds, Array.from(want.subarray(ids.length)));
        } finally {
          await model.dispose();
        }
        assert.deepEqual(errors, []);
      } finally {
        await browser.close();
      }
    });
  });
});
