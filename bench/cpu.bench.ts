/**
 * CPU backend speed on the 130m shape (d_model 768, 24 layers, vocab 50280; random weights built in memory):
 * decode tokens/s (batch 1, a short prompt then greedy steps) and forward tokens/s (one parallel pass).
 * BENCH_DECODE_TOKENS / BENCH_FORWARD_LEN shrink or grow the runs.
 */
import os from "node:os";
import { createModel } from "../src/index.ts";
import { MambaCache } from "../src/model/cache.ts";
import { anchor } from "./anchors.ts";

export default async function run(): Promise<void> {
  const steps = Number(process.env.BENCH_DECODE_TOKENS ?? 32);
  const fwdLen = Number(process.env.BENCH_FORWARD_LEN ?? 256);
  const t0 = performance.now();
  const model = await createModel({ vocabSize: 50280, hiddenSize: 768, numLayers: 24 }, { backend: "cpu", seed: 0 });
  const lm = model.lm;
  const b = lm.backend;
  const cpus = os.cpus();
  console.log(`model: 130m shape (D 768, E 1536, N 16, 24 layers, V 50280), fp32, random weights; built in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  console.log(`device: CPU backend, ${cpus.length} x ${cpus[0]?.model ?? "cpu"}, one thread, Node ${process.version}`);

  // decode: the recurrent step with a cache (embedding, 24 layers, head, greedy sampling, id readback)
  const cache = MambaCache.zeros(b, lm.config, 1);
  let ids = b.fromI32(Int32Array.of(1), [1]);
  const req = { vocabSize: 50280, temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, history: null, uniforms: new Float32Array(1) };
  const step = async () => {
    const h = lm.hidden(ids, { batch: 1, seqLen: 1 }, cache);
    const logits = lm.logits(h);
    const next = b.sample(logits, req);
    await b.readI32(next);
    ids = next;
  };
  for (let i = 0; i < 2; i++) await step(); // warm-up (JIT)
  let t = performance.now();
  for (let i = 0; i < steps; i++) await step();
  const decodeTps = steps / ((performance.now() - t) / 1000);
  const official = anchor.decode("130m", "float32", 1);
  console.log(`decode   batch 1, ${steps} steps: ${decodeTps.toFixed(2)} tok/s` +
    (official ? `   (official CUDA on H100: ${official} tok/s; ratio ${(decodeTps / official).toFixed(4)}x)` : ""));

  // forward: one parallel pass over a sequence, logits for every position
  const seq = new Int32Array(fwdLen).map((_, i) => (i * 7919) % 50280);
  await model.forward(seq.subarray(0, 16), { batch: 1, seqLen: 16 }); // warm-up
  t = performance.now();
  await model.forward(seq, { batch: 1, seqLen: fwdLen });
  const fwdS = (performance.now() - t) / 1000;
  console.log(`forward  batch 1 x ${fwdLen} tokens: ${(fwdLen / fwdS).toFixed(1)} tok/s (${(fwdS * 1000).toFixed(0)} ms)`);
  await model.dispose();
}
