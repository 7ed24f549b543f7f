/**
 * The demo page in a real browser (headless Chromium): it loads a model folder served by the demo server (the tiny
 * PyTorch fixture with a byte-level tokenizer), streams a continuation, and must produce exactly the ids that the
 * CPU backend gives in Node for the same prompt and options, greedy and sampled; the share of state kept that it
 * maps must equal a SelectionRecorder's in Node; both heatmaps must be drawn. Also: the fallback model when the
 * server has none, and a folder picked with the page's folder input. Screenshots go to test/web/artifacts/.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { copyFile, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { Browser, Page } from "playwright-core";
import { type MambaModel, SelectionRecorder, createModel, loadModel } from "../../src/index.ts";
import { byteLevelTokenizerJson } from "../../src/byte-tokenizer.ts";
import { type Tokenizer, loadTokenizer, tokenizerFromJson } from "../../src/tokenizer.ts";
import { type DemoServer, startDemoServer } from "../../src/cli/demo-server.ts";
import { bundleWeb } from "../../src/cli/web-bundle.ts";
import { FALLBACK_SEED, FALLBACK_SIZES } from "../../web/fallback.ts";
import { asciiTokenizerJson } from "../helpers/ascii-tokenizer.ts";
import { chromiumSkip, launchChromium } from "../helpers/chromium.ts";
import { fixture } from "../helpers/fixtures.ts";

const ARTIFACTS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "artifacts");
const PROMPT = "Mamba is a selective state space model.";

/** What the page reports in window.mambaDemo (web/main.ts). */
interface DemoState {
  state: string;
  backend: string | null;
  engine: string | null;
  model: string | null;
  family: string | null;
  deltaUnit: "channel" | "head" | null;
  deltaCount: number;
  fallback: boolean;
  promptIds: number[];
  newIds: number[];
  tokensPerSecond: number | null;
  traceTokens: number;
  traceChannels: number;
  keep: number[][];
  error: string | null;
}

interface RunOptions {
  prompt: string;
  maxNewTokens: number;
  temperature: number;
  seed: number;
}

async function waitForState(page: Page, states: string[], timeout = 90_000): Promise<DemoState> {
  await page.waitForFunction((s) => s.includes(document.body.dataset.state ?? ""), states, { timeout });
  return page.evaluate(() => (globalThis as unknown as { mambaDemo: DemoState }).mambaDemo);
}

async function generateOnPage(page: Page, o: RunOptions): Promise<DemoState> {
  await page.fill("#prompt", o.prompt);
  await page.fill("#max-new", String(o.maxNewTokens));
  await page.fill("#temperature", String(o.temperature));
  await page.fill("#seed", String(o.seed));
  await page.click("#generate");
  const demo = await waitForState(page, ["done", "error"]);
  assert.equal(demo.error, null, `the page failed: ${demo.error}`);
  return demo;
}

/** Pixels of a canvas that are not its white background, and how many colours they take. */
function canvasInk(page: Page, id: string): Promise<{ width: number; height: number; ink: number; colours: number }> {
  return page.evaluate((canvasId) => {
    const c = document.getElementById(canvasId) as HTMLCanvasElement;
    const d = c.getContext("2d")!.getImageData(0, 0, c.width, c.height).data;
    let ink = 0;
    const colours = new Set<number>();
    for (let i = 0; i < d.length; i += 4) {
      if (d[i] === 255 && d[i + 1] === 255 && d[i + 2] === 255) continue;
      ink++;
      colours.add((d[i]! << 16) | (d[i + 1]! << 8) | d[i + 2]!);
    }
    return { width: c.width, height: c.height, ink, colours: colours.size };
  }, id);
}

/** The ids and the kept-state trace the CPU backend gives in Node for the same request. */
async function reference(model: MambaModel, tokenizer: Tokenizer, o: RunOptions): Promise<{ prompt: number[]; newIds: number[]; keep: Float32Array[]; delta: Float32Array[]; channels: number }> {
  const prompt = tokenizer.encode(o.prompt);
  const rec = await SelectionRecorder.attach(model.lm);
  try {
    const ids = await model.generate(prompt, { maxNewTokens: o.maxNewTokens, temperature: o.temperature, seed: o.seed });
    const trace = await rec.trace();
    return { prompt: Array.from(prompt), newIds: Array.from(ids.subarray(prompt.length)), keep: trace.keep, delta: trace.delta, channels: trace.channels };
  } finally {
    rec.detach();
  }
}

function assertKeepClose(page: number[][], ref: Float32Array[], tol: number): void {
  assert.equal(page.length, ref.length, "layers");
  ref.forEach((row, l) => {
    assert.equal(page[l]!.length, row.length, `layer ${l}: tokens recorded`);
    row.forEach((v, t) => assert.ok(Math.abs(page[l]![t]! - v) <= tol, `layer ${l} token ${t}: kept ${page[l]![t]} on the page, ${v} in Node`));
  });
}

describe("demo page in headless Chromium", { skip: chromiumSkip(), timeout: 300_000 }, () => {
  let browser: Browser;
  let withModel: DemoServer;
  let withoutModel: DemoServer;
  let folder: string;
  let model: MambaModel;
  let tokenizer: Tokenizer;
  const pageErrors: string[] = [];

  before(async () => {
    folder = await mkdtemp(path.join(os.tmpdir(), "mamba-ts-demo-"));
    for (const f of ["config.json", "generation_config.json", "model.safetensors"]) {
      await copyFile(fixture("hf-mamba", "tiny", f), path.join(folder, f));
    }
    await writeFile(path.join(folder, "tokenizer.json"), JSON.stringify(asciiTokenizerJson()));
    model = await loadModel(folder, { backend: "cpu" });
    tokenizer = await loadTokenizer(folder);
    const { files } = await bundleWeb();
    withModel = await startDemoServer({ port: 0, page: files, modelFolder: folder, modelName: "tiny fixture" });
    withoutModel = await startDemoServer({ port: 0, page: files, modelFolder: null, noModelMessage: "This server has no model." });
    await mkdir(ARTIFACTS, { recursive: true });
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
    await withModel?.close();
    await withoutModel?.close();
    await model?.dispose();
    if (folder) await rm(folder, { recursive: true, force: true });
  });

  async function open(url: string): Promise<Page> {
    const page = await browser.newPage({ viewport: { width: 1200, height: 1000 } });
    page.on("pageerror", (e) => pageErrors.push(e.message));
    await page.goto(url);
    const demo = await waitForState(page, ["ready", "error"]);
    assert.equal(demo.error, null, `the page failed to load the model: ${demo.error}`);
    return page;
  }

  // cpu: the CPU backend in the browser; webgpu: navigator.gpu (SwiftShader here); auto: whichever the page picks
  for (const backend of ["cpu", "webgpu", "auto"] as const) {
    test(`backend=${backend}: same ids as the CPU backend in Node (greedy and sampled), heatmaps drawn`, async (t) => {
      const page = await open(`${withModel.url}?backend=${backend}`);
      const loaded = await page.evaluate(() => (globalThis as unknown as { mambaDemo: DemoState }).mambaDemo);
      assert.equal(loaded.model, "tiny fixture");
      if (backend !== "auto") assert.equal(loaded.backend, backend);
      // the page names the engine it uses, as describeBackend says it in the page
      const status = await page.textContent("#status");
      const label = await page.textContent("#status .backend");
      assert.ok(loaded.engine !== null && loaded.engine.startsWith(loaded.backend ?? "?"), `engine ${loaded.engine} for backend ${loaded.backend}`);
      assert.equal(label, loaded.engine);
      t.diagnostic(`backend in use: ${loaded.backend} (${status?.trim()})`);
      if (loaded.backend === "cpu") {
        // the demo server makes the page cross-origin isolated, so the CPU engine is the wasm one with its threads
        const env = await page.evaluate(() => ({ isolated: globalThis.crossOriginIsolated, cores: navigator.hardwareConcurrency }));
        assert.equal(env.isolated, true, "the demo server's page is cross-origin isolated");
        const m = /wasm simd [a-z]+, (\d+) threads?\)/.exec(label ?? "");
        assert.ok(m, `the label names the wasm engine and its threads: ${label}`);
        const threads = Number(m[1]);
        assert.ok(threads >= 1 && threads <= Math.max(1, env.cores), `${threads} threads on ${env.cores} cores`);
        if (env.cores > 1) assert.ok(threads > 1, `${threads} thread(s) on ${env.cores} cores`);
      }
      // Mamba-1: one Δ per inner channel
      assert.equal(loaded.family, model.config.family);
      assert.equal(loaded.deltaUnit, "channel");
      assert.equal(loaded.deltaCount, model.config.intermediateSize);
      assert.equal(await page.getAttribute("#channel", "max"), String(model.config.intermediateSize - 1));
      const tol = loaded.backend === "cpu" ? 1e-6 : 1e-3;

      for (const o of [
        { prompt: PROMPT, maxNewTokens: 24, temperature: 0, seed: 0 },
        { prompt: "The quick brown fox", maxNewTokens: 32, temperature: 1, seed: 7 },
      ]) {
        const want = await reference(model, tokenizer, o);
        const demo = await generateOnPage(page, o);
        assert.deepEqual(demo.promptIds, want.prompt, "prompt ids");
        assert.deepEqual(demo.newIds, want.newIds, `new ids (temperature ${o.temperature})`);
        // every token the model read was recorded: the prompt and all new tokens but the last
        assert.equal(demo.traceTokens, want.prompt.length + want.newIds.length - 1);
        assert.equal(demo.traceChannels, model.config.intermediateSize);
        assertKeepClose(demo.keep, want.keep, tol);
        assert.ok(demo.tokensPerSecond !== null && demo.tokensPerSecond > 0, "tokens/s shown");
        assert.match(await page.textContent("#stats") ?? "", /tokens\/s/);
        const spans = await page.$$eval("#text span", (s) => s.map((x) => (x as HTMLElement).style.background !== ""));
        assert.equal(spans.length, want.prompt.length + want.newIds.length, "one span per token");
        assert.equal(spans.filter(Boolean).length, demo.traceTokens, "every token read is coloured");
      }
      const layers = model.config.numLayers;
      for (const id of ["delta-map", "keep-map"]) {
        const ink = await canvasInk(page, id);
        const tokens = (await page.evaluate(() => (globalThis as unknown as { mambaDemo: DemoState }).mambaDemo.traceTokens));
        assert.ok(ink.ink >= tokens * layers * 20, `${id}: ${ink.ink} drawn pixels for ${tokens} tokens × ${layers} layers`);
        assert.ok(ink.colours >= 10, `${id}: only ${ink.colours} colours`);
      }
      await page.screenshot({ path: path.join(ARTIFACTS, `demo-${backend}.png`), fullPage: true });
      await page.close();
      assert.deepEqual(pageErrors, []);
    });
  }

  test("a Mamba-2 model: Δ per head, the head input's maximum is H - 1, same ids as in Node", async () => {
    // the Mamba-2 fixture has no tokenizer.json; its 96-token vocabulary is the byte-level ASCII one's
    const folder2 = await mkdtemp(path.join(os.tmpdir(), "mamba-ts-demo-mamba2-"));
    let server: DemoServer | null = null;
    let model2: MambaModel | null = null;
    try {
      for (const f of ["config.json", "generation_config.json", "model.safetensors"]) {
        await copyFile(fixture("hf-mamba2", "tiny", f), path.join(folder2, f));
      }
      await writeFile(path.join(folder2, "tokenizer.json"), JSON.stringify(asciiTokenizerJson()));
      model2 = await loadModel(folder2, { backend: "cpu" });
      const tokenizer2 = await loadTokenizer(folder2);
      const heads = model2.config.mamba2!.numHeads;
      assert.equal(model2.config.family, "mamba2");
      assert.notEqual(heads, model2.config.intermediateSize, "the fixture tells heads from channels");
      server = await startDemoServer({ port: 0, page: (await bundleWeb()).files, modelFolder: folder2, modelName: "tiny Mamba-2 fixture" });
      const page = await open(`${server.url}?backend=cpu`);
      const loaded = await page.evaluate(() => (globalThis as unknown as { mambaDemo: DemoState }).mambaDemo);
      assert.equal(loaded.family, "mamba2");
      assert.equal(loaded.deltaUnit, "head");
      assert.equal(loaded.deltaCount, heads);
      assert.equal(await page.getAttribute("#channel", "max"), String(heads - 1));
      assert.equal((await page.textContent("#channel-word"))?.trim(), "head");
      assert.match(await page.textContent("#channel-mode") ?? "", /mean over heads/);
      assert.match(await page.textContent("#delta-title") ?? "", /per head/);
      assert.match(await page.textContent("#model-info") ?? "", new RegExp(`${heads} heads`));

      const o = { prompt: PROMPT, maxNewTokens: 12, temperature: 0, seed: 0 };
      const want = await reference(model2, tokenizer2, o);
      assert.equal(want.channels, heads, "Node's recorder: one Δ per head");
      const demo = await generateOnPage(page, o);
      assert.deepEqual(demo.promptIds, want.prompt);
      assert.deepEqual(demo.newIds, want.newIds);
      assert.equal(demo.traceChannels, heads);
      assertKeepClose(demo.keep, want.keep, 1e-6);

      // colour the text by the last head's Δ (mean over layers): each token's title names it, to 3 digits
      const h = heads - 1;
      await page.selectOption("#metric", "delta");
      await page.selectOption("#channel-mode", "one");
      await page.fill("#channel", String(h));
      await page.dispatchEvent("#channel", "change");
      const titles = await page.$$eval("#text span", (s) => s.map((x) => (x as HTMLElement).title));
      const layers = want.delta.length;
      for (let t = 0; t < demo.traceTokens; t++) {
        let sum = 0;
        for (let l = 0; l < layers; l++) sum += want.delta[l]![t * heads + h]!;
        const expected = sum / layers;
        const m = /Δ = ([0-9.e+-]+)/.exec(titles[t] ?? "");
        assert.ok(m, `token ${t}: title ${titles[t]}`);
        assert.ok(Math.abs(Number(m[1]) - expected) <= 5e-3 * Math.abs(expected), `token ${t}: Δ of head ${h} ${m[1]} on the page, ${expected} in Node`);
      }
      const ink = await canvasInk(page, "delta-map");
      assert.ok(ink.ink >= demo.traceTokens * layers * 20, `delta-map: ${ink.ink} drawn pixels`);
      await page.screenshot({ path: path.join(ARTIFACTS, "demo-mamba2.png"), fullPage: true });
      await page.close();
      assert.deepEqual(pageErrors, []);
    } finally {
      await server?.close();
      await model2?.dispose();
      await rm(folder2, { recursive: true, force: true });
    }
  });

  test("no model served: the page says so and runs the untrained fallback model, as createModel does in Node", async () => {
    const page = await open(`${withoutModel.url}?backend=cpu`);
    const loaded = await page.evaluate(() => (globalThis as unknown as { mambaDemo: DemoState }).mambaDemo);
    assert.equal(loaded.fallback, true);
    const note = await page.textContent("#notice");
    assert.match(note ?? "", /This server has no model\./);
    assert.match(note ?? "", /untrained/);
    const o = { prompt: "Hello, Mamba", maxNewTokens: 16, temperature: 0.8, seed: 3 };
    const fallback = await createModel(FALLBACK_SIZES, { seed: FALLBACK_SEED, backend: "cpu" });
    const want = await reference(fallback, tokenizerFromJson(byteLevelTokenizerJson()), o);
    await fallback.dispose();
    const demo = await generateOnPage(page, o);
    assert.deepEqual(demo.promptIds, want.prompt);
    assert.deepEqual(demo.newIds, want.newIds);
    assertKeepClose(demo.keep, want.keep, 1e-6);
    await page.screenshot({ path: path.join(ARTIFACTS, "demo-fallback.png"), fullPage: true });

    // a model folder picked with the page's folder input replaces the fallback
    await page.setInputFiles("#folder", folder);
    const picked = await waitForState(page, ["ready", "error"]);
    assert.equal(picked.error, null, `loading the picked folder failed: ${picked.error}`);
    assert.equal(picked.fallback, false);
    assert.equal(picked.model, path.basename(folder));
    const o2 = { prompt: PROMPT, maxNewTokens: 12, temperature: 1, seed: 11 };
    const want2 = await reference(model, tokenizer, o2);
    const demo2 = await generateOnPage(page, o2);
    assert.deepEqual(demo2.newIds, want2.newIds);
    await page.close();
    assert.deepEqual(pageErrors, []);
  });
});
