/** Sums the K-split partial products of the tiled matmul and adds the bias: y[t, n] = Σ_z part[z, t, n] + bias[n]. */
import type { Buf, Gpu } from "../gpu.ts";
import { grid } from "../gpu.ts";
import { defineKernel } from "../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "./compose.ts";

// part [splits, T, N] | bias [N] (unread without hasBias) | y [T, N]; TN = T · N, a thread an output
const parts: WgslParts = {
  consts: [],
  params: [["TN", "u32"], ["N", "u32"], ["splits", "u32"], ["hasBias", "u32"], ["groupsX", "u32"]],
  bindings: [
    ["part", "var<storage, read> part: array<f32>"],
    ["bias", "var<storage, read> bias: array<f32>"],
    ["y", "var<storage, read_write> y: array<f32>"],
  ],
  decls: "",
  fn: /* wgsl */ `
fn matmulReduce(gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (i >= p.TN) { return; }
  var s = 0.0;
  if (p.hasBias != 0u) { s = bias[i % p.N]; }
  for (var z = 0u; z < p.splits; z++) { s += part[z * p.TN + i]; }
  y[i] = s;
}`,
};

const matmulReduceKernel = defineKernel({
  name: "matmul_reduce", wgsl: () => standaloneWgsl(parts, "256", "matmulReduce(gid)"), example: null,
});

// part: [splits, T, N], bias: [N] -> y: [T, N]
export function matmulReduce(gpu: Gpu, part: Buf, splits: number, bias: Buf | null, T: number, N: number, y: Buf): void {
  const k = gpu.kernel(matmulReduceKernel, null);
  const [gx, gy] = grid(Math.ceil((T * N) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(parts, { part, bias: bias ?? gpu.dummy, y }),
    paramBlock(parts.params, { TN: T * N, N, splits, hasBias: !!bias, groupsX: gx }), [gx, gy]);
}
