/**
 * Training on WebGPU: model.lossAndGrads against PyTorch's gradients (fixtures/hf-mamba/tiny/grads.safetensors),
 * both mixers with biases and an untied head against the CPU backend, and a few optimizer steps of a tiny run that
 * track the CPU run's losses, gradient norms and weights, and are deterministic (repeated and resumed runs give the
 * same bits). Runs when a WebGPU adapter exists (skipped otherwise, failed under CI=true).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { makeConfig, modelFromTensors } from "../../src/index.ts";
import { CpuBackend } from "../../src/backend/cpu/index.ts";
import type { TrainingBackend } from "../../src/backend/training.ts";
import { Trainer } from "../../src/train/trainer.ts";
import { checkFixtureGrads, fixture, relErr } from "../helpers/fixtures.ts";
import { TestRng, perturbedParameters } from "../helpers/random.ts";
import { initParameters } from "../../src/model/init.ts";
import { gpuTest } from "../helpers/backends.ts";
import { tinyOptions } from "./helpers/tiny-run.ts";


test("hf-mamba/tiny on webgpu: loss and every gradient match PyTorch", async (t) => {
  if (!(await gpuTest(t))) return;
  await checkFixtureGrads(fixture("hf-mamba", "tiny"), "webgpu", { tol: 2e-5, backendName: "webgpu" });
});

for (const mixer of ["s6", "lti"] as const) {
  test(`${mixer} on webgpu: lossAndGrads equals the cpu's (untied head, biases, batch 3, seqLen 37)`, async (t) => {
    if (!(await gpuTest(t))) return;
    const cfg = makeConfig({ vocabSize: 29, hiddenSize: 12, numLayers: 2, stateSize: 5, intermediateSize: 24, timeStepRank: 3,
      convKernel: 4, useBias: true, tieEmbeddings: false, mixer });
    const params = mixer === "s6" ? perturbedParameters(cfg, 5) : initParameters(cfg, { seed: 5 });
    const shape = { batch: 3, seqLen: 37 };
    const ids = new TestRng(3).ids(shape.batch * shape.seqLen, cfg.vocabSize);
    const cpu = await modelFromTensors(cfg, params, { backend: "cpu" });
    const gpu = await modelFromTensors(cfg, params, { backend: "webgpu" });
    try {
      const c = await cpu.lossAndGrads(ids, shape);
      const g = await gpu.lossAndGrads(ids, shape);
      assert.ok(Math.abs(c.loss - g.loss) <= 1e-5 * Math.abs(c.loss), `loss ${g.loss} vs ${c.loss}`);
      assert.deepEqual([...g.grads.keys()].sort(), [...c.grads.keys()].sort());
      for (const [name, want] of c.grads) {
        const e = relErr(g.grads.get(name)!, want);
        assert.ok(e < 5e-5, `${name}: relative error ${e.toExponential(2)}`);
      }
    } finally {
      await cpu.dispose();
      await gpu.dispose();
    }
  });
}

for (const stateNoise of [0, 0.5]) {
  test(`a tiny training run on webgpu tracks the cpu run (losses, gradient norms, weights)${stateNoise ? ", from random initial SSM states" : ""}`, async (t) => {
    if (!(await gpuTest(t))) return;
    const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
    const gb = (await createWebGpuBackend()) as TrainingBackend;
    try {
      const o = tinyOptions({ steps: 12, stateNoise });
      const cpu = Trainer.create(new CpuBackend(), o);
      const gpu = Trainer.create(gb, o);
      for (let i = 0; i < o.steps; i++) {
        const c = await cpu.trainStep(), g = await gpu.trainStep();
        assert.ok(Math.abs(c.loss - g.loss) <= 1e-4 * Math.abs(c.loss), `step ${i + 1}: loss ${g.loss} vs ${c.loss}`);
        assert.ok(Math.abs(c.gradNorm - g.gradNorm) <= 1e-3 * c.gradNorm, `step ${i + 1}: gradient norm ${g.gradNorm} vs ${c.gradNorm}`);
        assert.equal(g.accuracy, c.accuracy, `step ${i + 1}: accuracy`);
      }
      const pc = await cpu.parameters(), pg = await gpu.parameters();
      for (const [name, w] of pc) {
        const e = relErr(pg.get(name)!.data as Float32Array, w.data as Float32Array);
        assert.ok(e < 1e-3, `${name} after ${o.steps} steps: relative error ${e.toExponential(2)}`);
      }
      const ec = await cpu.evaluate(2), eg = await gpu.evaluate(2);
      assert.equal(eg.accuracy, ec.accuracy, "held-out accuracy");
      if (stateNoise) {
        const plain = Trainer.create(new CpuBackend(), tinyOptions({ steps: 12 }));
        assert.notEqual((await plain.trainStep()).loss, (await Trainer.create(new CpuBackend(), o).trainStep()).loss, "the noise changes the first step");
      }
    } finally {
      await gb.destroy();
    }
  });
}

test("webgpu training is deterministic: a run repeats bit for bit, and a resumed run ends with a straight run's bits", async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  const gb = (await createWebGpuBackend()) as TrainingBackend;
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "mamba-ts-webgpu-resume-"));
  try {
    const o = tinyOptions({ steps: 4, checkpointEvery: 0 });
    const straight = Trainer.create(gb, o), again = Trainer.create(gb, o), first = Trainer.create(gb, o);
    const losses: number[][] = [[], []];
    for (let i = 0; i < o.steps; i++) {
      losses[0]!.push((await straight.trainStep()).loss);
      losses[1]!.push((await again.trainStep()).loss);
    }
    assert.deepEqual(losses[1], losses[0]);
    await first.trainStep();
    await first.trainStep();
    await first.save(dir);
    const resumed = await Trainer.resume(gb, dir);
    while (!resumed.finished) await resumed.trainStep();
    const a = await straight.parameters(), b = await again.parameters(), r = await resumed.parameters();
    for (const [name, w] of a) {
      assert.deepEqual(b.get(name)!.data, w.data, `${name}: a repeated run differs`);
      assert.deepEqual(r.get(name)!.data, w.data, `${name}: the resumed run differs`);
    }
  } finally {
    await gb.destroy();
    await fs.rm(dir, { recursive: true, force: true });
  }
});
