/**
 * The fused decode with a layer in one dispatch (WebGpuTuning.decodePersistent, kernels/decode/layer.ts), whose
 * workgroups wait for each other through counters. lavapipe runs a dispatch's workgroups on its threads, one at a
 * time each; this file asks it for 8 threads (LP_NUM_THREADS, read when the driver starts, so set before the
 * backend is first imported) whatever the machine's cores, so that workgroups of later phases really wait for
 * running ones of earlier phases.
 */
process.env.LP_NUM_THREADS ??= "8";

import { test } from "node:test";
import assert from "node:assert/strict";
import { makeConfig, modelFromTensors } from "../../src/index.ts";
import { MambaCache } from "../../src/model/cache.ts";
import { TestRng, perturbedParameters } from "../helpers/random.ts";
import { toBF16Bits } from "../../src/io/tensor.ts";
import { gpuTest } from "../helpers/backends.ts";
import { decodeStepsMatchCpu } from "../helpers/decode.ts";
import type { WebGpuBackend, WebGpuTuning } from "../../src/backend/webgpu/index.ts";
import { LAYER_FLAG_BYTE } from "../../src/backend/webgpu/kernels/decode/layer.ts";

async function backend(tuning: WebGpuTuning): Promise<WebGpuBackend> {
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  return (await createWebGpuBackend(tuning)) as WebGpuBackend;
}

// 100 channels: 7 items of kernel 1 (16 channels), 4 of the scan (32), out_proj's 20 rows in items of 8 (batch 1),
// 2 (batch 3) or 1 (batch 5); 3 layers; biases on every projection
const three = makeConfig({ vocabSize: 45, hiddenSize: 20, intermediateSize: 100, stateSize: 8, timeStepRank: 5, numLayers: 3,
  useBias: true, useConvBias: true });

test("webgpu: the fused decode step with a layer in one dispatch (decodePersistent) equals step mode on the CPU, f32 and bf16, batch 1, 3 and 5; off by default on a software adapter; a model of one layer keeps three dispatches", async (t) => {
  if (!(await gpuTest(t))) return;
  for (const dtype of ["F32", "BF16"] as const) {
    const base = perturbedParameters(three, 71);
    const ps = new Map([...base].map(([k, v]) => [k, dtype === "F32" || v.shape.length < 2 ? v
      : { dtype, shape: v.shape, data: toBF16Bits(v.data as Float32Array) }]));
    const cpu = await modelFromTensors(three, ps, { backend: "cpu" });
    const b = await backend({ decodePersistent: true });
    const gpu = await modelFromTensors(three, ps, { backend: b });
    try {
      for (const B of [1, 3, 5]) {
        await decodeStepsMatchCpu(gpu, cpu, B, { steps: 3, rng: new TestRng(500 + B), tol: 1e-4, ssmTol: 1e-4, convTol: 1e-5, what: dtype });
      }
      assert.ok(b.gpu.kernelNames.some((n) => n.startsWith("decode_layer_")), `${dtype}: the one-dispatch layer ran`);
      assert.ok(!b.gpu.kernelNames.some((n) => n.startsWith("decode_in_")), `${dtype}: no kernel 1 of its own`);
      // a whole generation: the ids come back with the waits' flag, which is clear
      const ids = await gpu.generate(Int32Array.from([1, 2, 3]), { maxNewTokens: 6, stopTokens: [] });
      const want = await cpu.generate(Int32Array.from([1, 2, 3]), { maxNewTokens: 6, stopTokens: [] });
      assert.deepEqual(Array.from(ids), Array.from(want), `${dtype}: greedy generation`);
    } finally {
      await gpu.dispose();
      await cpu.dispose();
    }
  }
  const ps = perturbedParameters(three, 73);
  const byDefault = await backend({});
  const one = makeConfig({ vocabSize: 45, hiddenSize: 20, intermediateSize: 100, stateSize: 8, timeStepRank: 5, numLayers: 1 });
  const asked = await backend({ decodePersistent: true });
  const models = [await modelFromTensors(three, ps, { backend: byDefault }), await modelFromTensors(one, perturbedParameters(one, 74), { backend: asked })];
  try {
    for (const m of models) await m.generate(Int32Array.from([4, 5]), { maxNewTokens: 3, stopTokens: [] });
    const software = byDefault.gpu.softwareDriver;
    assert.equal(byDefault.gpu.kernelNames.some((n) => n.startsWith("decode_layer_")), !software && /nvidia|amd|intel/i.test(byDefault.gpu.vendor),
      "the default: on for NVIDIA, AMD and Intel GPUs, off for software adapters");
    assert.ok(!asked.gpu.kernelNames.some((n) => n.startsWith("decode_layer_")), "one layer: three dispatches (its x_proj takes the partials)");
  } finally {
    for (const m of models) await m.dispose();
  }
});

test("webgpu: decodePersistent: a wait that gives up fails the step's read with a clear error; a bad option is refused", async (t) => {
  if (!(await gpuTest(t))) return;
  const ps = perturbedParameters(three, 72);
  const b = await backend({ decodePersistent: true });
  const gpu = await modelFromTensors(three, ps, { backend: b });
  try {
    // the counters as a dispatch whose wait gave up leaves them: the flag set
    const cache = MambaCache.zeros(gpu.backend, three, 1);
    const it = gpu.backend.fromI32(Int32Array.from([3]), [1]);
    const logits = gpu.backend.decodeStep!(gpu.lm, it, cache.conv, cache.ssm)!;
    const watch = (b as unknown as { barrierWatch: { gpu: GPUBuffer } }).barrierWatch;
    assert.ok(watch, "the step watches its counters");
    await b.gpu.sync(); // the step's own work (which zeroes the words first) before the write
    b.gpu.device.queue.writeBuffer(watch.gpu, LAYER_FLAG_BYTE, Uint32Array.from([1]));
    const ids = gpu.backend.sample(logits, { vocabSize: three.vocabSize, temperature: 0, topK: 0, topP: 1, minP: 0,
      repetitionPenalty: 1, history: null, uniforms: new Float32Array(1) });
    await assert.rejects(gpu.backend.readI32(ids), /decodePersistent's one-dispatch layer waited in vain.*decodePersistent: false/);
    gpu.backend.dispose(it, logits, ids);
    cache.dispose();
  } finally {
    await gpu.dispose();
  }
  await assert.rejects(backend({ decodePersistent: "yes" as unknown as boolean }), /decodePersistent must be true or false, got yes/);
  // a backend made by name takes the model's webgpu options (the CLI's --no-persistent-decode passes them so)
  const named = await modelFromTensors(three, ps, { backend: "webgpu", webgpu: { decodePersistent: false, allowFallbackAdapter: true } });
  try {
    await named.generate(Int32Array.from([1]), { maxNewTokens: 2, stopTokens: [] });
    const names = (named.backend as WebGpuBackend).gpu.kernelNames;
    assert.ok(names.some((n) => n.startsWith("decode_in_")) && !names.some((n) => n.startsWith("decode_layer_")), "three dispatches a layer");
  } finally {
    await named.dispose();
  }
  await assert.rejects(modelFromTensors(three, ps, { backend: "webgpu", webgpu: { decodePersistent: 2 as unknown as boolean } }),
    /decodePersistent must be true or false, got 2/);
});
