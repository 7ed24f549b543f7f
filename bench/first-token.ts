/**
 * Where generate()'s first token goes, 130m with random weights, prompts of 128 tokens at batch 1 and 64: the
 * host's time to encode the prefill (everything encoded before a submit), the prefill's GPU time and per-kernel
 * profile, and the wall time of generate with one new token.
 *
 *   node --import tsx bench/first-token.ts       # V=<vocabulary> (50280) shrinks the head, e.g. for lavapipe
 */
import { createWebGpuBackend, type WebGpuBackend } from "../src/backend/webgpu/index.ts";
import { makeConfig, initParameters } from "../src/model/init.ts";
import { MambaCache } from "../src/model/cache.ts";
import { benchPrompts, benchSizes, randomModel } from "./data.ts";
import { warmUpGpu, printProfile } from "./timing.ts";
const sizes = benchSizes(false)["130m"];
const cfg = makeConfig({ ...sizes, vocabSize: Number(process.env.V ?? sizes.vocabSize) });
const params = initParameters(cfg, { seed: 0 });
const b = (await createWebGpuBackend({ flushEvery: 100000 })) as WebGpuBackend;
const m = await randomModel(cfg, params, b);
const L = 128;
for (const B of [1, 64]) {
  const prompts = benchPrompts(B, L, 1000);
  await m.generate(prompts, { maxNewTokens: 2, stopTokens: [] });
  const pass = () => {
    const cache = MambaCache.zeros(b, cfg, B);
    const ids = b.fromI32(Int32Array.from({ length: B * L }, (_, i) => i * 7 % 1000), [B * L]);
    const h = m.lm.hidden(ids, { batch: B, seqLen: L }, cache);
    const last = b.takeRows(h, Array.from({ length: B }, (_, r) => r * L + L - 1));
    const lg = m.lm.logits(last);
    b.dispose(ids, h, last, lg); cache.dispose();
  };
  pass(); await b.sync();
  await warmUpGpu(b, 300);
  const enc: number[] = [];
  for (let i = 0; i < 5; i++) { await b.sync(); const d0 = b.gpu.dispatches; const t0 = performance.now(); pass(); enc.push(performance.now() - t0); if (i === 0) console.log(`B ${B}: ${b.gpu.dispatches - d0} dispatches a prefill`); }
  await b.sync();
  console.log(`B ${B}: prefill encode ${enc.map((x) => x.toFixed(2)).join(", ")} ms`);
  const g: number[] = [];
  for (let i = 0; i < 3; i++) g.push((await b.timeGpu(pass)) ?? NaN);
  console.log(`B ${B}: prefill GPU time ${g.map((x) => x.toFixed(2)).join(", ")} ms`);
  printProfile(await b.profileKernels(pass));
  const w: number[] = [];
  for (let i = 0; i < 5; i++) { await b.sync(); const t0 = performance.now(); await m.generate(prompts, { maxNewTokens: 1, stopTokens: [] }); w.push(performance.now() - t0); }
  console.log(`B ${B}: generate 1 token wall ${w.map((x) => x.toFixed(2)).join(", ")} ms`);
}
await b.destroy();
