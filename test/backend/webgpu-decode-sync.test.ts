/**
 * The fused decode with each layer one dispatch (decodeGridSync): its workgroups wait for each other through
 * atomics, so they must all run at once. On lavapipe a workgroup runs on one of LP_NUM_THREADS threads, set here
 * before the driver loads to more than the largest dispatch below (a real GPU ignores it). Checked against step mode
 * on the CPU: logits and states, odd and even layer counts, f32 and f16 weights, batch 1 and 3, an out_proj bias,
 * out_proj rows in two rounds, x_proj wider than a workgroup.
 */
process.env.LP_NUM_THREADS ??= "16";
import { test } from "node:test";
import assert from "node:assert/strict";
import { makeConfig, modelFromTensors } from "../../src/index.ts";
import { MambaCache } from "../../src/model/cache.ts";
import { assertClose } from "../helpers/fixtures.ts";
import { TestRng, perturbedParameters } from "../helpers/random.ts";
import { toF16Bits } from "../../src/io/tensor.ts";
import { gpuTest } from "../helpers/backends.ts";

test("webgpu decodeGridSync: one dispatch a layer equals step mode on the CPU (logits, states), generation too", async (t) => {
  if (!(await gpuTest(t))) return;
  const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
  await assert.rejects(createWebGpuBackend({ decodeGridSync: 2 as unknown as boolean }), /decodeGridSync must be true or false, got 2/);
  const configs = [
    // 3 workgroups of 16 channels, 3 layers (odd: the exchange sets wrap), biases everywhere
    makeConfig({ vocabSize: 45, hiddenSize: 20, intermediateSize: 40, stateSize: 5, timeStepRank: 3, convKernel: 4,
      numLayers: 3, useBias: true, useConvBias: true, tieEmbeddings: false }),
    // 5 workgroups, 2 layers, the last one partly filled (E = 68)
    makeConfig({ vocabSize: 37, hiddenSize: 12, intermediateSize: 68, stateSize: 16, timeStepRank: 2, convKernel: 2,
      numLayers: 2, useBias: false, useConvBias: false, tieEmbeddings: true }),
    // 12 workgroups of 8 channels: out_proj's 128 rows take two rounds of 96
    makeConfig({ vocabSize: 50, hiddenSize: 128, intermediateSize: 96, stateSize: 16, timeStepRank: 8, numLayers: 2 }),
    // x_proj of 332 outputs: more than a workgroup's threads
    makeConfig({ vocabSize: 50, hiddenSize: 64, intermediateSize: 40, stateSize: 16, timeStepRank: 300, numLayers: 2 }),
  ];
  const channels = [0, 0, 8, 0];
  for (const [ci, c] of configs.entries()) {
    for (const dtype of ci < 2 ? ["F32", "F16"] as const : ["F32"] as const) {
      const base = perturbedParameters(c, 40 + ci);
      const ps = new Map([...base].map(([k, v]) => [k, dtype === "F32" || v.shape.length < 2 ? v
        : { dtype, shape: v.shape, data: toF16Bits(v.data as Float32Array) }]));
      const gpu = await modelFromTensors(c, ps, { backend: await createWebGpuBackend({ decodeGridSync: true, decodeChannels: channels[ci] || undefined }) });
      const cpu = await modelFromTensors(c, ps, { backend: "cpu" });
      try {
        for (const B of [1, 3]) {
          const rng = new TestRng(300 + B);
          const caches = [MambaCache.zeros(gpu.backend, c, B), MambaCache.zeros(cpu.backend, c, B)];
          for (let step = 0; step < 4; step++) {
            const ids = rng.ids(B, c.vocabSize);
            const gb = gpu.backend;
            const it = gb.fromI32(ids, [B]);
            const fused = gb.decodeStep!(gpu.lm, it, caches[0]!.conv, caches[0]!.ssm);
            assert.ok(fused, "the fused step takes this model");
            const ct = cpu.backend.fromI32(ids, [B]);
            const want = await cpu.backend.readF32(cpu.lm.logits(cpu.lm.hidden(ct, { batch: B, seqLen: 1 }, caches[1]!)));
            const what = `config ${ci} ${dtype} B=${B} step ${step}`;
            assertClose(await gb.readF32(fused), want, 1e-4, `${what} logits`);
            for (let i = 0; i < c.numLayers; i++) {
              assertClose(await gb.readF32(caches[0]!.ssm[i]!), await cpu.backend.readF32(caches[1]!.ssm[i]!), 1e-4, `${what} ssm ${i}`);
              assertClose(await gb.readF32(caches[0]!.conv[i]!), await cpu.backend.readF32(caches[1]!.conv[i]!), 1e-5, `${what} conv ${i}`);
            }
            gb.dispose(it, fused);
          }
          caches.forEach((k) => k.dispose());
        }
        const prompts = [new TestRng(7).ids(5, c.vocabSize)];
        const o = { maxNewTokens: 20, stopTokens: [] };
        assert.deepEqual(Array.from((await gpu.generate(prompts, o))[0]!), Array.from((await cpu.generate(prompts, o))[0]!), `config ${ci} ${dtype} generation`);
      } finally {
        await gpu.dispose();
        await cpu.dispose();
      }
    }
  }
});
