/**
 * Batch decode, the norm before each layer's in_proj (and norm_f after the last layer), one workgroup per row:
 * v = Σ_s part[s] (+ bias) (+ the residual), written as the new residual; out = v / sqrt(mean(v²) + eps) · g.
 * part holds the previous out_proj's K-split partial products (or the embedding, one part), so their sum, the
 * bias and the residual add cost no dispatch of their own. The residual lives in one [2, B, D] buffer: read from
 * half `par`, written to half 1 - par.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";

const wgsl = (S: number, D: number) => /* wgsl */ `
// bindings: 0 part [S, B, D] | 1 bias [D] | 2 res [2, B, D] | 3 g (gain from word oG) | 4 out [B, D] | 5 params
// grid: (B)
const S = ${S}u; // parts
const D = ${D}u;
const KD = ${Math.ceil(D / 256)}u; // values of the row a thread
struct P { B: u32, hasBias: u32, hasRes: u32, par: u32, oG: u32, eps: f32 }
@group(0) @binding(0) var<storage, read> part: array<f32>;
@group(0) @binding(1) var<storage, read> bias: array<f32>;
@group(0) @binding(2) var<storage, read_write> res: array<f32>;
@group(0) @binding(3) var<storage, read> g: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<uniform> p: P;

var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
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
}
`;

export interface BatchNormArgs {
  B: number; D: number; eps: number;
  part: Buf; S: number; bias: Buf | null;
  res: Buf; hasRes: boolean; par: number;
  g: Buf; oG: number;
  out: Buf;
}

/** S parts of the last out_proj, D columns. */
const batchNormKernel = defineKernel({
  name: "decode_batchnorm", wgsl: (s: { S: number; D: number }) => wgsl(s.S, s.D), label: (s) => `decode_batchnorm_${s.S}_${s.D}`, example: { S: 16, D: 768 },
});

// part: [S, B, D], bias: [D], res: [2, B, D] (half par in, half 1 - par out), g: [D] from word oG -> out: [B, D]
export function decodeBatchNorm(gpu: Gpu, a: BatchNormArgs): void {
  const k = gpu.kernel(batchNormKernel, { S: a.S, D: a.D });
  const p = new Params().u32(a.B).bool(!!a.bias).bool(a.hasRes).u32(a.par).u32(a.oG).f32(a.eps);
  gpu.dispatch(k, [a.part, a.bias ?? gpu.dummy, a.res, a.g, a.out], p, [a.B]);
}
