/**
 * generate()'s wall time by WebGpuInternalTuning.flushEvery (ops encoded before pending work is submitted), 130m with
 * random weights, batch 1 and 64, prompt 128: the first token alone (mostly the prefill, whose few hundred
 * dispatches the GPU waits for until they are all encoded and submitted) and 256 new tokens, in alternating rounds
 * in one process; medians.
 *
 *   node --import tsx bench/ab-flush.ts        # FLUSH=512,64,32,16 the values, ROUNDS (5); SMOKE=1 tiny shapes
 */
import type { MambaModel } from "../src/index.ts";
import { createWebGpuBackend, type WebGpuBackend } from "../src/backend/webgpu/index.ts";
import { makeConfig, initParameters } from "../src/model/init.ts";
import { benchPrompts, benchSizes, randomModel } from "./data.ts";
import { median, warmUpGpu } from "./timing.ts";
const smoke = process.env.SMOKE === "1";
const cfg = makeConfig(benchSizes(smoke)["130m"]);
const params = initParameters(cfg, { seed: 0 });
const flushes = (process.env.FLUSH ?? "512,64,32,16").split(",").map(Number);
const models: [number, MambaModel, WebGpuBackend][] = [];
for (const f of flushes) {
  const b = (await createWebGpuBackend({ flushEvery: f })) as WebGpuBackend;
  models.push([f, await randomModel(cfg, params, b), b]);
}
const NEW = smoke ? 8 : 256;
const prompts = (B: number) => benchPrompts(B, 128, 1000);
const res = new Map<string, number[]>();
const add = (k: string, v: number) => { res.set(k, [...(res.get(k) ?? []), v]); };
for (const [, m] of models) { await m.generate(prompts(2), { maxNewTokens: 4, stopTokens: [] }); await m.generate(prompts(64), { maxNewTokens: 2, stopTokens: [] }); }
for (let round = 0; round < (smoke ? 1 : Number(process.env.ROUNDS ?? 5)); round++) {
  for (const [f, m, b] of models) {
    if (!smoke) await warmUpGpu(b, 300);
    for (const B of [1, 64]) {
      const time = async (n: number) => { await b.sync(); const t0 = performance.now(); await m.generate(prompts(B), { maxNewTokens: n, stopTokens: [] }); return performance.now() - t0; };
      const firsts: number[] = [];
      for (let i = 0; i < 5; i++) firsts.push(await time(1));
      add(`${f} b${B} first`, median(firsts));
      add(`${f} b${B} full`, await time(NEW));
    }
  }
}
for (const [k, v] of res) {
  const B = Number(/b(\d+)/.exec(k)![1]);
  const extra = k.endsWith("full") ? ` = ${((B * NEW) / (median(v) / 1000)).toFixed(0)} tok/s` : "";
  console.log(`flushEvery ${k}: median ${median(v).toFixed(2)} ms (${v.map((x) => x.toFixed(1)).join(", ")})${extra}`);
}
for (const [, , b] of models) await b.destroy();
