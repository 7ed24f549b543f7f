/**
 * Training reports: report.html is written atomically, self-contained (uPlot inlined, nothing fetched), carries
 * the history's values exactly, groups loss and accuracy curves, lists non-finite values, and renders its charts
 * in a real browser (headless Chromium).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { MambaError } from "../../src/errors.ts";
import { type MetricsRecord, writeTrainingReport } from "../../src/train/report.ts";
import { chromiumSkip, launchChromium } from "../helpers/chromium.ts";

function history(steps: number): MetricsRecord[] {
  const h: MetricsRecord[] = [];
  for (let s = 1; s <= steps; s++) {
    h.push({
      step: s, loss: 3 / s + 0.1, accuracy: 1 - 1 / (s + 1), lr: 1e-3 * Math.min(1, s / 5),
      ...(s % 5 === 0 ? { evalLoss: 3 / s + 0.2, evalAccuracy: 1 - 1.2 / (s + 1) } : {}),
    });
  }
  return h;
}

/** The data object the report embeds for its charts. */
function embedded(html: string): { steps: number[]; charts: { title: string; series: string[] }[]; columns: Record<string, (number | null)[]> } {
  const m = /const data = (\{.*\});\n/.exec(html);
  assert.ok(m, "the report embeds its data");
  return JSON.parse(m[1]!);
}

test("report.html: self-contained, exact values, grouped charts, atomic replacement", async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), "mamba-ts-report-"));
  try {
    const h = history(40);
    h[7]!.loss = Number.NaN;
    const file = await writeTrainingReport(dir, [...h].reverse(), { title: "copy <S6> & co", details: { seed: 3 } });
    assert.equal(file, path.join(dir, "report.html"));
    const html = await readFile(file, "utf8");
    assert.deepEqual(await readdir(dir), ["report.html"], "no temporary file left behind");
    assert.match(html, /<title>copy &#60;S6&#62; &#38; co<\/title>/);
    assert.match(html, /\.uplot/, "uPlot's CSS is inlined");
    assert.ok(html.includes((await readFile(new URL(import.meta.resolve("uplot/dist/uPlot.iife.min.js")), "utf8")).slice(0, 200)),
      "uPlot's script is inlined");
    assert.doesNotMatch(html, /<script[^>]+src=|<link[^>]+href=|<img|url\(|import\(|fetch\(/, "nothing is fetched");
    assert.match(html, /Not plotted \(not finite\): loss = NaN at step 8/);

    const data = embedded(html);
    assert.deepEqual(data.steps, h.map((r) => r.step), "steps sorted");
    assert.deepEqual(data.charts.map((c) => [c.title, c.series]),
      [["Loss", ["loss", "evalLoss"]], ["Accuracy", ["accuracy", "evalAccuracy"]], ["lr", ["lr"]]]);
    for (const name of ["loss", "accuracy", "lr", "evalLoss", "evalAccuracy"]) {
      const want = h.map((r) => (r[name] === undefined || !Number.isFinite(r[name]) ? null : r[name]));
      assert.deepEqual(data.columns[name], want, name);
    }
    // the table: the last loss and the best accuracy
    assert.match(html, new RegExp(`<td>loss</td><td>${(3 / 40 + 0.1).toPrecision(5)}</td><td>40</td>`));
    assert.match(html, new RegExp(`<td>accuracy</td><td>${(100 * (1 - 1 / 41)).toFixed(2)}%</td>`));

    // written again with more steps: replaced whole
    await writeTrainingReport(dir, history(60));
    assert.deepEqual(embedded(await readFile(file, "utf8")).steps.length, 60);
    assert.deepEqual(await readdir(dir), ["report.html"]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("bad histories are MambaErrors", async () => {
  const dir = path.join(os.tmpdir(), "mamba-ts-report-never-written");
  for (const [bad, pattern] of [
    [{} as unknown, /must be an array/],
    [[{ loss: 1 }], /record 0 has no finite 'step'/],
    [[{ step: 1, loss: "1" }], /record 0: 'loss' must be a number/],
  ] as const) {
    await assert.rejects(writeTrainingReport(dir, bad as MetricsRecord[]), (err: unknown) => err instanceof MambaError && pattern.test(err.message));
  }
});

test("the report's charts render in Chromium", { skip: chromiumSkip(), timeout: 180_000 }, async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), "mamba-ts-report-"));
  const browser = await launchChromium();
  try {
    const file = await writeTrainingReport(dir, history(50), { title: "render check" });
    const page = await browser.newPage({ viewport: { width: 1000, height: 900 } });
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(`file://${file}`);
    await page.waitForFunction(() => document.body.dataset.charts === "3", null, { timeout: 30_000 });
    const inked = await page.$$eval(".uplot canvas", (cs) => cs.map((c) => {
      const canvas = c as HTMLCanvasElement;
      const d = canvas.getContext("2d")!.getImageData(0, 0, canvas.width, canvas.height).data;
      let n = 0;
      for (let i = 3; i < d.length; i += 4) if (d[i]! > 0) n++;
      return n;
    }));
    assert.equal(inked.length, 3, "one canvas per chart");
    for (const n of inked) assert.ok(n > 1000, `a chart drew only ${n} pixels`);
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await rm(dir, { recursive: true, force: true });
  }
});
