/**
 * Mamba-2's batch decode, the norm before each layer's in_proj (and norm_f after the last layer), one workgroup a
 * row, as Mamba-1's (./batch-norm.ts) with the last layer's gated-norm scale folded in:
 *   v = r · Σ_s part[s] (+ bias) (+ the residual), written as the new residual; out = v / sqrt(mean(v²) + eps) · g
 * part holds the previous out_proj's K-split partial products of the unscaled gated output; with one group of the
 * gated norm its scale r = 1 / sqrt(Σ ss / E + eps) (ss: the SSD step's sums of squares of this row, NWG of them)
 * is a factor of every part, so the scale costs no dispatch of its own. Unscaled (the embedding, or a model whose
 * scale was applied before out_proj) r is 1.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";

export interface M2BatchNormShape { S: number; D: number; NWG: number }

const partsOf = (s: M2BatchNormShape): WgslParts => ({
  // parts; the row; its values a thread; the sums of squares a row (0: unscaled)
  consts: [["S", `${s.S}u`], ["D", `${s.D}u`], ["KD", `${Math.ceil(s.D / 256)}u`], ["NWG", `${s.NWG}u`]],
  params: [["B", "u32"], ["hasBias", "u32"], ["hasRes", "u32"], ["par", "u32"], ["oG", "u32"], ["eps", "f32"], ["GS", "u32"], ["gEps", "f32"]],
  bindings: [
    ["part", "var<storage, read> part: array<f32>"], // [S, B, D]
    ...(s.NWG > 0 ? [["ss", "var<storage, read> ss: array<f32>"] as [string, string]] : []), // [B, NWG]
    ["bias", "var<storage, read> bias: array<f32>"],
    ["res", "var<storage, read_write> res: array<f32>"], // [2, B, D]
    ["g", "var<storage, read> g: array<f32>"],
    ["out", "var<storage, read_write> out: array<f32>"], // [B, D]
  ],
  decls: "var<workgroup> red: array<f32, 256>;",
  fn: /* wgsl */ `
fn m2BatchNorm(t: u32, row: u32) {
  let BD = p.B * D;
  let o = row * D;
  let dst = (1u - p.par) * BD + o;
  // every load first, at clamped indices (the excess unused), so that all are in flight together
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
${s.NWG > 0 ? `  // the gated norm's scale of this row
  var q = 0.0;
  for (var i = t; i < NWG; i += 256u) { q += ss[row * NWG + i]; }
  red[t] = q;
  workgroupBarrier();
  for (var st = 128u; st > 0u; st >>= 1u) {
    if (t < st) { red[t] += red[t + st]; }
    workgroupBarrier();
  }
  let r = inverseSqrt(red[0] / f32(p.GS) + p.gEps);
  workgroupBarrier(); // red is reused below
` : "  let r = 1.0;\n"}  var v: array<f32, KD>;
  var sq = 0.0;
  for (var k = 0u; k < KD; k++) {
    var x = 0.0;
    for (var s = 0u; s < S; s++) { x += pv[k][s]; }
    x = fma(r, x, select(0.0, bv[k], p.hasBias != 0u) + select(0.0, rv[k], p.hasRes != 0u));
    v[k] = x;
    let d = t + k * 256u;
    if (d < D) {
      res[dst + d] = x;
      sq = fma(x, x, sq);
    }
  }
  red[t] = sq;
  workgroupBarrier();
  for (var st = 128u; st > 0u; st >>= 1u) {
    if (t < st) { red[t] += red[t + st]; }
    workgroupBarrier();
  }
  let inv = inverseSqrt(red[0] / f32(D) + p.eps);
  for (var k = 0u; k < KD; k++) {
    let d = t + k * 256u;
    if (d < D) { out[o + d] = v[k] * inv * gv[k]; }
  }
}`,
});

const partsByShape = new Map<string, WgslParts>();
function parts(s: M2BatchNormShape): WgslParts {
  const key = JSON.stringify(s);
  let made = partsByShape.get(key);
  if (!made) partsByShape.set(key, made = partsOf(s));
  return made;
}

const kernel = defineKernel({
  name: "decode_m2_batchnorm",
  wgsl: (s: M2BatchNormShape) => standaloneWgsl(parts(s), "256", "m2BatchNorm(lid.x, wg.x)"),
  label: (s) => `decode_m2_batchnorm_${s.S}_${s.D}_${s.NWG}`,
  example: { S: 8, D: 768, NWG: 192 },
});

export interface M2BatchNormArgs {
  B: number; D: number; eps: number;
  part: Buf; S: number; bias: Buf | null;
  res: Buf; hasRes: boolean; par: number;
  g: Buf; oG: number;
  out: Buf;
  // the parts' gated-norm scale: the SSD step's sums of squares [B, NWG] over GS channels (one group); null: none
  scale: { ss: Buf; NWG: number; GS: number; eps: number } | null;
}

// part: [S, B, D], bias: [D], res: [2, B, D] (half par in, half 1 - par out), g: [D] from word oG -> out: [B, D]
export function decodeM2BatchNorm(gpu: Gpu, a: M2BatchNormArgs): void {
  const shape: M2BatchNormShape = { S: a.S, D: a.D, NWG: a.scale?.NWG ?? 0 };
  const k = gpu.kernel(kernel, shape);
  const kp = parts(shape);
  const p = paramBlock(kp.params, {
    B: a.B, hasBias: !!a.bias, hasRes: a.hasRes, par: a.par, oG: a.oG, eps: a.eps, GS: a.scale?.GS ?? 1, gEps: a.scale?.eps ?? 0,
  });
  const bufs: Record<string, Buf> = { part: a.part, bias: a.bias ?? gpu.dummy, res: a.res, g: a.g, out: a.out };
  if (a.scale) bufs.ss = a.scale.ss;
  gpu.dispatch(k, bindingsByName(kp, bufs), p, [a.B]);
}
