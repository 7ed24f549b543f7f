/**
 * References for the half-precision products: values rounded as the kernels round them, and y = x · wᵀ + bias
 * in f64 over the rounded values with a bound that tells f32 sums of f16 inputs from unrounded ones.
 */
import assert from "node:assert/strict";
import { f16ToF32, toBF16Bits, toF16Bits, toFloat32 } from "../../src/io/tensor.ts";
import type { TestRng } from "./random.ts";
import type { Backend } from "../../src/backend/backend.ts";
import { expected, fixture, maxAbsDiff } from "./fixtures.ts";

export const rand = (rng: TestRng, n: number) => Float32Array.from({ length: n }, () => 2 * rng.next() - 1);
/** values rounded to f16 (round to nearest even), as f32 */
export const roundF16 = (v: Float32Array) => Float32Array.from(toF16Bits(v), f16ToF32);
/** values rounded to bf16 and back */
export const roundBF16 = (v: Float32Array) => toFloat32({ dtype: "BF16", shape: [v.length], data: toBF16Bits(v) });

/** A product's sizes: x is a window of K columns from column `off` of rows `ld` wide. */
export interface ProductShape { T: number; K: number; N: number; off: number; ld: number }

/**
 * y = x · wᵀ + bias in f64 over the given (already rounded) values, and per output the scale Σ|x·w| + |bias|. The
 * f32 sums err by a few ulps of that scale (measured on lavapipe: at most 2.9e-7 of it over the f16 kernel's
 * cases, whatever the order of the sums); an operand left unrounded would err by about 2^-12 / √K of it (3.7e-5 at
 * K = 44), so PRODUCT_BOUND = 2^-18 (3.8e-6) tells the two apart with room on both sides.
 */
export function productReference(x: Float32Array, w: Float32Array, bias: Float32Array | null, s: ProductShape): { y: Float64Array; scale: Float64Array } {
  const y = new Float64Array(s.T * s.N), scale = new Float64Array(s.T * s.N);
  for (let t = 0; t < s.T; t++) {
    for (let n = 0; n < s.N; n++) {
      let acc = bias ? bias[n]! : 0, abs = bias ? Math.abs(bias[n]!) : 0;
      for (let k = 0; k < s.K; k++) {
        const p = x[t * s.ld + s.off + k]! * w[n * s.K + k]!;
        acc += p;
        abs += Math.abs(p);
      }
      y[t * s.N + n] = acc;
      scale[t * s.N + n] = abs;
    }
  }
  return { y, scale };
}

export const PRODUCT_BOUND = 2 ** -18;

/** Every output within PRODUCT_BOUND of its scale from the reference. */
export function assertProductNear(got: Float32Array, want: { y: Float64Array; scale: Float64Array }, what: string): void {
  assert.equal(got.length, want.y.length, `${what}: lengths differ`);
  let worst = 0;
  for (let i = 0; i < got.length; i++) {
    const err = Math.abs(got[i]! - want.y[i]!) / Math.max(want.scale[i]!, 1e-30);
    if (!(err <= worst)) worst = Number.isNaN(err) ? Infinity : err;
  }
  assert.ok(worst <= PRODUCT_BOUND, `${what}: error ${worst.toExponential(3)} of Σ|x·w| > 2^-18`);
}

/**
 * Whole models with precision f16 against the fp32 PyTorch logits, as max |difference| / max |logit|, by
 * fixture. Each product rounds its inputs to f16 (relative error up to 2^-11, about 4.9e-4, each) and the
 * projections' and head's weights are stored in f16; a product's rounding errors add up over its K terms like a random walk, and pass
 * through the scan and the next layers. Measured on lavapipe (2 layers, d_model 32, max |logit| about 2 - 4):
 * Mamba-1 fixtures 1.7e-4 - 2.7e-4 (max abs 6.3e-4 - 9.7e-4), Falcon-Mamba 3.2e-4, Mamba-2 1.55e-3 (its in_proj
 * also makes dt, whose rounding the scan's exponentials amplify). The bounds are 3 - 4 times those: 1e-3 and
 * 5e-3. A wrong kernel (an operand misplaced, a tile edge dropped) makes differences of the logits' own size.
 */
export const FIXTURE_BOUNDS: Record<string, number> = {
  "hf-mamba/tiny": 1e-3, "hf-mamba/tiny-f16": 1e-3, "hf-mamba/tiny-bf16-sharded": 1e-3, "mamba-ssm/tiny": 1e-3,
  "hf-falcon-mamba/tiny": 1e-3, "hf-mamba2/tiny": 5e-3,
};

/** A fixture's forward with precision f16 on `backend` (a name, or a backend the model then owns) against its fp32
 *  PyTorch logits: the largest difference, the largest |logit|, and the bound of FIXTURE_BOUNDS. `inspect` runs
 *  after the forward, before the model and its backend are disposed. */
export async function fixtureF16Error(name: string, backend: "webgpu" | Backend, inspect: () => void = () => {}): Promise<{ maxAbs: number; scale: number; bound: number }> {
  const { loadModel } = await import("../../src/index.ts");
  const folder = fixture(...name.split("/"));
  const exp = await expected(folder);
  const model = await loadModel(folder, { backend, precision: "f16" });
  try {
    assert.equal(model.backend.precision, "f16");
    const ids = exp.get("input_ids")!;
    const [batch, seqLen] = ids.shape as [number, number];
    const out = await model.forward(ids.i32, { batch, seqLen });
    const want = exp.get("logits")!.f32;
    inspect();
    return { maxAbs: maxAbsDiff(out.logits, want), scale: want.reduce((m, v) => Math.max(m, Math.abs(v)), 0), bound: FIXTURE_BOUNDS[name]! };
  } finally {
    await model.dispose();
  }
}
