/**
 * A long WebGPU training run must not create GPU objects on every step: after the first steps have filled the
 * caches (pipelines, parameter blocks, bind groups, pooled buffers), further steps create no storage buffer, no
 * readback buffer (a step reads back its loss, accuracy and gradient norm: making a staging buffer for each read
 * grew a list that every read searched, and each step slowed down as the run went on), no pipeline, and no bind
 * group (the pool hands an op the same buffers every step, so its bind group is found in the cache: one run that
 * made 145 bind groups a step fell from 730k to 455k tokens/s over 4000 steps), and no uniform parameter block:
 * values that change every step (learning rate, bias corrections, clipping scale, the batch's count of distinct
 * ids) must not go into the cached uniform blocks. The runtime's caches and pools keep their sizes. The model has
 * layers enough for a step of more than 512 dispatches, so that the training backend also submits part way
 * through a step. Runs when a WebGPU adapter exists (skipped otherwise, failed under CI=true).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import type { TrainingBackend } from "../../src/backend/training.ts";
import type { Gpu } from "../../src/backend/webgpu/gpu.ts";
import { Usage } from "../../src/backend/webgpu/gpu.ts";
import { Trainer } from "../../src/train/trainer.ts";
import { gpuTest } from "../helpers/backends.ts";
import { tinyOptions } from "./helpers/tiny-run.ts";

/** Counts the GPU objects `device` creates from now on, by kind (the device's own methods, wrapped). */
function countCreations(device: GPUDevice): Map<string, number> {
  const counts = new Map<string, number>();
  const d = device as unknown as Record<string, (...args: unknown[]) => unknown>;
  for (const method of ["createBindGroup", "createBuffer", "createComputePipeline", "createShaderModule", "createQuerySet"]) {
    const original = d[method]!.bind(device);
    d[method] = (...args: unknown[]) => {
      // buffers by usage: a uniform parameter block, a readback (staging) buffer, or a storage buffer
      const usage = method === "createBuffer" ? (args[0] as GPUBufferDescriptor).usage : 0;
      const kind = method !== "createBuffer" ? method
        : usage & Usage.UNIFORM ? "createBuffer (uniform)" : usage & Usage.MAP_READ ? "createBuffer (readback)" : "createBuffer (storage)";
      counts.set(kind, (counts.get(kind) ?? 0) + 1);
      return original(...args);
    };
  }
  return counts;
}

test("webgpu training: steps after warm-up create no GPU objects (no bind group, buffer or pipeline), and the caches and pools keep their sizes", { timeout: 600_000 }, async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  const backend = await createWebGpuBackend();
  try {
    const base = tinyOptions({ steps: 30 });
    const trainer = Trainer.create(backend as unknown as TrainingBackend, { ...base, model: { ...base.model, numLayers: 6 } });
    const gpu = (backend as unknown as { gpu: Gpu }).gpu;
    for (let i = 0; i < 4; i++) await trainer.trainStep();
    const dispatches = gpu.dispatches, submits = gpu.submits;
    const counts = countCreations(gpu.device);
    const bytes = gpu.liveBytes, kept = gpu.bookkeeping, groups = gpu.bindGroupsCreated;
    const steps = 12;
    for (let i = 0; i < steps; i++) await trainer.trainStep();
    assert.ok((gpu.dispatches - dispatches) / steps > 512, `${(gpu.dispatches - dispatches) / steps} dispatches a step, expected more than 512`);
    assert.ok(gpu.submits - submits > 2 * steps, `${gpu.submits - submits} submits by ${steps} steps`);
    const made = (kind: string) => counts.get(kind) ?? 0;
    for (const kind of ["createBindGroup", "createBuffer (uniform)", "createBuffer (storage)", "createBuffer (readback)",
      "createComputePipeline", "createShaderModule", "createQuerySet"]) {
      assert.equal(made(kind), 0, `${kind}: calls by ${steps} steps after warm-up`);
    }
    assert.equal(gpu.bindGroupsCreated, groups, "the runtime's count of bind groups");
    assert.equal(gpu.liveBytes, bytes, `GPU bytes alive after ${steps} more steps`);
    assert.deepEqual(gpu.bookkeeping, kept, "the runtime's caches and pools (kernels, parameter blocks, bind groups, pooled and readback buffers)");
  } finally {
    await backend.destroy();
  }
});
