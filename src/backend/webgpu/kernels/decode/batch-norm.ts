/**
 * Batch decode, the norm before each layer's in_proj (and norm_f after the last layer), one workgroup per row:
 * v = Σ_s part[s] (+ bias) (+ the residual), written as the new residual; out = v / sqrt(mean(v²) + eps) · g.
 * part holds the previous out_proj's K-split partial products (or the embedding, one part), so their sum, the
 * bias and the residual add cost no dispatch of their own. The residual lives in one [2, B, D] buffer: read from
 * half `par`, written to half 1 - par.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";

// part [S, B, D] | bias [D] | res [2, B, D] | g (gain from word oG) | out [B, D]; grid: (B)
const partsOf = (S: number, D: number): WgslParts => ({
  consts: [["S", `${S}u`], ["D", `${D}u`], ["KD", `${Math.ceil(D / 256)}u`]], // parts; the row; its values a thread
  params: [["B", "u32"], ["hasBias", "u32"], ["hasRes", "u32"], ["par", "u32"], ["oG", "u32"], ["eps", "f32"]],
  bindings: [
    ["part", "var<storage, read> part: array<f32>"],
    ["bias", "var<storage, read> bias: array<f32>"],
    ["res", "var<storage, read_write> res: array<f32>"],
    ["g", "var<storage, read> g: array<f32>"],
    ["out", "var<storage, read_write> out: array<f32>"],
  ],
  decls: "var<workgroup> red: array<f32, 256>;",
  fn: /* wgsl */ `
fn batchNorm(lid: vec3<u32>, wg: vec3<u32>) {
  let t = lid.x;
  let BD = p.B * D;
  let o = wg.x * D;
  let dst = (1u - p.par) * BD + o;
  // every load first, at clamped indices (the excess unused), so that all are in flight together: behind a bounds
  // check each would wait for the one before
  var pv: array<array<f32, S>, KD>;
  var rv: array<f32, KD>;
  var bv: array<f32, KD>;
  var gv: array<f32, KD>;
  for (var k = 0u; k < KD; k++) {
    let d = min(t + k * 256u, D - 1u);
    for (var s = 0u; s < S; s++) { pv[k][s] = part[s * BD + o + d]; }
    rv[k] = res[p.par * BD + o + d];
    bv[k] = bias[min(d, arrayLength(&bias) - 1u)]; // a placeholder of a few words where there is no bias
    gv[k] = g[p.oG + d];
  }
  var v: array<f32, KD>;
  var ss = 0.0;
  for (var k = 0u; k < KD; k++) {
    var x = select(0.0, bv[k], p.hasBias != 0u) + select(0.0, rv[k], p.hasRes != 0u);
    for (var s = 0u; s < S; s++) { x += pv[k][s]; }
    v[k] = x;
    let d = t + k * 256u;
    if (d < D) {
      res[dst + d] = x;
      ss = fma(x, x, ss);
    }
  }
  red[t] = ss;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (t < s) { red[t] += red[t + s]; }
    workgroupBarrier();
  }
  let inv = inverseSqrt(red[0] / f32(D) + p.eps);
  for (var k = 0u; k < KD; k++) {
    let d = t + k * 256u;
    if (d < D) { out[o + d] = v[k] * inv * gv[k]; }
  }
}`,
});
/** The kernel's parts by (S, D), made once each. */
const partsByShape = new Map<string, WgslParts>();
function parts(S: number, D: number): WgslParts {
  const key = `${S},${D}`;
  let made = partsByShape.get(key);
  if (!made) partsByShape.set(key, made = partsOf(S, D));
  return made;
}

export interface BatchNormArgs {
  B: number; D: number; eps: number;
  part: Buf; S: number; bias: Buf | null;
  res: Buf; hasRes: boolean; par: number;
  g: Buf; oG: number;
  out: Buf;
}

/** S parts of the last out_proj, D columns. */
const batchNormKernel = defineKernel({
  name: "decode_batchnorm", wgsl: (s: { S: number; D: number }) => standaloneWgsl(parts(s.S, s.D), "256", "batchNorm(lid, wg)"),
  label: (s) => `decode_batchnorm_${s.S}_${s.D}`, example: { S: 16, D: 768 },
});

// part: [S, B, D], bias: [D], res: [2, B, D] (half par in, half 1 - par out), g: [D] from word oG -> out: [B, D]
export function decodeBatchNorm(gpu: Gpu, a: BatchNormArgs): void {
  const k = gpu.kernel(batchNormKernel, { S: a.S, D: a.D });
  const kp = parts(a.S, a.D);
  const p = paramBlock(kp.params, { B: a.B, hasBias: !!a.bias, hasRes: a.hasRes, par: a.par, oG: a.oG, eps: a.eps });
  gpu.dispatch(k, bindingsByName(kp, { part: a.part, bias: a.bias ?? gpu.dummy, res: a.res, g: a.g, out: a.out }), p, [a.B]);
}
