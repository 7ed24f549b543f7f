/**
 * Q8_0 / Q4_0 weight matrices kept in their GGUF blocks on the GPU: each kernel that reads weights (matvec, the
 * tiled matmul in its vec4 and scalar forms, the embedding gather, the fused decode step and the batch decode step)
 * against the CPU reference backend on the dequantized weights; readF32 gives the exact dequantized values; writes
 * into quantized weights are refused; the GGUF fixtures give their expected logits and the CPU's greedy ids.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import type { Tensor } from "../../src/backend/backend.ts";
import { CpuBackend } from "../../src/backend/cpu/index.ts";
import { GpuTensor } from "../../src/backend/webgpu/tensor.ts";
import { MambaError, loadModel } from "../../src/index.ts";
import { type QuantType, dequantize, quantizeQ4_0, quantizeQ8_0 } from "../../src/io/quant.ts";
import type { HostTensor } from "../../src/io/tensor.ts";
import { makeConfig } from "../../src/model/init.ts";
import { modelFromTensors } from "../../src/model/build.ts";
import { gpuTest, withOwnWebgpu } from "../helpers/backends.ts";
import { decodeStepsMatchCpu } from "../helpers/decode.ts";
import { assertClose, fixture, readSafetensorsAny, relErr } from "../helpers/fixtures.ts";
import { TestRng, perturbedParameters } from "../helpers/random.ts";

const QTYPES = ["Q8_0", "Q4_0"] as const;

function quantized(type: QuantType, shape: number[], values: Float32Array): HostTensor {
  return { dtype: type, shape, data: type === "Q8_0" ? quantizeQ8_0(values) : quantizeQ4_0(values) };
}
/** The same tensor as f32: its exact dequantization. */
function dequantized(t: HostTensor): HostTensor {
  const n = t.shape.reduce((a, d) => a * d, 1);
  return { dtype: "F32", shape: t.shape, data: dequantize(t.dtype as QuantType, t.data as Uint8Array, n) };
}
function randomValues(rng: TestRng, n: number): Float32Array {
  const v = new Float32Array(n);
  for (let i = 0; i < n; i++) v[i] = rng.normal() * (1 + ((i >> 5) % 3)); // blocks of different scales
  return v;
}
const storageOf = (t: Tensor) => (t as GpuTensor).storage;

test("webgpu q8_0/q4_0: matmul (matvec, tiled vec4 and scalar), embedding and readF32 equal the CPU reference on the dequantized weights",
  { timeout: 600_000 }, async (t) => {
    await withOwnWebgpu(t, async (gpu) => {
      const cpu = new CpuBackend();
      const rng = new TestRng(5);
      for (const type of QTYPES) {
        for (const K of [32, 64, 800]) {
          for (const N of [1, 3, 33]) {
            const host = quantized(type, [N, K], randomValues(rng, N * K));
            const wq = gpu.upload(host);
            assert.equal(storageOf(wq), type.toLowerCase(), `${type} [${N}, ${K}] stays in blocks on the GPU`);
            const wantW = dequantized(host);
            assert.deepEqual(await gpu.readF32(wq), wantW.data, `${type} [${N}, ${K}] readF32 is the exact dequantization`);
            const wc = cpu.upload(wantW);
            const bias = randomValues(rng, N);
            const [bg, bc] = [gpu.fromF32(bias, [N]), cpu.fromF32(bias, [N])];
            for (const T of [1, 2, 9]) {
              // the whole rows, and a window of columns at an odd offset (the tiled kernel's scalar form)
              const x = randomValues(rng, T * (K + 3));
              const [xg, xc] = [gpu.fromF32(x, [T, K + 3]), cpu.fromF32(x, [T, K + 3])];
              for (const col0 of [0, 1]) {
                const what = `${type} N=${N} K=${K} T=${T} col0=${col0}`;
                const win = (xt: Tensor) => ({ tensor: xt, col0, width: K });
                for (const withBias of [false, true]) {
                  const got = await gpu.readF32(gpu.matmul(win(xg), wq, withBias ? bg : null));
                  const want = await cpu.readF32(cpu.matmul(win(xc), wc, withBias ? bc : null));
                  assert.ok(relErr(got, want) <= 1e-5, `${what} bias=${withBias}: relative error ${relErr(got, want)}`);
                }
              }
              gpu.dispose(xg);
            }
            // the embedding gather: rows of the table by id
            const ids = Int32Array.from({ length: 7 }, (_, i) => (i * 5 + 2) % N);
            const got = await gpu.readF32(gpu.embedding(wq, gpu.fromI32(ids, [7])));
            const want = await cpu.readF32(cpu.embedding(wc, cpu.fromI32(ids, [7])));
            assert.deepEqual(got, want, `${type} [${N}, ${K}] embedding rows are exact`);
            gpu.dispose(wq, bg);
          }
        }
        // a quantized tensor that is not a matrix of whole-block rows is widened to f32 at upload
        const odd = quantized(type, [2, 48], randomValues(rng, 96));
        const wo = gpu.upload(odd);
        assert.equal(storageOf(wo), "f32", "rows of 48 are not whole blocks: widened");
        assert.deepEqual(await gpu.readF32(wo), dequantized(odd).data);
        gpu.dispose(wo);
      }
    });
  });

test("webgpu q8_0/q4_0: writes into quantized weights are refused (training quantized models is not supported)",
  { timeout: 300_000 }, async (t) => {
    await withOwnWebgpu(t, async (gpu) => {
      const rng = new TestRng(9);
      const w = gpu.upload(quantized("Q8_0", [2, 32], randomValues(rng, 64)));
      const g = gpu.fromF32(randomValues(rng, 64), [2, 32]);
      assert.throws(() => gpu.copyInto(w, g), (e) => e instanceof MambaError && /quantized/.test(e.message));
      const tb = gpu as unknown as { adamwStep?: (...a: unknown[]) => void; zeroFill?: (x: Tensor) => void };
      assert.throws(() => tb.zeroFill!(w), (e) => e instanceof MambaError && /quantized/.test(e.message));
      assert.throws(() => tb.adamwStep!(w, g, gpu.zeros([2, 32]), gpu.zeros([2, 32]), { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 1, gradScale: 1 }),
        (e) => e instanceof MambaError && /training quantized models is not supported/.test(e.message));
    });
  });

/** A model's parameters with every matrix whose rows are whole blocks quantized, and the same dequantized. */
function quantizedModel(cfg: ReturnType<typeof makeConfig>, seed: number, type: QuantType) {
  const base = perturbedParameters(cfg, seed);
  const q = new Map<string, HostTensor>(), f = new Map<string, HostTensor>();
  let count = 0;
  for (const [name, v] of base) {
    const cols = v.shape[v.shape.length - 1]!;
    if (v.shape.length === 2 && cols % 32 === 0) {
      const t = quantized(type, v.shape, v.data as Float32Array);
      q.set(name, t);
      f.set(name, dequantized(t));
      count++;
    } else {
      q.set(name, v);
      f.set(name, v);
    }
  }
  return { q, f, count };
}

test("webgpu q8_0/q4_0: the fused decode step (decodePersistent on and off) and the batch step (K-split too) equal the CPU reference's step mode on the dequantized weights",
  { timeout: 900_000 }, async (t) => {
    if (!(await gpuTest(t))) return;
    const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
    // D 32 and E 64: in_proj [128, 32], x_proj [R + 2N, 64], out_proj [32, 64], the tied head [40, 32] quantized;
    // dt_proj [64, 3] stays f32
    const cfg = makeConfig({ vocabSize: 40, hiddenSize: 32, intermediateSize: 64, stateSize: 4, timeStepRank: 3,
      numLayers: 2, useBias: true, useConvBias: true, tieEmbeddings: true });
    for (const type of QTYPES) {
      const { q, f, count } = quantizedModel(cfg, 31, type);
      assert.ok(count >= 7, `${count} matrices quantized`);
      const cpu = await modelFromTensors(cfg, f, { backend: new CpuBackend() });
      for (const decodePersistent of [true, false]) {
        const gpu = await modelFromTensors(cfg, q, { backend: await createWebGpuBackend({ decodePersistent }) });
        try {
          const w = gpu.lm.weights;
          for (const x of [w.embeddings, w.layers[0]!.mixer.inProj, w.layers[0]!.mixer.xProj!, w.layers[1]!.mixer.outProj]) {
            assert.equal(storageOf(x), type.toLowerCase(), "the matrices stay in blocks");
          }
          for (const B of [1, 3, 9]) {
            await decodeStepsMatchCpu(gpu, cpu, B, { steps: 3, rng: new TestRng(70 + B), tol: 1e-4, ssmTol: 1e-4,
              convTol: 1e-5, what: `${type} decodePersistent=${decodePersistent}` });
          }
        } finally {
          await gpu.dispose();
        }
      }
      await cpu.dispose();
      // D 64, E 160: the batch step at 12 rows splits in_proj's and out_proj's K into parts summed by the next kernel
      const wide = makeConfig({ vocabSize: 30, hiddenSize: 64, intermediateSize: 160, stateSize: 8, timeStepRank: 20,
        numLayers: 2, useBias: true, useConvBias: true });
      const m = quantizedModel(wide, 33, type);
      const [g, c] = [await modelFromTensors(wide, m.q, { backend: await createWebGpuBackend() }),
        await modelFromTensors(wide, m.f, { backend: new CpuBackend() })];
      try {
        await decodeStepsMatchCpu(g, c, 12, { steps: 2, rng: new TestRng(90), tol: 1e-4, ssmTol: 1e-4, what: `${type} K-split batch step` });
      } finally {
        await g.dispose();
        await c.dispose();
      }
    }
  });

test("webgpu: the GGUF fixtures tiny-q8_0/q4_0 keep their blocks, give the expected logits, and generate the CPU's greedy ids (prefill, fused step both ways, batch of 10)",
  { timeout: 900_000 }, async (t) => {
    if (!(await gpuTest(t))) return;
    const { createWebGpuBackend } = await import("../../src/backend/webgpu/index.ts");
    for (const type of ["q8_0", "q4_0"]) {
      const file = fixture("gguf", `tiny-${type}.gguf`);
      const exp = await readSafetensorsAny(fixture("gguf", `tiny-${type}.expected.safetensors`));
      const ids = exp.get("input_ids")!;
      const [batch, seqLen] = ids.shape as [number, number];
      const cpu = await loadModel(file, { backend: new CpuBackend() });
      const prompts = Array.from({ length: 10 }, (_, i) => Int32Array.from({ length: 3 + (i % 3) }, (_, j) => (i * 7 + j * 11 + 1) % 96));
      const o = { maxNewTokens: 6, temperature: 0, stopTokens: [] };
      const want = (await cpu.generate(prompts, o)).map((g) => Array.from(g));
      const wantOne = Array.from(await cpu.generate(prompts[0]!, o));
      for (const decodePersistent of [true, false]) {
        const gpu = await loadModel(file, { backend: await createWebGpuBackend({ decodePersistent }) });
        try {
          assert.equal(storageOf(gpu.lm.weights.layers[0]!.mixer.inProj), type, `${type}: in_proj stays in blocks`);
          assert.equal(storageOf(gpu.lm.weights.embeddings), type, `${type}: the embedding stays in blocks`);
          const out = await gpu.forward(ids.i32, { batch, seqLen });
          assertClose(out.logits, exp.get("logits")!.f32, 1e-4, `${type} logits (prefill) decodePersistent=${decodePersistent}`);
          assert.deepEqual(Array.from(await gpu.generate(prompts[0]!, o)), wantOne, `${type} greedy ids, batch 1, decodePersistent=${decodePersistent}`);
          assert.deepEqual((await gpu.generate(prompts, o)).map((g) => Array.from(g)), want, `${type} greedy ids, batch 10, decodePersistent=${decodePersistent}`);
        } finally {
          await gpu.dispose();
        }
      }
      await cpu.dispose();
    }
  });
