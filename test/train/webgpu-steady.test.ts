/**
 * A long WebGPU training run must not create GPU objects on every step: after the first steps have filled the
 * caches (pipelines, parameter blocks, pooled buffers), further steps create no storage buffer, no readback buffer
 * (a step reads back its loss, accuracy and gradient norm: making a staging buffer for each read grew a list that
 * every read searched, and each step slowed down as the run went on) and fewer uniform
 * parameter blocks than steps (the embedding backward's block holds the batch's count of distinct ids, which takes
 * a few values at most). Values that change every step (learning rate, bias corrections, clipping scale) therefore
 * must not go into the cached uniform blocks. Runs when a WebGPU adapter exists (skipped otherwise, failed under CI=true).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import type { TrainingBackend } from "../../src/backend/training.ts";
import type { Gpu } from "../../src/backend/webgpu/gpu.ts";
import { Trainer } from "../../src/train/trainer.ts";
import { gpuTest } from "../helpers/backends.ts";
import { tinyOptions } from "./helpers/tiny-run.ts";

test("webgpu training: steps after warm-up create no buffers and not a parameter block a step", async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  const backend = await createWebGpuBackend();
  try {
    const trainer = Trainer.create(backend as unknown as TrainingBackend, tinyOptions({ steps: 30 }));
    const gpu = (backend as unknown as { gpu: Gpu }).gpu;
    for (let i = 0; i < 4; i++) await trainer.trainStep();
    const blocks = gpu.paramBlocksCreated;
    const bytes = gpu.liveBytes;
    const staging = gpu.stagingCreated;
    for (let i = 0; i < 12; i++) await trainer.trainStep();
    const created = gpu.paramBlocksCreated - blocks;
    assert.ok(created < 12, `${created} uniform blocks created by 12 steps after warm-up`);
    assert.equal(gpu.liveBytes, bytes, "GPU bytes alive after 12 more steps");
    assert.equal(gpu.stagingCreated - staging, 0, "readback buffers created by 12 steps after warm-up");
  } finally {
    await backend.destroy();
  }
});
