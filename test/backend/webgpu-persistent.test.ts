/**
 * The fused decode with a layer in one dispatch (WebGpuTuning.decodePersistent, kernels/decode/layer.ts): its
 * grid-wide barriers need every workgroup running at once. lavapipe runs a dispatch's workgroups on its threads,
 * one each, so this file asks it for 8 threads (LP_NUM_THREADS, read when the driver starts; set before the
 * backend is first imported) whatever the machine's cores: the default grid of the models below is 7 workgroups.
 */
process.env.LP_NUM_THREADS ??= "8";

import { test } from "node:test";
import assert from "node:assert/strict";
import { makeConfig, modelFromTensors, type MambaModel } from "../../src/index.ts";
import { MambaCache } from "../../src/model/cache.ts";
import { assertClose } from "../helpers/fixtures.ts";
import { TestRng, perturbedParameters } from "../helpers/random.ts";
import { toBF16Bits } from "../../src/io/tensor.ts";
import { gpuTest } from "../helpers/backends.ts";
import type { WebGpuBackend, WebGpuTuning } from "../../src/backend/webgpu/index.ts";

async function backend(tuning: WebGpuTuning): Promise<WebGpuBackend> {
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  return (await createWebGpuBackend(tuning)) as WebGpuBackend;
}

/** `steps` steps of batch B from zero caches: the GPU's decodeStep against the CPU's step mode (logits, states). */
async function stepsMatch(gpu: MambaModel, cpu: MambaModel, B: number, steps: number, rng: TestRng, what: string): Promise<void> {
  const c = gpu.lm.config, gb = gpu.backend, cb = cpu.backend;
  const caches = [MambaCache.zeros(gb, c, B), MambaCache.zeros(cb, c, B)];
  try {
    for (let step = 0; step < steps; step++) {
      const ids = rng.ids(B, c.vocabSize);
      const it = gb.fromI32(ids, [B]);
      const fused = gb.decodeStep!(gpu.lm, it, caches[0]!.conv, caches[0]!.ssm);
      assert.ok(fused, `${what}: the fused step takes this model`);
      const want = await cb.readF32(cpu.lm.logits(cpu.lm.hidden(cb.fromI32(ids, [B]), { batch: B, seqLen: 1 }, caches[1]!)));
      const at = `${what} B=${B} step ${step}`;
      assertClose(await gb.readF32(fused), want, 1e-4, `${at} logits`);
      for (let i = 0; i < c.numLayers; i++) {
        assertClose(await gb.readF32(caches[0]!.ssm[i]!), await cb.readF32(caches[1]!.ssm[i]!), 1e-4, `${at} ssm ${i}`);
        assertClose(await gb.readF32(caches[0]!.conv[i]!), await cb.readF32(caches[1]!.conv[i]!), 1e-5, `${at} conv ${i}`);
      }
      gb.dispose(it, fused);
    }
  } finally {
    caches.forEach((k) => k.dispose());
  }
}

// 100 channels: 7 groups of kernel 1 (16 channels), 4 of the scan (32), out_proj's 20 rows in items of 8 (batch 1)
// or 2 (batch 3); 3 layers; biases on every projection
const three = makeConfig({ vocabSize: 45, hiddenSize: 20, intermediateSize: 100, stateSize: 8, timeStepRank: 5, numLayers: 3,
  useBias: true, useConvBias: true });

test("webgpu: the fused decode step with a layer in one dispatch (decodePersistent) equals step mode on the CPU, f32 and bf16, 1, 2 and 7 workgroups", async (t) => {
  if (!(await gpuTest(t))) return;
  for (const dtype of ["F32", "BF16"] as const) {
    const base = perturbedParameters(three, 71);
    const ps = new Map([...base].map(([k, v]) => [k, dtype === "F32" || v.shape.length < 2 ? v
      : { dtype, shape: v.shape, data: toBF16Bits(v.data as Float32Array) }]));
    const cpu = await modelFromTensors(three, ps, { backend: "cpu" });
    try {
      for (const groups of [1, 2, undefined]) {
        const b = await backend({ decodePersistent: true, decodePersistentGroups: groups });
        const gpu = await modelFromTensors(three, ps, { backend: b });
        const what = `${dtype}, ${groups ?? "default"} workgroups`;
        try {
          for (const B of [1, 3]) await stepsMatch(gpu, cpu, B, 3, new TestRng(500 + B), what);
          assert.ok(b.gpu.kernelNames.some((n) => n.startsWith("decode_layer_")), `${what}: the one-dispatch layer ran`);
          assert.ok(!b.gpu.kernelNames.some((n) => n.startsWith("decode_in_")), `${what}: no kernel 1 of its own`);
          // a whole generation: the ids come back with the barriers' flag, which is clear
          const ids = await gpu.generate(Int32Array.from([1, 2, 3]), { maxNewTokens: 5, stopTokens: [] });
          const want = await cpu.generate(Int32Array.from([1, 2, 3]), { maxNewTokens: 5, stopTokens: [] });
          assert.deepEqual(Array.from(ids), Array.from(want), `${what}: greedy generation`);
        } finally {
          await gpu.dispose();
        }
      }
    } finally {
      await cpu.dispose();
    }
  }
});

test("webgpu: decodePersistent: a barrier that gives up fails the step's read with a clear error; bad options are refused", async (t) => {
  if (!(await gpuTest(t))) return;
  const ps = perturbedParameters(three, 72);
  const b = await backend({ decodePersistent: true });
  const gpu = await modelFromTensors(three, ps, { backend: b });
  try {
    // the barrier words as a dispatch that lost workgroups leaves them: the flag set
    const cache = MambaCache.zeros(gpu.backend, three, 1);
    const it = gpu.backend.fromI32(Int32Array.from([3]), [1]);
    const logits = gpu.backend.decodeStep!(gpu.lm, it, cache.conv, cache.ssm)!;
    const watch = (b as unknown as { barrierWatch: { gpu: GPUBuffer } }).barrierWatch;
    assert.ok(watch, "the step watches its barrier words");
    await b.gpu.sync(); // the step's own work (which zeroes the words first) before the write
    b.gpu.device.queue.writeBuffer(watch.gpu, 4, Uint32Array.from([1]));
    const ids = gpu.backend.sample(logits, { vocabSize: three.vocabSize, temperature: 0, topK: 0, topP: 1, minP: 0,
      repetitionPenalty: 1, history: null, uniforms: new Float32Array(1) });
    await assert.rejects(gpu.backend.readI32(ids), /grid-wide barrier of decodePersistent timed out.*decodePersistent: false/);
    gpu.backend.dispose(it, logits, ids);
    cache.dispose();
  } finally {
    await gpu.dispose();
  }
  await assert.rejects(backend({ decodePersistent: "yes" as unknown as boolean }), /decodePersistent must be true or false, got yes/);
  await assert.rejects(backend({ decodePersistentGroups: 0 }), /decodePersistentGroups must be a whole number >= 1, got 0/);
  await assert.rejects(backend({ decodePersistentGroups: 70000 }), /decodePersistentGroups must be at most 65535, got 70000/);
});
