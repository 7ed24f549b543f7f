/** Gradients against finite differences: the loss in float64 from logits, and central differences of it. */
import assert from "node:assert/strict";
import type { HostTensor } from "../../src/io/tensor.ts";
import type { TestRng } from "./random.ts";

/** Mean next-token cross-entropy (positions 0..L-2) in float64 from logits [B·L, V]. */
export function ceLoss(logits: Float32Array, ids: Int32Array, B: number, L: number, V: number): number {
  let s = 0;
  for (let b = 0; b < B; b++) for (let t = 0; t + 1 < L; t++) {
    const row = Array.from(logits.subarray((b * L + t) * V, (b * L + t + 1) * V));
    const mx = Math.max(...row);
    s += Math.log(row.reduce((a, v) => a + Math.exp(v - mx), 0)) + mx - row[ids[b * L + t + 1]!]!;
  }
  return s / (B * (L - 1));
}

/**
 * For `samples` random elements of every parameter (drawn from rng, in the order of params), the central
 * difference (lossOf(p + h) − lossOf(p − h)) / 2h with h = 1e-2 against the analytic gradient, within
 * 2e-3 + 2e-2·|numerical|. The parameters are changed in place and put back.
 */
export async function checkFiniteDifferences(
  params: Map<string, HostTensor>,
  gradient: (name: string) => Float32Array | Promise<Float32Array>,
  lossOf: (params: Map<string, HostTensor>) => Promise<number>,
  rng: TestRng,
  samples: number,
): Promise<void> {
  const h = 1e-2;
  for (const [name, t] of params) {
    const g = await gradient(name);
    for (let k = 0; k < samples; k++) {
      const i = Math.floor(rng.next() * g.length);
      const d = t.data as Float32Array;
      const v = d[i]!;
      d[i] = v + h;
      const lossPlus = await lossOf(params);
      d[i] = v - h;
      const lossMinus = await lossOf(params);
      d[i] = v;
      const num = (lossPlus - lossMinus) / (2 * h);
      assert.ok(Math.abs(num - g[i]!) <= 2e-3 + 2e-2 * Math.abs(num), `${name}[${i}]: analytic ${g[i]} vs numerical ${num}`);
    }
  }
}
