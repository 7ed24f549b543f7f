/**
 * Causal depthwise conv1d + SiLU with a carried history, one thread per output value (b, t, e):
 *   out[b, t, e] = silu(bias[e] + Σ_k weight[e, k] · seq[b, t + k, e])
 * where seq[b] = the K-1 rows of stateIn[b] followed by the L rows of x[b] (zeros when there is no state).
 * The history after the last position goes to stateOut, a buffer distinct from stateIn: the threads of t = 0
 * write it, and no thread may overwrite history that another is still reading.
 */
import type { Buf, Gpu } from "../gpu.ts";
import { grid } from "../gpu.ts";
import { defineKernel } from "../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "./compose.ts";

// bindings: 0 x [B·L, ldx] | 1 weight [E, K] | 2 bias [E] | 3 stateIn [B, K-1, E] | 4 out [B·L, E]
//           5 stateOut [B, K-1, E] | 6 params
const conv1dSiluParts: WgslParts = {
  consts: [],
  params: [["B", "u32"], ["L", "u32"], ["E", "u32"], ["K", "u32"], ["ldx", "u32"], ["offx", "u32"], ["hasBias", "u32"], ["hasState", "u32"], ["groupsX", "u32"]],
  bindings: [
    ["x", "var<storage, read> x: array<f32>"],
    ["weight", "var<storage, read> weight: array<f32>"],
    ["bias", "var<storage, read> bias: array<f32>"],
    ["stateIn", "var<storage, read> stateIn: array<f32>"],
    ["out", "var<storage, read_write> out: array<f32>"],
    ["stateOut", "var<storage, read_write> stateOut: array<f32>"],
  ],
  decls: /* wgsl */ `
// position j of the sequence history ++ x of batch row b, channel e
fn seq(b: u32, j: u32, e: u32) -> f32 {
  let H = p.K - 1u;
  if (j < H) {
    if (p.hasState != 0u) { return stateIn[(b * H + j) * p.E + e]; }
    return 0.0;
  }
  return x[(b * p.L + j - H) * p.ldx + p.offx + e];
}`,
  fn: /* wgsl */ `
fn conv1dSilu(gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (i >= p.B * p.L * p.E) { return; }
  let e = i % p.E;
  let t = (i / p.E) % p.L;
  let b = i / (p.E * p.L);
  var s = 0.0;
  if (p.hasBias != 0u) { s = bias[e]; }
  for (var k = 0u; k < p.K; k++) { s = fma(weight[e * p.K + k], seq(b, t + k, e), s); }
  out[i] = s / (1.0 + exp(-s));
  if (t == 0u && p.hasState != 0u) {
    let H = p.K - 1u;
    for (var j = 0u; j < H; j++) { stateOut[(b * H + j) * p.E + e] = seq(b, p.L + j, e); }
  }
}`,
};

export interface ConvArgs {
  x: Buf; ldx: number; offx: number;
  weight: Buf; bias: Buf | null;
  stateIn: Buf | null; stateOut: Buf | null;
  out: Buf;
  B: number; L: number; E: number; K: number;
}

const conv1dSiluKernel = defineKernel({
  name: "conv1d_silu", wgsl: () => standaloneWgsl(conv1dSiluParts, "256", "conv1dSilu(gid)"), example: null,
});

// x: [B, L, E] window, weight: [E, K], state: [B, K-1, E] -> out: [B, L, E]
export function causalConv1dSilu(gpu: Gpu, a: ConvArgs): void {
  const k = gpu.kernel(conv1dSiluKernel, null);
  const [gx, gy] = grid(Math.ceil((a.B * a.L * a.E) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(conv1dSiluParts, { x: a.x, weight: a.weight, bias: a.bias ?? gpu.dummy, stateIn: a.stateIn ?? gpu.dummy, out: a.out, stateOut: a.stateOut ?? gpu.dummyOut }),
    paramBlock(conv1dSiluParts.params, { B: a.B, L: a.L, E: a.E, K: a.K, ldx: a.ldx, offx: a.offx, hasBias: !!a.bias, hasState: !!a.stateIn, groupsX: gx }), [gx, gy]);
}
