/** Widens packed f16 / bf16 values (two per u32) to f32: out[i] = element i. */
import type { Buf, Gpu } from "../gpu.ts";
import { Params, grid } from "../gpu.ts";
import { type WeightStorage, weightReader } from "./weights.ts";
import { defineKernel } from "../kernel-def.ts";

const wgsl = (ws: WeightStorage) => /* wgsl */ `
// bindings: 0 w packed | 1 out f32 | 2 params
struct P { n: u32, groupsX: u32 }
@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: P;

${weightReader(ws)}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (i < p.n) { out[i] = weight(i); }
}
`;

const widenKernel = defineKernel({ name: "widen", wgsl, label: (ws) => `widen_${ws}`, example: "f16" as WeightStorage });

export function widen(gpu: Gpu, src: Buf, ws: "f16" | "bf16", n: number, out: Buf): void {
  const k = gpu.kernel(widenKernel, ws);
  const [gx, gy] = grid(Math.ceil(n / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, [src, out], new Params().u32(n).u32(gx), [gx, gy]);
}
