/** Inputs for the benchmarks. */
import { modelFromTensors, type MambaModel } from "../src/index.ts";
import type { Backend } from "../src/backend/backend.ts";
import type { MambaConfig } from "../src/config.ts";
import type { HostTensor } from "../src/io/tensor.ts";

/** A Float32Array of n values cycling through a seeded random block (fast for hundreds of millions). */
export function filled(n: number, lo: number, hi: number, seed: number): Float32Array {
  const block = new Float32Array(Math.min(n, 1 << 20));
  let s = seed >>> 0;
  for (let i = 0; i < block.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    block[i] = lo + ((hi - lo) * s) / 4294967296;
  }
  const out = new Float32Array(n);
  for (let o = 0; o < n; o += block.length) out.set(block.subarray(0, Math.min(block.length, n - o)), o);
  return out;
}

/** The model shapes the benchmarks build with random weights (smoke: tiny ones, to check a bench on a slow adapter). */
export function benchSizes(smoke: boolean) {
  return smoke ? {
    "130m": { vocabSize: 1000, hiddenSize: 64, numLayers: 2 },
    "1.4b": { vocabSize: 1000, hiddenSize: 128, numLayers: 2 },
  } : {
    "130m": { vocabSize: 50280, hiddenSize: 768, numLayers: 24 },
    "1.4b": { vocabSize: 50280, hiddenSize: 2048, numLayers: 48 },
  };
}

/** A greedy sampling request for B rows of V logits. */
export const greedyRequest = (V: number, B: number) =>
  ({ vocabSize: V, temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, history: null, uniforms: new Float32Array(B) });

/** Decode prompts: B rows of L token ids below `mod`, no two rows alike. */
export const benchPrompts = (B: number, L: number, mod: number): Int32Array[] =>
  Array.from({ length: B }, (_, r) => Int32Array.from({ length: L }, (_, i) => (i * 7919 + r * 104729) % mod));

/** A model of f32 parameters (initParameters' random ones) on `backend`. */
export function randomModel(cfg: MambaConfig, params: Map<string, HostTensor>, backend: Backend): Promise<MambaModel> {
  return modelFromTensors(cfg, params, { backend }, { source: "createModel", folder: "", dtype: "F32" });
}
