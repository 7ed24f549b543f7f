/**
 * Conv backward, step 1 of 3: the gradient at the SiLU's input, recomputing the pre-activation from zero history
 * (the training forward):
 *   pre = bias[e] + Σ_k w[e, k] · seq[b, t + k, e]   (seq = K−1 zeros then x[b])
 *   dpre = dy · σ(pre) · (1 + pre · (1 − σ(pre)))
 * Where the conv takes the 4-channel kernels (../conv.ts, convQuadFits), a thread computes 4 channels of a run of
 * positions from its window of x loaded once as vec4s, as the forward's does; elsewhere one thread per value.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { grid } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";
import { CONV_QUAD_PRE_WGSL, CONV_QUAD_WGSL, convQuadConsts, convQuadFits, convQuadGrid } from "../conv.ts";

// bindings: 0 x [B·L, ldx] | 1 weight [E, K] | 2 bias [E] | 3 dy [B·L, E] | 4 dpre [B·L, E] out | 5 params
const convPreParts: WgslParts = {
  consts: [],
  params: [["B", "u32"], ["L", "u32"], ["E", "u32"], ["K", "u32"], ["ldx", "u32"], ["offx", "u32"], ["hasBias", "u32"], ["groupsX", "u32"]],
  bindings: [
    ["x", "var<storage, read> x: array<f32>"],
    ["weight", "var<storage, read> weight: array<f32>"],
    ["bias", "var<storage, read> bias: array<f32>"],
    ["dy", "var<storage, read> dy: array<f32>"],
    ["dpre", "var<storage, read_write> dpre: array<f32>"],
  ],
  decls: "",
  fn: /* wgsl */ `
fn convPre(gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (i >= p.B * p.L * p.E) { return; }
  let e = i % p.E;
  let t = (i / p.E) % p.L;
  let b = i / (p.E * p.L);
  let H = p.K - 1u;
  var s = 0.0;
  if (p.hasBias != 0u) { s = bias[e]; }
  for (var k = 0u; k < p.K; k++) {
    if (t + k >= H) { s = fma(weight[e * p.K + k], x[(b * p.L + t + k - H) * p.ldx + p.offx + e], s); }
  }
  let sig = 1.0 / (1.0 + exp(-s));
  dpre[i] = dy[i] * sig * (1.0 + s * (1.0 - sig));
}`,
};

export interface ConvBwdShape { B: number; L: number; E: number; K: number }

const bwdConvPreKernel = defineKernel({
  name: "bwd_conv_pre", wgsl: () => standaloneWgsl(convPreParts, "256", "convPre(gid)"), example: null,
});

// x, dy and dpre read as vec4s; K a constant of the kernel
const quadParts = new Map<number, WgslParts>();
const convPreQuadParts = (K: number): WgslParts => quadParts.get(K) ?? quadParts.set(K, {
  consts: convQuadConsts(K),
  params: [["B", "u32"], ["L", "u32"], ["E", "u32"], ["ldx", "u32"], ["offx", "u32"], ["hasBias", "u32"], ["groupsX", "u32"]],
  bindings: [
    ["x", "var<storage, read> x: array<vec4<f32>>"],
    ["weight", "var<storage, read> weight: array<f32>"],
    ["bias", "var<storage, read> bias: array<f32>"],
    ["dy", "var<storage, read> dy: array<vec4<f32>>"],
    ["dpre", "var<storage, read_write> dpre: array<vec4<f32>>"],
  ],
  decls: /* wgsl */ `${CONV_QUAD_WGSL}${CONV_QUAD_PRE_WGSL}
// seq's row j: HK zeros, then x (zero past its end)
fn quadRow(b: u32, j: u32, e: u32) -> vec4<f32> {
  if (j < HK || j >= p.L + HK) { return vec4<f32>(0.0); }
  return x[((b * p.L + j - HK) * p.ldx + p.offx + e) / 4u];
}`,
  fn: /* wgsl */ `
fn convPreQuad(gid: vec3<u32>) {
  let q = quadOf(gid);
  if (!q.ok) { return; }
  let pre = quadPre(quadWindow(q), q.e);
  for (var tt = 0u; tt < RUN; tt++) {
    let t = q.t0 + tt;
    if (t >= p.L) { break; }
    let s = pre[tt];
    let sig = 1.0 / (1.0 + exp(-s));
    let o = ((q.b * p.L + t) * p.E + q.e) / 4u;
    dpre[o] = dy[o] * sig * (1.0 + s * (1.0 - sig));
  }
}`,
}).get(K)!;

const bwdConvPreQuadKernel = defineKernel({
  name: "bwd_conv_pre_quad",
  wgsl: (s: { K: number }) => standaloneWgsl(convPreQuadParts(s.K), "256", "convPreQuad(gid)"),
  label: (s) => `bwd_conv_pre_quad_k${s.K}`,
  example: { K: 4 },
});

// x: [B, L, E] window, weight: [E, K], bias: [E], dy: [B, L, E] -> dpre: [B, L, E]
export function convPre(gpu: Gpu, s: ConvBwdShape, x: Buf, ldx: number, offx: number, weight: Buf, bias: Buf | null, dy: Buf, dpre: Buf): void {
  if (convQuadFits(s.E, s.K, [{ ld: ldx, off: offx }])) {
    const parts = convPreQuadParts(s.K);
    const [gx, gy] = convQuadGrid(gpu, s.B, s.L, s.E);
    gpu.dispatch(gpu.kernel(bwdConvPreQuadKernel, { K: s.K }), bindingsByName(parts, { x, weight, bias: bias ?? gpu.dummy, dy, dpre }),
      paramBlock(parts.params, { B: s.B, L: s.L, E: s.E, ldx, offx, hasBias: !!bias, groupsX: gx }), [gx, gy]);
    return;
  }
  const k = gpu.kernel(bwdConvPreKernel, null);
  const [gx, gy] = grid(Math.ceil((s.B * s.L * s.E) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(convPreParts, { x, weight, bias: bias ?? gpu.dummy, dy, dpre }),
    paramBlock(convPreParts.params, { B: s.B, L: s.L, E: s.E, K: s.K, ldx, offx, hasBias: !!bias, groupsX: gx }), [gx, gy]);
}
