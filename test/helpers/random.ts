/**
 * Test-side randomness, independent of the project's own generator: a mulberry32 stream for data and shapes, and
 * model parameters moved off their initialization defaults (random biases, norm weights, D, A_log, dt bias), so
 * that no term of the model can be silently skipped without a test noticing.
 */
import type { MambaConfig } from "../../src/config.ts";
import { initParameters } from "../../src/model/init.ts";
import type { HostTensor } from "../../src/io/tensor.ts";

export class TestRng {
  private a: number;
  constructor(seed: number) {
    this.a = seed >>> 0;
  }
  /** uniform in [0, 1) */
  next(): number {
    let t = (this.a = (this.a + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** uniform in [lo, hi) */
  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }
  /** integer in [lo, hi] */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  normal(): number {
    const u = 1 - this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next());
  }
  f32(n: number, scale = 1): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = scale * this.normal();
    return a;
  }
  ids(n: number, vocab: number): Int32Array {
    const a = new Int32Array(n);
    for (let i = 0; i < n; i++) a[i] = this.int(0, vocab - 1);
    return a;
  }
}

/**
 * initParameters, then every tensor moved off its default: biases and D random, norm weights around 1, A_log and
 * the dt bias perturbed, weights jittered. Values stay in ranges where float32 math is well conditioned.
 */
export function perturbedParameters(cfg: MambaConfig, seed: number): Map<string, HostTensor> {
  const params = initParameters(cfg, { seed });
  const r = new TestRng(seed * 7919 + 17);
  for (const [name, t] of params) {
    const d = t.data as Float32Array;
    for (let i = 0; i < d.length; i++) {
      if (name.endsWith("norm.weight") || name.endsWith("norm_f.weight")) d[i] = r.uniform(0.6, 1.4);
      else if (name.endsWith("mixer.A_log")) d[i] = d[i]! + r.uniform(-0.5, 0.5);
      else if (name.endsWith("mixer.D")) d[i] = r.uniform(-1, 1.5);
      else if (name.endsWith("dt_proj.bias")) d[i] = d[i]! + r.uniform(-1, 1);
      else if (name.endsWith(".bias")) d[i] = r.uniform(-0.3, 0.3);
      else if (name.endsWith("embeddings.weight")) d[i] = r.normal() * 0.5;
      else d[i] = d[i]! * r.uniform(0.8, 1.2) + r.uniform(-0.02, 0.02);
    }
  }
  return params;
}
