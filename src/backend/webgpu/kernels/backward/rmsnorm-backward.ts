/**
 * Backward of the fused residual add + RMSNorm through the norm, one workgroup per row t (r = residualOut):
 *   inv = 1 / sqrt(mean(r²) + eps),  n = r · inv,  m = mean(dOut · w · n)
 *   dResidual[t] += inv · (dOut · w − n · m)
 * and inv[t] is kept for the weight gradient Σ_t dOut · r · inv (colsum.ts, then reduce-groups.ts). The two
 * row sums (of r² and of dOut · w · r) are one workgroup tree reduction.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { grid } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";
import { treeSumWgsl } from "../wgsl-common.ts";

// bindings: 0 r [T, D] | 1 weight [D] | 2 dOut [T, D] | 3 dResidual [T, D] in/out | 4 inv [T] out | 5 params
const rmsNormBackwardParts: WgslParts = {
  consts: [],
  params: [["T", "u32"], ["D", "u32"], ["eps", "f32"], ["groupsX", "u32"]],
  bindings: [
    ["r", "var<storage, read> r: array<f32>"],
    ["weight", "var<storage, read> weight: array<f32>"],
    ["dOut", "var<storage, read> dOut: array<f32>"],
    ["dRes", "var<storage, read_write> dRes: array<f32>"],
    ["invOut", "var<storage, read_write> invOut: array<f32>"],
  ],
  decls: /* wgsl */ `
var<workgroup> red: array<vec2<f32>, 256>;`,
  fn: /* wgsl */ `
fn rmsNormBackward(lid: vec3<u32>, wg: vec3<u32>) {
  let row = wg.y * p.groupsX + wg.x;
  if (row >= p.T) { return; } // uniform across the workgroup
  let o = row * p.D;
  var acc = vec2<f32>(0.0);
  for (var d = lid.x; d < p.D; d += 256u) {
    let v = r[o + d];
    acc += vec2<f32>(v * v, dOut[o + d] * weight[d] * v);
  }
  red[lid.x] = acc;
  workgroupBarrier();
  ${treeSumWgsl("red", "lid.x")}
  let inv = inverseSqrt(red[0].x / f32(p.D) + p.eps);
  let m = red[0].y * inv / f32(p.D); // mean(dOut · w · n)
  for (var d = lid.x; d < p.D; d += 256u) {
    let n = r[o + d] * inv;
    dRes[o + d] += inv * (dOut[o + d] * weight[d] - n * m);
  }
  if (lid.x == 0u) { invOut[row] = inv; }
}`,
};

const bwdRmsnormKernel = defineKernel({
  name: "bwd_rmsnorm", wgsl: () => standaloneWgsl(rmsNormBackwardParts, "256", "rmsNormBackward(lid, wg)"), example: null,
});

// r, dOut: [T, D], weight: [D] -> dResidual [T, D] +=, inv [T]
export function rmsNormBackward(gpu: Gpu, r: Buf, weight: Buf, eps: number, dOut: Buf, T: number, D: number, dRes: Buf, inv: Buf): void {
  const k = gpu.kernel(bwdRmsnormKernel, null);
  const [gx, gy] = grid(T, gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(rmsNormBackwardParts, { r, weight, dOut, dRes, invOut: inv }),
    paramBlock(rmsNormBackwardParts.params, { T, D, eps, groupsX: gx }), [gx, gy]);
}
