/** Sums the K-split partial products of the tiled matmul and adds the bias: y[t, n] = Σ_z part[z, t, n] + bias[n]. */
import type { Buf, Gpu } from "../gpu.ts";
import { Params, grid } from "../gpu.ts";
import { defineKernel } from "../kernel-def.ts";

const wgsl = /* wgsl */ `
// bindings: 0 part [splits, T, N] | 1 bias [N] | 2 y [T, N] | 3 params
struct P { TN: u32, N: u32, splits: u32, hasBias: u32, groupsX: u32 }
@group(0) @binding(0) var<storage, read> part: array<f32>;
@group(0) @binding(1) var<storage, read> bias: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: P;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (i >= p.TN) { return; }
  var s = 0.0;
  if (p.hasBias != 0u) { s = bias[i % p.N]; }
  for (var z = 0u; z < p.splits; z++) { s += part[z * p.TN + i]; }
  y[i] = s;
}
`;

const matmulReduceKernel = defineKernel({ name: "matmul_reduce", wgsl: () => wgsl, example: null });

// part: [splits, T, N], bias: [N] -> y: [T, N]
export function matmulReduce(gpu: Gpu, part: Buf, splits: number, bias: Buf | null, T: number, N: number, y: Buf): void {
  const k = gpu.kernel(matmulReduceKernel, null);
  const [gx, gy] = grid(Math.ceil((T * N) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, [part, bias ?? gpu.dummy, y], new Params().u32(T * N).u32(N).u32(splits).bool(!!bias).u32(gx), [gx, gy]);
}
