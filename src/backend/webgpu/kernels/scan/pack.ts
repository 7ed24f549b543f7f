/**
 * The scan's per-channel constants packed into one buffer, made once per layer and cached by the backend:
 *   P[e, n] = A[e, n] · log2(e) = -exp(A_log[e, n]) · log2(e) for n < N  (so that exp(delta · A) = exp2(delta · P)),
 *   P[e, N] = dt bias,  P[e, N + 1] = D.
 * One binding instead of three keeps the scan kernels within the 8 storage buffers that browsers allow.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { grid } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";

// A_log [E, N] | deltaBias [E] | D [E] | packed [E, N + 2] out; a thread an output value
const parts: WgslParts = {
  consts: [["LOG2E", "1.4426950408889634"]],
  params: [["E", "u32"], ["N", "u32"], ["groupsX", "u32"]],
  bindings: [
    ["A_log", "var<storage, read> A_log: array<f32>"],
    ["deltaBias", "var<storage, read> deltaBias: array<f32>"],
    ["Dskip", "var<storage, read> Dskip: array<f32>"],
    ["packed", "var<storage, read_write> packed: array<f32>"],
  ],
  decls: "",
  fn: /* wgsl */ `
fn packScan(gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  let W = p.N + 2u;
  if (i >= p.E * W) { return; }
  let e = i / W;
  let n = i % W;
  if (n < p.N) { packed[i] = -exp(A_log[e * p.N + n]) * LOG2E; }
  else if (n == p.N) { packed[i] = deltaBias[e]; }
  else { packed[i] = Dskip[e]; }
}`,
};

const scanPackKernel = defineKernel({
  name: "scan_pack", wgsl: () => standaloneWgsl(parts, "256", "packScan(gid)"), example: null,
});

export function packScanParams(gpu: Gpu, A_log: Buf, deltaBias: Buf, D: Buf, E: number, N: number, out: Buf): void {
  const k = gpu.kernel(scanPackKernel, null);
  const [gx, gy] = grid(Math.ceil((E * (N + 2)) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(parts, { A_log, deltaBias, Dskip: D, packed: out }),
    paramBlock(parts.params, { E, N, groupsX: gx }), [gx, gy]);
}
