/**
 * `mamba-ts train --backend webgpu` as users run it (a child process): it trains, writes metrics.json naming the
 * backend, and its losses and final weights follow the same run on the CPU backend. Runs when a WebGPU adapter
 * exists (skipped otherwise, failed under CI=true).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { latestCheckpoint } from "../../src/train/checkpoint.ts";
import { readF32Tensors } from "../helpers/fixtures.ts";
import { noWebgpu, unavailable } from "../helpers/backends.ts";
import { cli } from "../helpers/cli.ts";



test("train --backend webgpu follows the same run on the cpu", { timeout: 900_000 }, async (t) => {
  const reason = await noWebgpu();
  if (reason) return unavailable(t, reason);
  const base = await fs.mkdtemp(path.join(os.tmpdir(), "mamba-ts-cli-train-webgpu-"));
  const args = ["train", "--task", "induction-heads", "--steps", "4", "--seed", "3", "--seq-len", "16", "--batch-size", "4",
    "--eval-batches", "2", "--checkpoint-every", "0"];
  const runs: Record<string, { metrics: Record<string, unknown>; weights: Map<string, Float32Array> }> = {};
  for (const backend of ["webgpu", "cpu"]) {
    const dir = path.join(base, backend);
    const r = await cli([...args, "--backend", backend, "--out", dir]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /induction-heads s6: accuracy \d\.\d{4} on \d+ held-out scored positions after 4 steps/);
    const metrics = JSON.parse(await fs.readFile(path.join(dir, "metrics.json"), "utf8")) as Record<string, unknown>;
    assert.equal(metrics.backend, backend);
    runs[backend] = { metrics, weights: await readF32Tensors(path.join((await latestCheckpoint(dir))!, "model.safetensors")) };
  }
  const g = runs.webgpu!, c = runs.cpu!;
  const lg = g.metrics.finalTrainLoss as number, lc = c.metrics.finalTrainLoss as number;
  assert.ok(Math.abs(lg - lc) <= 1e-4 * Math.abs(lc), `final training loss ${lg} vs ${lc}`);
  assert.equal(g.metrics.accuracy, c.metrics.accuracy, "held-out accuracy");
  for (const [name, w] of c.weights) {
    const v = g.weights.get(name)!;
    let d = 0, m = 0;
    for (let i = 0; i < w.length; i++) { d = Math.max(d, Math.abs(v[i]! - w[i]!)); m = Math.max(m, Math.abs(w[i]!)); }
    assert.ok(d <= 1e-3 * m, `${name}: weights differ by ${d} (largest ${m})`);
  }
});
