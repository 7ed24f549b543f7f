/**
 * The browser entry (src/browser.ts): the page bundle reaches no Node module (the bundler refuses one, and the
 * Node-only files stay out of it), and loadModelFromFiles, run here in Node on the CPU backend, reads every
 * checkpoint layout from bytes in memory, Blobs and a web server, giving the PyTorch fixtures' logits.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFile, readdir, rm, mkdtemp, writeFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { MambaError, type ModelSource, loadModelFromFiles } from "../src/browser.ts";
import { bundleWeb } from "../src/cli/web-bundle.ts";
import { asciiTokenizerJson } from "./helpers/ascii-tokenizer.ts";
import { assertClose, expected, fixture } from "./helpers/fixtures.ts";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

async function folderMap(folder: string): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  for (const name of await readdir(folder)) {
    if (name === "expected.safetensors" || name === "grads.safetensors" || name === "meta.json") continue;
    out.set(name, await readFile(path.join(folder, name)));
  }
  return out;
}

async function assertFixtureLogits(source: ModelSource, folder: string): Promise<void> {
  const exp = await expected(folder);
  const { model, tokenizer } = await loadModelFromFiles(source, { backend: "cpu" });
  try {
    const ids = exp.get("input_ids")!;
    const [batch, seqLen] = ids.shape as [number, number];
    const out = await model.forward(ids.i32, { batch, seqLen });
    assertClose(out.logits, exp.get("logits")!.f32, 1e-4, `logits of ${folder}`);
    const prompt = exp.get("greedy_prompt")!.i32;
    const want = exp.get("greedy_output")!.i32;
    const got = await model.generate(prompt, { maxNewTokens: want.length - prompt.length, stopTokens: [] });
    assert.deepEqual(Array.from(got), Array.from(want));
    if (source instanceof Map && source.has("tokenizer.json")) assert.ok(tokenizer, "the tokenizer was read");
  } finally {
    await model.dispose();
  }
}

describe("the page bundle", () => {
  test("bundles without any Node module; the Node-only files stay out", async () => {
    const { files, inputs } = await bundleWeb();
    assert.ok(files.get("main.js")!.length > 10_000);
    for (const name of ["index.html", "style.css", "main.js.map"]) assert.ok(files.has(name), name);
    assert.ok(inputs.includes("src/browser.ts"), "src/browser.ts is in the bundle");
    assert.ok(inputs.includes("src/model/observer.ts"));
    for (const nodeOnly of ["src/index.ts", "src/tokenizer.ts", "src/io/checkpoint.ts", "src/io/safetensors.ts", "src/io/hub.ts"]) {
      assert.ok(!inputs.includes(nodeOnly), `${nodeOnly} must not be in the page bundle`);
    }
    assert.doesNotMatch(new TextDecoder().decode(files.get("main.js")), /from\s*["']node:|require\(["']node:/);
  });

  test("an entry that reaches a Node module does not bundle, and the error names the importer", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "mamba-ts-entry-"));
    try {
      const entry = path.join(dir, "entry.ts");
      await writeFile(entry, `import { loadModel } from ${JSON.stringify(path.join(ROOT, "src", "index.ts"))};\nconsole.log(loadModel);\n`);
      await assert.rejects(bundleWeb({ entry }), (err: unknown) => {
        assert.ok(err instanceof MambaError);
        assert.match(err.message, /'node:[a-z/]+' is a Node module, imported by src\//);
        return true;
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("loadModelFromFiles (in Node, CPU backend)", () => {
  test("bytes in memory: F32, F16, sharded BF16 safetensors and mamba_ssm's pytorch_model.bin", async () => {
    for (const name of ["hf-mamba/tiny", "hf-mamba/tiny-f16", "hf-mamba/tiny-bf16-sharded", "mamba-ssm/tiny"]) {
      const folder = fixture(...name.split("/"));
      await assertFixtureLogits(await folderMap(folder), folder);
    }
  });

  test("Blobs (as a picked folder gives), with a tokenizer.json", async () => {
    const folder = fixture("hf-mamba", "tiny");
    const files = new Map<string, Blob>();
    for (const [k, v] of await folderMap(folder)) files.set(k, new Blob([new Uint8Array(v)]));
    files.set("tokenizer.json", new Blob([JSON.stringify(asciiTokenizerJson())]));
    const { model, tokenizer } = await loadModelFromFiles(files, { backend: "cpu" });
    assert.ok(tokenizer);
    assert.deepEqual(Array.from(tokenizer.encode("Ma")), [46, 66]);
    assert.equal(model.config.vocabSize, 96);
    await model.dispose();
  });

  test("missing and damaged files are MambaErrors that name them", async () => {
    const folder = fixture("hf-mamba", "tiny");
    const files = await folderMap(folder);
    const without = (name: string) => new Map([...files].filter(([k]) => k !== name));
    await assert.rejects(loadModelFromFiles(without("config.json"), { backend: "cpu" }), /no config\.json in the model files/);
    await assert.rejects(loadModelFromFiles(without("model.safetensors"), { backend: "cpu" }),
      /no weights in the model files \(looked for model\.safetensors/);
    const truncated = new Map(files).set("model.safetensors", files.get("model.safetensors")!.subarray(0, 1000));
    await assert.rejects(loadModelFromFiles(truncated, { backend: "cpu" }), /model\.safetensors: .*truncated/);
    const badTok = new Map(files).set("tokenizer.json", new TextEncoder().encode("{nope"));
    await assert.rejects(loadModelFromFiles(badTok, { backend: "cpu" }), /tokenizer\.json is not valid JSON/);
  });

  describe("from a web server", { timeout: 120_000 }, () => {
    let server: http.Server;
    let base: string;
    const requests: string[] = [];
    const folder = fixture("hf-mamba", "tiny");

    before(async () => {
      server = http.createServer(async (req, res) => {
        requests.push(req.url!);
        let name: string;
        try {
          name = decodeURIComponent(req.url!.replace(/^\/m\//, ""));
        } catch {
          res.writeHead(400); res.end(); return;
        }
        if (req.url === "/broken/config.json") { res.writeHead(500, "Internal Server Error"); res.end(); return; }
        const bytes = await readFile(path.join(folder, path.basename(name))).catch(() => null);
        if (!req.url!.startsWith("/m/") || !bytes) { res.writeHead(404); res.end(); return; }
        res.writeHead(200, { "content-length": bytes.length });
        res.end(bytes);
      });
      await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
      base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
    });
    after(() => new Promise<void>((r) => {
      server.close(() => r());
      server.closeAllConnections();
    }));

    test("a base URL (with or without the final slash), each file fetched once, progress reported", async () => {
      await assertFixtureLogits(`${base}m`, folder);
      const progress: { file: string; loaded: number; total: number | null }[] = [];
      requests.length = 0;
      const { model, tokenizer } = await loadModelFromFiles(new URL(`${base}m/`), { backend: "cpu", onProgress: (p) => progress.push(p) });
      assert.equal(tokenizer, null, "the fixture has no tokenizer.json");
      const size = (await readFile(path.join(folder, "model.safetensors"))).length;
      const last = progress.filter((p) => p.file === "model.safetensors").at(-1)!;
      assert.deepEqual(last, { file: "model.safetensors", loaded: size, total: size });
      assert.equal(new Set(requests).size, requests.length, `a file was fetched twice: ${requests.join(", ")}`);
      await model.dispose();
    });

    test("an HTTP error other than 404 is an error, not a missing file", async () => {
      await assert.rejects(loadModelFromFiles(`${base}broken/`, { backend: "cpu" }), /cannot fetch .*broken\/config\.json: HTTP 500/);
    });
  });
});
