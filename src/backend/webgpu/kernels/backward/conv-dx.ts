/**
 * Conv backward, step 2 of 3: the input gradient, added into dx (a column window): position t fed outputs
 * t' = t + K−1−k through tap k, so
 *   dx[b, t, e] += Σ_k dpre[b, t + K−1−k, e] · w[e, k]   over t' < L
 * Where the conv takes the 4-channel kernels (../conv.ts, convQuadFits), a thread computes 4 channels of a run of
 * positions from the rows of dpre they read, loaded once as vec4s; elsewhere one thread per value.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { grid } from "../../gpu.ts";
import type { ConvBwdShape } from "./conv-pre.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";
import { CONV_QUAD_WGSL, convQuadConsts, convQuadFits, convQuadGrid } from "../conv.ts";

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

// dpre and dx read as vec4s; K a constant of the kernel
const quadParts = new Map<number, WgslParts>();
const convDxQuadParts = (K: number): WgslParts => quadParts.get(K) ?? quadParts.set(K, {
  consts: convQuadConsts(K),
  params: [["B", "u32"], ["L", "u32"], ["E", "u32"], ["lddx", "u32"], ["offdx", "u32"], ["groupsX", "u32"]],
  bindings: [
    ["dpre", "var<storage, read> dpre: array<vec4<f32>>"],
    ["weight", "var<storage, read> weight: array<f32>"],
    ["dx", "var<storage, read_write> dx: array<vec4<f32>>"],
  ],
  decls: /* wgsl */ `${CONV_QUAD_WGSL}
// dpre's row j, an output position t fed (zero past the sequence's end)
fn quadRow(b: u32, j: u32, e: u32) -> vec4<f32> {
  if (j >= p.L) { return vec4<f32>(0.0); }
  return dpre[((b * p.L + j) * p.E + e) / 4u];
}`,
  fn: /* wgsl */ `
fn convDxQuad(gid: vec3<u32>) {
  let q = quadOf(gid);
  if (!q.ok) { return; }
  let win = quadWindow(q); // the outputs the run's positions fed
  let w = quadWeights(q.e);
  for (var tt = 0u; tt < RUN; tt++) {
    let t = q.t0 + tt;
    if (t >= p.L) { break; }
    var s = vec4<f32>(0.0);
    for (var k = 0u; k < K; k++) { s = fma(win[tt + HK - k], w[k], s); }
    let o = ((q.b * p.L + t) * p.lddx + p.offdx + q.e) / 4u;
    dx[o] = dx[o] + s;
  }
}`,
}).get(K)!;

const bwdConvDxQuadKernel = defineKernel({
  name: "bwd_conv_dx_quad",
  wgsl: (s: { K: number }) => standaloneWgsl(convDxQuadParts(s.K), "256", "convDxQuad(gid)"),
  label: (s) => `bwd_conv_dx_quad_k${s.K}`,
  example: { K: 4 },
});

// dpre: [B, L, E], weight: [E, K] -> dx [B, L, E] window +=
export function convDx(gpu: Gpu, s: ConvBwdShape, dpre: Buf, weight: Buf, dx: Buf, lddx: number, offdx: number): void {
  if (convQuadFits(s.E, s.K, [{ ld: lddx, off: offdx }])) {
    const parts = convDxQuadParts(s.K);
    const [gx, gy] = convQuadGrid(gpu, s.B, s.L, s.E);
    gpu.dispatch(gpu.kernel(bwdConvDxQuadKernel, { K: s.K }), bindingsByName(parts, { dpre, weight, dx }),
      paramBlock(parts.params, { B: s.B, L: s.L, E: s.E, lddx, offdx, groupsX: gx }), [gx, gy]);
    return;
  }
  const k = gpu.kernel(bwdConvDxKernel, null);
  const [gx, gy] = grid(Math.ceil((s.B * s.L * s.E) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(convDxParts, { dpre, weight, dx }),
    paramBlock(convDxParts.params, { B: s.B, L: s.L, E: s.E, K: s.K, lddx, offdx, groupsX: gx }), [gx, gy]);
}
