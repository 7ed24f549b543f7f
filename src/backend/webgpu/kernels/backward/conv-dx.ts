/**
 * Conv backward, step 2 of 3: the input gradient, one thread per value (b, t, e) of x, added into dx (a column
 * window): position t fed outputs t' = t + K−1−k through tap k, so
 *   dx[b, t, e] += Σ_k dpre[b, t + K−1−k, e] · w[e, k]   over t' < L
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { grid } from "../../gpu.ts";
import type { ConvBwdShape } from "./conv-pre.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";

// bindings: 0 dpre [B·L, E] | 1 weight [E, K] | 2 dx [B·L, lddx] in/out | 3 params
const convDxParts: WgslParts = {
  consts: [],
  params: [["B", "u32"], ["L", "u32"], ["E", "u32"], ["K", "u32"], ["lddx", "u32"], ["offdx", "u32"], ["groupsX", "u32"]],
  bindings: [
    ["dpre", "var<storage, read> dpre: array<f32>"],
    ["weight", "var<storage, read> weight: array<f32>"],
    ["dx", "var<storage, read_write> dx: array<f32>"],
  ],
  decls: "",
  fn: /* wgsl */ `
fn convDx(gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (i >= p.B * p.L * p.E) { return; }
  let e = i % p.E;
  let t = (i / p.E) % p.L;
  let b = i / (p.E * p.L);
  let H = p.K - 1u;
  var s = 0.0;
  for (var k = 0u; k < p.K; k++) {
    let t2 = t + H - k;
    if (t2 < p.L) { s = fma(dpre[(b * p.L + t2) * p.E + e], weight[e * p.K + k], s); }
  }
  let o = (b * p.L + t) * p.lddx + p.offdx + e;
  dx[o] = dx[o] + s;
}`,
};

const bwdConvDxKernel = defineKernel({
  name: "bwd_conv_dx", wgsl: () => standaloneWgsl(convDxParts, "256", "convDx(gid)"), example: null,
});

// dpre: [B, L, E], weight: [E, K] -> dx [B, L, E] window +=
export function convDx(gpu: Gpu, s: ConvBwdShape, dpre: Buf, weight: Buf, dx: Buf, lddx: number, offdx: number): void {
  const k = gpu.kernel(bwdConvDxKernel, null);
  const [gx, gy] = grid(Math.ceil((s.B * s.L * s.E) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(convDxParts, { dpre, weight, dx }),
    paramBlock(convDxParts.params, { B: s.B, L: s.L, E: s.E, K: s.K, lddx, offdx, groupsX: gx }), [gx, gy]);
}
