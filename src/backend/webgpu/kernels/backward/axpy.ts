/** dst += alpha · src over n values (the optimizer's and gradient accumulation's elementwise add), in place. */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params, grid } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";

const wgsl = /* wgsl */ `
// bindings: 0 src [n] | 1 dst [n] in/out | 2 params
struct P { n: u32, alpha: f32, groupsX: u32 }
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> p: P;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (i < p.n) { dst[i] = fma(p.alpha, src[i], dst[i]); }
}
`;

const bwdAxpyKernel = defineKernel({ name: "bwd_axpy", wgsl: () => wgsl, example: null });

// src, dst: [n] -> dst += alpha · src
export function axpy(gpu: Gpu, src: Buf, dst: Buf, alpha: number, n: number): void {
  if (n === 0) return;
  const k = gpu.kernel(bwdAxpyKernel, null);
  const [gx, gy] = grid(Math.ceil(n / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, [src, dst], new Params().u32(n).f32(alpha).u32(gx), [gx, gy]);
}
