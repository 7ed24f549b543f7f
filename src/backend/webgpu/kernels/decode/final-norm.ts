/**
 * The fused decode's final norm where the layers run two kernels each: norm_f over the sum of the last scan
 * kernel's partials of out_proj plus the residual, one workgroup for all B rows (at most DECODE_MAX_BD values).
 * It also clears the last layer's fixed-point totals of x_proj (./fixed.ts), which that layer's scan kernel has
 * read: the next step finds every region zero.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params } from "../../gpu.ts";
import { DECODE_MAX_BD } from "./mixer-in.ts";

const wgsl = (G: number) => /* wgsl */ `
// bindings: 0 hp (out_proj's partials [G, B, D]) | 1 res [2, B, D] | 2 g [D] | 3 out [B, D]
//           4 xacc (the region to clear) | 5 params
struct P { B: u32, D: u32, eps: f32, oRes: u32, oZero: u32, nZero: u32, S: u32 }
@group(0) @binding(0) var<storage, read> hp: array<f32>;
@group(0) @binding(1) var<storage, read> res: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> xacc: array<u32>;
@group(0) @binding(5) var<uniform> p: P;

var<workgroup> red: array<f32, 256>;
var<workgroup> hs: array<f32, ${DECODE_MAX_BD}>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>) {
  let t = lid.x;
  let n = p.B * p.D;
  for (var i = t; i < n; i += 256u) {
    // the G partials' loads written out, so that all are in flight at once
${Array.from({ length: G }, (_, g) => `    let v${g} = hp[${g}u * n + i];`).join("\n")}
    hs[i] = res[p.oRes + i] + ${Array.from({ length: G }, (_, g) => `v${g}`).join(" + ")};
  }
  for (var i = t; i < p.nZero; i += 256u) { // the values and the poison word of the x_proj region
    let w = p.oZero + i * p.S;
    xacc[w] = 0u;
    xacc[w + 1u] = 0u;
    xacc[w + 2u] = 0u;
  }
  workgroupBarrier();
  for (var b = 0u; b < p.B; b++) {
    var ss = 0.0;
    for (var d = t; d < p.D; d += 256u) { ss = fma(hs[b * p.D + d], hs[b * p.D + d], ss); }
    red[t] = ss;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
      if (t < s) { red[t] += red[t + s]; }
      workgroupBarrier();
    }
    let inv = inverseSqrt(red[0] / f32(p.D) + p.eps);
    workgroupBarrier(); // red[0] is read by all before the next row's sums
    for (var d = t; d < p.D; d += 256u) { out[b * p.D + d] = hs[b * p.D + d] * inv * g[d]; }
  }
}
`;

export interface FinalNormArgs {
  B: number; D: number; eps: number;
  hp: Buf; G: number; res: Buf; oRes: number; g: Buf; out: Buf;
  xacc: Buf; oZero: number; nZero: number; // values of xacc to clear (stride apart; the poison word counts as one)
  stride: number; // words from one value of xacc to the next
}

// hp: [G, B, D], res: [B, D] from word oRes, g: [D] -> out: [B, D]
export function decodeFinalNorm(gpu: Gpu, a: FinalNormArgs): void {
  if (a.B * a.D > DECODE_MAX_BD) throw new Error(`decodeFinalNorm: ${a.B} rows of ${a.D}, expected at most ${DECODE_MAX_BD} values`);
  const k = gpu.kernel(`decode_final_norm_${a.G}`, () => wgsl(a.G));
  const p = new Params().u32(a.B).u32(a.D).f32(a.eps).u32(a.oRes).u32(a.oZero).u32(a.nZero).u32(a.stride);
  gpu.dispatch(k, [a.hp, a.res, a.g, a.out, a.xacc], p, [1]);
}
