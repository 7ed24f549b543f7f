/**
 * `mamba-ts demo`, run as users run it but from the sources (a child process; the page is bundled at start): it
 * prints the address, serves the bundled page, demo.json and the model folder's files (and nothing outside it), with
 * the cross-origin isolation headers on every response, stops on Ctrl-C with exit code 0, refuses a busy --port,
 * falls back from a busy default port, and checks the model folder first. Every child is killed after 120 s at most.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { copyFile, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { defaultModelFolder } from "../../src/cli/default-model.ts";
import { ISOLATION_HEADERS } from "../../src/cli/demo-server.ts";
import { asciiTokenizerJson } from "../helpers/ascii-tokenizer.ts";
import { cliArgs, killAfter } from "../helpers/cli.ts";
import { fixture } from "../helpers/fixtures.ts";

/** the longest a demo child may live */
const CHILD_MS = 120_000;

interface Demo {
  child: ChildProcess;
  url: string;
  stderr: () => string;
  exit: Promise<{ code: number | null; stdout: string; stderr: string }>;
}

/** Starts the demo and waits for its address, or for it to exit. */
function startDemo(args: string[]): Promise<Demo | { code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, cliArgs(["demo", ...args]), { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "", stderr = "";
    let started = false;
    killAfter(child, CHILD_MS, () => { if (!started) reject(new Error(`the demo did not start or exit within ${CHILD_MS / 1000} s: ${stderr}`)); });
    const exit = new Promise<{ code: number | null; stdout: string; stderr: string }>((res) =>
      child.on("close", (code) => res({ code, stdout, stderr })));
    child.stdout!.setEncoding("utf8").on("data", (d: string) => {
      stdout += d;
      const m = /serving (http:\/\/127\.0\.0\.1:\d+\/)/.exec(stdout);
      if (m && !started) {
        started = true;
        resolve({ child, url: m[1]!, stderr: () => stderr, exit });
      }
    });
    child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    child.on("error", reject);
    void exit.then((r) => { if (!started) resolve(r); });
  });
}

function isDemo(x: unknown): x is Demo {
  return typeof (x as Demo).url === "string";
}

async function stop(demo: Demo): Promise<{ code: number | null; stdout: string; stderr: string }> {
  demo.child.kill("SIGINT");
  return demo.exit;
}

async function listenOn(port: number): Promise<net.Server | null> {
  const server = net.createServer();
  return new Promise((resolve) => {
    server.once("error", () => resolve(null));
    server.listen(port, "127.0.0.1", () => resolve(server));
  });
}

describe("mamba-ts demo", { timeout: 120_000 }, () => {
  let folder: string;

  before(async () => {
    folder = await mkdtemp(path.join(os.tmpdir(), "mamba-ts-demo-cli-"));
    for (const f of ["config.json", "generation_config.json", "model.safetensors"]) {
      await copyFile(fixture("hf-mamba", "tiny", f), path.join(folder, f));
    }
    await writeFile(path.join(folder, "tokenizer.json"), JSON.stringify(asciiTokenizerJson()));
  });
  after(async () => {
    if (folder) await rm(folder, { recursive: true, force: true });
  });

  test("--port 0 --model DIR: serves the page, demo.json and the model's files; Ctrl-C stops it", async () => {
    const demo = await startDemo(["--port", "0", "--model", folder]);
    assert.ok(isDemo(demo), `the demo did not start: ${JSON.stringify(demo)}`);
    try {
      const index = await fetch(demo.url);
      assert.equal(index.status, 200);
      assert.match(index.headers.get("content-type")!, /text\/html/);
      assert.equal(index.headers.get("cross-origin-opener-policy"), "same-origin");
      assert.equal(index.headers.get("cross-origin-embedder-policy"), "require-corp");
      assert.equal(index.headers.get("cross-origin-resource-policy"), "same-origin");
      assert.match(await index.text(), /<script type="module" src="main\.js">/);
      const js = await fetch(new URL("main.js", demo.url));
      assert.equal(js.status, 200);
      assert.match(js.headers.get("content-type")!, /javascript/);
      assert.match(await js.text(), /SelectionRecorder/);
      assert.equal((await fetch(new URL("style.css", demo.url))).status, 200);
      assert.deepEqual(await (await fetch(new URL("demo.json", demo.url))).json(),
        { model: { url: "model/", name: path.basename(folder) } });
      const weights = await fetch(new URL("model/model.safetensors", demo.url));
      assert.equal(weights.status, 200);
      assert.deepEqual(new Uint8Array(await weights.arrayBuffer()), new Uint8Array(await readFile(path.join(folder, "model.safetensors"))));
      assert.equal(Number(weights.headers.get("content-length")), (await readFile(path.join(folder, "model.safetensors"))).length);
      for (const bad of ["model/missing.json", "model/..%2Fetc%2Fpasswd", "model/%2E%2E/x.json", "package.json", "model/"]) {
        assert.equal((await fetch(new URL(bad, demo.url))).status, 404, bad);
      }
      const post = await fetch(demo.url, { method: "POST" });
      assert.equal(post.status, 405);
      // every response is cross-origin isolated: page files, demo.json, model files, errors
      for (const res of [js, weights, post, await fetch(new URL("demo.json", demo.url)), await fetch(new URL("nope", demo.url))]) {
        for (const [name, value] of Object.entries(ISOLATION_HEADERS)) assert.equal(res.headers.get(name), value, `${res.url} ${name}`);
      }
      assert.match(demo.stderr(), new RegExp(`model: ${folder.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}`));
    } finally {
      const r = await stop(demo);
      assert.equal(r.code, 0, `exit code after Ctrl-C (stderr: ${r.stderr})`);
      assert.match(r.stderr, /demo stopped/);
    }
  });

  test("a busy --port is an error that suggests --port 0; a busy default port falls back to a free one", async () => {
    const blocker = (await listenOn(0))!;
    const busy = (blocker.address() as net.AddressInfo).port;
    try {
      const r = await startDemo(["--port", String(busy), "--model", folder]);
      assert.ok(!isDemo(r), "the demo started on a busy port");
      assert.equal(r.code, 1);
      assert.match(r.stderr, new RegExp(`^mamba-ts: error: port ${busy} is in use on 127\\.0\\.0\\.1 \\(pass --port 0 for any free port\\)`));
    } finally {
      blocker.close();
    }
    // the default port, 8080: held here (or already held by something else), so the demo must move
    const held = await listenOn(8080);
    try {
      const demo = await startDemo(["--model", folder]);
      assert.ok(isDemo(demo), `the demo did not start: ${JSON.stringify(demo)}`);
      assert.notEqual(new URL(demo.url).port, "8080");
      assert.match(demo.stderr(), /port 8080 is in use: serving on port \d+ instead/);
      assert.equal((await fetch(demo.url)).status, 200);
      assert.equal((await stop(demo)).code, 0);
    } finally {
      held?.close();
    }
  });

  test("without --model: the package's model when installed, else the page is told there is none", async () => {
    const demo = await startDemo(["--port", "0"]);
    assert.ok(isDemo(demo), `the demo did not start: ${JSON.stringify(demo)}`);
    try {
      const info = await (await fetch(new URL("demo.json", demo.url))).json() as { model: unknown; message?: string };
      if (existsSync(path.join(defaultModelFolder(), "config.json"))) {
        assert.deepEqual(info.model, { url: "model/", name: "default" });
      } else {
        assert.equal(info.model, null);
        assert.match(info.message!, /No model is installed with mamba-ts/);
        assert.match(demo.stderr(), /model: none installed, the page runs a small untrained model/);
      }
    } finally {
      assert.equal((await stop(demo)).code, 0);
    }
  });

  test("bad requests: one error line before anything is served", async () => {
    const noTok = await mkdtemp(path.join(os.tmpdir(), "mamba-ts-demo-notok-"));
    try {
      await copyFile(path.join(folder, "config.json"), path.join(noTok, "config.json"));
      await copyFile(path.join(folder, "model.safetensors"), path.join(noTok, "model.safetensors"));
      for (const [args, code, pattern] of [
        [["--port", "0", "--model", noTok], 1, /no tokenizer\.json in .*: the demo needs the model's tokenizer/],
        [["--port", "0", "--model", path.join(noTok, "nope")], 1, /model folder not found|not found/],
        [["--port", "70000"], 2, /--port/],
        [["--port", "x"], 2, /--port/],
      ] as const) {
        const r = await startDemo([...args]);
        assert.ok(!isDemo(r), `started with ${args.join(" ")}`);
        assert.equal(r.code, code, `${args.join(" ")}: ${r.stderr}`);
        const lines = r.stderr.split("\n").filter((l) => l.length > 0);
        assert.equal(lines.length, 1, r.stderr);
        assert.match(lines[0]!, pattern);
      }
    } finally {
      await rm(noTok, { recursive: true, force: true });
    }
  });
});
