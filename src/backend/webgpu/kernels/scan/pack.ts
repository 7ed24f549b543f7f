/**
 * The scan's per-channel constants packed into one buffer, made once per layer and cached by the backend:
 *   P[e, n] = A[e, n] · log2(e) = -exp(A_log[e, n]) · log2(e) for n < N  (so that exp(delta · A) = exp2(delta · P)),
 *   P[e, N] = dt bias,  P[e, N + 1] = D.
 * One binding instead of three keeps the scan kernels within the 8 storage buffers that browsers allow.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params, grid } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";

const wgsl = /* wgsl */ `
// bindings: 0 A_log [E, N] | 1 deltaBias [E] | 2 D [E] | 3 packed [E, N + 2] out | 4 params
const LOG2E = 1.4426950408889634;
struct P { E: u32, N: u32, groupsX: u32 }
@group(0) @binding(0) var<storage, read> A_log: array<f32>;
@group(0) @binding(1) var<storage, read> deltaBias: array<f32>;
@group(0) @binding(2) var<storage, read> Dskip: array<f32>;
@group(0) @binding(3) var<storage, read_write> packed: array<f32>;
@group(0) @binding(4) var<uniform> p: P;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  let W = p.N + 2u;
  if (i >= p.E * W) { return; }
  let e = i / W;
  let n = i % W;
  if (n < p.N) { packed[i] = -exp(A_log[e * p.N + n]) * LOG2E; }
  else if (n == p.N) { packed[i] = deltaBias[e]; }
  else { packed[i] = Dskip[e]; }
}
`;

const scanPackKernel = defineKernel({ name: "scan_pack", wgsl: () => wgsl, example: null });

export function packScanParams(gpu: Gpu, A_log: Buf, deltaBias: Buf, D: Buf, E: number, N: number, out: Buf): void {
  const k = gpu.kernel(scanPackKernel, null);
  const [gx, gy] = grid(Math.ceil((E * (N + 2)) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, [A_log, deltaBias, D, out], new Params().u32(E).u32(N).u32(gx), [gx, gy]);
}
