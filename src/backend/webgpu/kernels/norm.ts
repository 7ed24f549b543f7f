/**
 * Fused residual add + RMSNorm, one workgroup per row: residualOut = x + residual (residual optional),
 * out = residualOut / sqrt(mean(residualOut²) + eps) · weight. The sum of squares is a workgroup tree reduction.
 */
import type { Buf, Gpu } from "../gpu.ts";
import { grid } from "../gpu.ts";
import { defineKernel } from "../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "./compose.ts";
import { treeSumWgsl } from "./wgsl-common.ts";

// bindings: 0 x [T, D] | 1 residual [T, D] | 2 weight [D] | 3 out [T, D] | 4 residualOut [T, D] | 5 params
const addRmsnormParts: WgslParts = {
  consts: [],
  params: [["T", "u32"], ["D", "u32"], ["eps", "f32"], ["hasResidual", "u32"], ["groupsX", "u32"], ["resOff", "u32"]],
  bindings: [
    ["x", "var<storage, read> x: array<f32>"],
    ["residual", "var<storage, read> residual: array<f32>"],
    ["weight", "var<storage, read> weight: array<f32>"],
    ["out", "var<storage, read_write> out: array<f32>"],
    ["resOut", "var<storage, read_write> resOut: array<f32>"],
  ],
  decls: /* wgsl */ `
var<workgroup> red: array<f32, 256>;`,
  fn: /* wgsl */ `
fn addRmsnorm(lid: vec3<u32>, wg: vec3<u32>) {
  let row = wg.y * p.groupsX + wg.x;
  if (row >= p.T) { return; } // uniform across the workgroup
  let o = row * p.D;
  var ss = 0.0;
  for (var d = lid.x; d < p.D; d += 256u) {
    var v = x[o + d];
    if (p.hasResidual != 0u) { v += residual[p.resOff + o + d]; }
    resOut[o + d] = v;
    ss = fma(v, v, ss);
  }
  red[lid.x] = ss;
  workgroupBarrier();
  ${treeSumWgsl("red", "lid.x")}
  let inv = inverseSqrt(red[0] / f32(p.D) + p.eps);
  for (var d = lid.x; d < p.D; d += 256u) {
    out[o + d] = resOut[o + d] * inv * weight[d];
  }
}`,
};

const addRmsnormKernel = defineKernel({
  name: "add_rmsnorm", wgsl: () => standaloneWgsl(addRmsnormParts, "256", "addRmsnorm(lid, wg)"), example: null,
});

// x, residual: [T, D] (the residual from word resOff of its buffer), weight: [D] -> out, residualOut: [T, D]
export function addRmsNorm(gpu: Gpu, x: Buf, residual: Buf | null, weight: Buf, eps: number, T: number, D: number, out: Buf, resOut: Buf, resOff = 0): void {
  const k = gpu.kernel(addRmsnormKernel, null);
  const [gx, gy] = grid(T, gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(addRmsnormParts, { x, residual: residual ?? gpu.dummy, weight, out, resOut }),
    paramBlock(addRmsnormParts.params, { T, D, eps, hasResidual: !!residual, groupsX: gx, resOff }), [gx, gy]);
}
