/**
 * Fused residual add + RMSNorm, one workgroup per row: residualOut = x + residual (residual optional),
 * out = residualOut / sqrt(mean(residualOut²) + eps) · weight. The sum of squares is a workgroup tree reduction.
 */
import type { Buf, Gpu } from "../gpu.ts";
import { Params, grid } from "../gpu.ts";
import { defineKernel } from "../kernel-def.ts";

const wgsl = /* wgsl */ `
// bindings: 0 x [T, D] | 1 residual [T, D] | 2 weight [D] | 3 out [T, D] | 4 residualOut [T, D] | 5 params
struct P { T: u32, D: u32, eps: f32, hasResidual: u32, groupsX: u32, resOff: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> residual: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> resOut: array<f32>;
@group(0) @binding(5) var<uniform> p: P;

var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
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
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid.x < s) { red[lid.x] += red[lid.x + s]; }
    workgroupBarrier();
  }
  let inv = inverseSqrt(red[0] / f32(p.D) + p.eps);
  for (var d = lid.x; d < p.D; d += 256u) {
    out[o + d] = resOut[o + d] * inv * weight[d];
  }
}
`;

const addRmsnormKernel = defineKernel({ name: "add_rmsnorm", wgsl: () => wgsl, example: null });

// x, residual: [T, D] (the residual from word resOff of its buffer), weight: [D] -> out, residualOut: [T, D]
export function addRmsNorm(gpu: Gpu, x: Buf, residual: Buf | null, weight: Buf, eps: number, T: number, D: number, out: Buf, resOut: Buf, resOff = 0): void {
  const k = gpu.kernel(addRmsnormKernel, null);
  const [gx, gy] = grid(T, gpu.limits.maxComputeWorkgroupsPerDimension);
  const p = new Params().u32(T).u32(D).f32(eps).bool(!!residual).u32(gx).u32(resOff);
  gpu.dispatch(k, [x, residual ?? gpu.dummy, weight, out, resOut], p, [gx, gy]);
}
