/**
 * Batch decode, the norm before each layer's in_proj (and norm_f after the last layer), one workgroup per row:
 * v = Σ_s part[s] (+ bias) (+ the residual), written as the new residual; out = v / sqrt(mean(v²) + eps) · g.
 * part holds the previous out_proj's K-split partial products (or the embedding, one part), so their sum, the
 * bias and the residual add cost no dispatch of their own. The residual lives in one [2, B, D] buffer: read from
 * half `par`, written to half 1 - par.
 * Mamba-2 folds in its last layer's gated-norm scale (`scale`, NWG > 0): with one group of the gated norm its scale
 * r = 1 / sqrt(Σ ss / GS + eps) (ss: the SSD step's NWG sums of squares of this row) is a factor of every part, so
 * v = r · Σ_s part[s] (+ bias) (+ the residual) and the scale costs no dispatch of its own.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type ParamType, type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";
import { treeSumWgsl } from "../wgsl-common.ts";

/** S parts of the last out_proj, D columns; NWG > 0: the gated-norm scale's sums of squares a row (Mamba-2). */
export interface BatchNormShape { S: number; D: number; NWG?: number }

// part [S, B, D] | (ss [B, NWG]) | bias [D] | res [2, B, D] | g (gain from word oG) | out [B, D]; grid: (B)
const partsOf = ({ S, D, NWG = 0 }: BatchNormShape): WgslParts => ({
  consts: [["S", `${S}u`], ["D", `${D}u`], ["KD", `${Math.ceil(D / 256)}u`], // parts; the row; its values a thread
    ...(NWG > 0 ? [["NWG", `${NWG}u`] as [string, string]] : [])],
  params: [["B", "u32"], ["hasBias", "u32"], ["hasRes", "u32"], ["par", "u32"], ["oG", "u32"], ["eps", "f32"],
    ...(NWG > 0 ? [["GS", "u32"], ["gEps", "f32"]] as [string, ParamType][] : [])],
  bindings: [
    ["part", "var<storage, read> part: array<f32>"],
    ...(NWG > 0 ? [["ss", "var<storage, read> ss: array<f32>"] as [string, string]] : []),
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
${NWG > 0 ? `  // the gated norm's scale of this row
  var q = 0.0;
  for (var i = t; i < NWG; i += 256u) { q += ss[wg.x * NWG + i]; }
  red[t] = q;
  workgroupBarrier();
  ${treeSumWgsl("red", "t")}
  let r = inverseSqrt(red[0] / f32(p.GS) + p.gEps);
  workgroupBarrier(); // red is reused below
` : ""}  var v: array<f32, KD>;
  var ${NWG > 0 ? "sq" : "ss"} = 0.0;
  for (var k = 0u; k < KD; k++) {
${NWG > 0 ? `    var x = 0.0;
    for (var s = 0u; s < S; s++) { x += pv[k][s]; }
    x = fma(r, x, select(0.0, bv[k], p.hasBias != 0u) + select(0.0, rv[k], p.hasRes != 0u));` : `    var x = select(0.0, bv[k], p.hasBias != 0u) + select(0.0, rv[k], p.hasRes != 0u);
    for (var s = 0u; s < S; s++) { x += pv[k][s]; }`}
    v[k] = x;
    let d = t + k * 256u;
    if (d < D) {
      res[dst + d] = x;
      ${NWG > 0 ? "sq = fma(x, x, sq)" : "ss = fma(x, x, ss)"};
    }
  }
  red[t] = ${NWG > 0 ? "sq" : "ss"};
  workgroupBarrier();
  ${treeSumWgsl("red", "t")}
  let inv = inverseSqrt(red[0] / f32(D) + p.eps);
  for (var k = 0u; k < KD; k++) {
    let d = t + k * 256u;
    if (d < D) { out[o + d] = v[k] * inv * gv[k]; }
  }
}`,
});
/** The kernel's parts by shape, made once each. */
const partsByShape = new Map<string, WgslParts>();
function parts(shape: BatchNormShape): WgslParts {
  const key = `${shape.S},${shape.D},${shape.NWG ?? 0}`;
  let made = partsByShape.get(key);
  if (!made) partsByShape.set(key, made = partsOf(shape));
  return made;
}

export interface BatchNormArgs {
  B: number; D: number; eps: number;
  part: Buf; S: number; bias: Buf | null;
  res: Buf; hasRes: boolean; par: number;
  g: Buf; oG: number;
  out: Buf;
  // Mamba-2: the parts' gated-norm scale from the SSD step's sums of squares [B, NWG] over GS channels (one group)
  scale?: { ss: Buf; NWG: number; GS: number; eps: number } | null;
}

const batchNormKernel = defineKernel({
  name: "decode_batchnorm", wgsl: (s: BatchNormShape) => standaloneWgsl(parts(s), "256", "batchNorm(lid, wg)"),
  label: (s) => `decode_batchnorm_${s.S}_${s.D}${s.NWG ? `_scaled${s.NWG}` : ""}`, example: { S: 16, D: 768 } as BatchNormShape,
});

// part: [S, B, D], bias: [D], res: [2, B, D] (half par in, half 1 - par out), g: [D] from word oG -> out: [B, D]
export function decodeBatchNorm(gpu: Gpu, a: BatchNormArgs): void {
  const shape: BatchNormShape = a.scale ? { S: a.S, D: a.D, NWG: a.scale.NWG } : { S: a.S, D: a.D };
  const k = gpu.kernel(batchNormKernel, shape);
  const kp = parts(shape);
  const values = { B: a.B, hasBias: !!a.bias, hasRes: a.hasRes, par: a.par, oG: a.oG, eps: a.eps };
  const p = paramBlock(kp.params, a.scale ? { ...values, GS: a.scale.GS, gEps: a.scale.eps } : values);
  const bufs: Record<string, Buf> = { part: a.part, bias: a.bias ?? gpu.dummy, res: a.res, g: a.g, out: a.out };
  if (a.scale) bufs.ss = a.scale.ss;
  gpu.dispatch(k, bindingsByName(kp, bufs), p, [a.B]);
}
