/**
 * What the CPU benchmarks share (cpu, cpu-quant, llama-cpp): the 130m shape, llama.cpp's stored figures
 * (bench/anchors/cpu-2core.json), and the timing of one generation: the time to the first token of a prompt
 * (prefill, head, greedy choice, id read back) and then `steps` greedy tokens, in wall and CPU seconds.
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { MambaModel } from "../src/index.ts";
import { prefill } from "../src/generate/generate.ts";

const here = path.dirname(fileURLToPath(import.meta.url));

/** The state-spaces/mamba-130m shape (random weights in the benchmarks). */
export const SHAPE = { vocabSize: 50280, hiddenSize: 768, numLayers: 24 };

export interface LlamaRow { weights: string; threads: number; prefill_tok_per_s?: number; decode_tok_per_s?: number; peak_rss_mb?: number }
export const anchors = JSON.parse(readFileSync(path.join(here, "anchors/cpu-2core.json"), "utf8")) as {
  llama_cpp: LlamaRow[];
  machine_limits: { wasm_simd_matvec_gb_per_s: { threads_1: number; threads_2: number } };
};
/** llama.cpp's stored figures for a weight type and thread count. */
export const llama = (weights: string, threads: number) =>
  anchors.llama_cpp.find((r) => r.weights === weights && r.threads === threads && r.prefill_tok_per_s !== undefined);

const greedy = { vocabSize: SHAPE.vocabSize, temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, history: null, uniforms: new Float32Array(1) };

/** CPU seconds this process (all its threads) spent since `from`. */
export function cpuSeconds(from: NodeJS.CpuUsage): number {
  const u = process.cpuUsage(from);
  return (u.user + u.system) / 1e6;
}

/** Time to the first token of `prompt`, then `steps` greedy tokens (seconds, wall and CPU). */
export async function timeGeneration(model: MambaModel, prompt: Int32Array, steps: number):
  Promise<{ ttft: number; decode: number; ttftCpu: number; decodeCpu: number }> {
  const lm = model.lm, b = lm.backend;
  let c = process.cpuUsage();
  let t = performance.now();
  const { cache, logits } = await prefill(lm, prompt);
  let ids = b.sample(logits, greedy);
  await b.readI32(ids);
  b.dispose(logits);
  const ttft = (performance.now() - t) / 1000;
  const ttftCpu = cpuSeconds(c);
  c = process.cpuUsage();
  t = performance.now();
  for (let i = 0; i < steps; i++) {
    const h = lm.hidden(ids, { batch: 1, seqLen: 1 }, cache);
    const lg = lm.logits(h);
    const next = b.sample(lg, greedy);
    await b.readI32(next);
    b.dispose(h, lg, ids);
    ids = next;
  }
  const decode = (performance.now() - t) / 1000;
  const decodeCpu = cpuSeconds(c);
  b.dispose(ids);
  cache.dispose();
  return { ttft, decode, ttftCpu, decodeCpu };
}
