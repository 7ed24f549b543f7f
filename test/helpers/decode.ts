/**
 * Decode steps on a GPU model's fused step against the CPU's step mode, for the WebGPU decode tests.
 */
import assert from "node:assert/strict";
import type { MambaModel } from "../../src/index.ts";
import { MambaCache } from "../../src/model/cache.ts";
import { assertClose } from "./fixtures.ts";
import type { TestRng } from "./random.ts";

/**
 * `steps` decode steps of batch B from zero caches: the GPU model's decodeStep (which must take them) against the
 * CPU's step mode, logits within `tol`, each layer's SSM state within `ssmTol` and conv state within `convTol`
 * where given.
 */
export async function decodeStepsMatchCpu(gpu: MambaModel, cpu: MambaModel, B: number,
  o: { steps: number; rng: TestRng; tol: number; ssmTol?: number; convTol?: number; what: string }): Promise<void> {
  const c = gpu.lm.config, gb = gpu.backend, cb = cpu.backend;
  const caches = [MambaCache.zeros(gb, c, B), MambaCache.zeros(cb, c, B)];
  try {
    for (let step = 0; step < o.steps; step++) {
      const ids = o.rng.ids(B, c.vocabSize);
      const it = gb.fromI32(ids, [B]);
      const fused = gb.decodeStep!(gpu.lm, it, caches[0]!.conv, caches[0]!.ssm);
      assert.ok(fused, `${o.what}: the fused step takes this model`);
      const want = await cb.readF32(cpu.lm.logits(cpu.lm.hidden(cb.fromI32(ids, [B]), { batch: B, seqLen: 1 }, caches[1]!)));
      const what = `${o.what} B=${B} step ${step}`;
      assertClose(await gb.readF32(fused), want, o.tol, `${what} logits`);
      for (let i = 0; i < c.numLayers; i++) {
        if (o.ssmTol !== undefined) assertClose(await gb.readF32(caches[0]!.ssm[i]!), await cb.readF32(caches[1]!.ssm[i]!), o.ssmTol, `${what} ssm ${i}`);
        if (o.convTol !== undefined) assertClose(await gb.readF32(caches[0]!.conv[i]!), await cb.readF32(caches[1]!.conv[i]!), o.convTol, `${what} conv ${i}`);
      }
      gb.dispose(it, fused);
    }
  } finally {
    caches.forEach((k) => k.dispose());
  }
}
