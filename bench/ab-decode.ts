/**
 * The decode step's GPU time of this tree against another checkout's, in one process (separate processes on one
 * machine moved the same step's time by up to 40%): each model built once per tree from the same parameters, then
 * timed in alternating rounds of 50 steps (greedy sampling included), each round after 300 ms of warm-up; medians.
 *
 *   git worktree add /tmp/old <rev> && ln -s "$PWD/node_modules" /tmp/old/node_modules
 *   node --import tsx bench/ab-decode.ts /tmp/old/src
 *
 * AB_MODELS=130m,1.4b picks models, AB_BATCHES=1,64 batches, AB_ROUNDS (7) and AB_STEPS (50) the rounds; AB_SMOKE=1
 * shrinks the models and skips the warm-up, to check the script on a slow adapter.
 */
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { makeConfig, initParameters } from "../src/model/init.ts";
import { benchSizes, greedyRequest } from "./data.ts";
import { alternatingRounds } from "./timing.ts";

const other = process.argv[2];
if (!other) {
  console.error("usage: node --import tsx bench/ab-decode.ts <other checkout's src folder>");
  process.exit(2);
}
const smoke = process.env.AB_SMOKE === "1";
const SIZES = benchSizes(smoke);
const rounds = Number(process.env.AB_ROUNDS ?? 7), steps = Number(process.env.AB_STEPS ?? 50);
const roots = [["this tree", new URL("../src/", import.meta.url).href], [other, pathToFileURL(resolve(other) + "/").href]] as const;

for (const name of (process.env.AB_MODELS ?? "130m,1.4b").split(",") as (keyof typeof SIZES)[]) {
  const cfg = makeConfig(SIZES[name]);
  const params = initParameters(cfg, { seed: 0 });
  const trees = [];
  for (const [tag, root] of roots) {
    const { modelFromTensors } = await import(`${root}index.ts`);
    const { createWebGpuBackend } = await import(`${root}backend/webgpu/index.ts`);
    const { MambaCache } = await import(`${root}model/cache.ts`);
    const m = await modelFromTensors(cfg, params, { backend: await createWebGpuBackend({}) }, { source: "createModel", folder: "", dtype: "F32" });
    trees.push({ tag, m, MambaCache });
  }
  for (const B of (process.env.AB_BATCHES ?? "1").split(",").map(Number)) {
    const step = trees.map(({ m, MambaCache }) => {
      const b = m.backend;
      const cache = MambaCache.zeros(b, m.lm.config, B);
      const ids = b.fromI32(new Int32Array(B).fill(7), [B]);
      return () => {
        const lg = b.decodeStep(m.lm, ids, cache.conv, cache.ssm);
        if (!lg) throw new Error(`${name} batch ${B}: no fused decode step`);
        b.dispose(b.sample(lg, greedyRequest(cfg.vocabSize, B)), lg);
      };
    });
    const times = await alternatingRounds(trees.map(({ m }, i) => ({ b: m.backend, step: step[i]! })), rounds, steps, smoke ? 0 : 300);
    for (const [i, { tag }] of trees.entries()) {
      const [t, lo, hi] = [times[i]!.median * 1000, times[i]!.min * 1000, times[i]!.max * 1000];
      console.log(`decode step ${name} batch ${B}, ${tag}: ${t.toFixed(1)} us (${lo.toFixed(1)} – ${hi.toFixed(1)}), ` +
        `${((B * 1e6) / t).toFixed(0)} tok/s of GPU time`);
    }
  }
  for (const { m } of trees) await m.dispose();
}
