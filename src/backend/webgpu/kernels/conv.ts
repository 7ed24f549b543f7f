/**
 * Causal depthwise conv1d + SiLU with a carried history, one thread per output value (b, t, e):
 *   out[b, t, e] = silu(bias[e] + Σ_k weight[e, k] · seq[b, t + k, e])
 * where seq[b] = the K-1 rows of stateIn[b] followed by the L rows of x[b] (zeros when there is no state).
 * The history after the last position goes to stateOut, a buffer distinct from stateIn: the threads of t = 0
 * write it, and no thread may overwrite history that another is still reading.
 */
import type { Buf, Gpu } from "../gpu.ts";
import { Params, grid } from "../gpu.ts";
import { defineKernel } from "../kernel-def.ts";

const wgsl = /* wgsl */ `
// bindings: 0 x [B·L, ldx] | 1 weight [E, K] | 2 bias [E] | 3 stateIn [B, K-1, E] | 4 out [B·L, E]
//           5 stateOut [B, K-1, E] | 6 params
struct P { B: u32, L: u32, E: u32, K: u32, ldx: u32, offx: u32, hasBias: u32, hasState: u32, groupsX: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> stateIn: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> stateOut: array<f32>;
@group(0) @binding(6) var<uniform> p: P;

// position j of the sequence history ++ x of batch row b, channel e
fn seq(b: u32, j: u32, e: u32) -> f32 {
  let H = p.K - 1u;
  if (j < H) {
    if (p.hasState != 0u) { return stateIn[(b * H + j) * p.E + e]; }
    return 0.0;
  }
  return x[(b * p.L + j - H) * p.ldx + p.offx + e];
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
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
}
`;

export interface ConvArgs {
  x: Buf; ldx: number; offx: number;
  weight: Buf; bias: Buf | null;
  stateIn: Buf | null; stateOut: Buf | null;
  out: Buf;
  B: number; L: number; E: number; K: number;
}

const conv1dSiluKernel = defineKernel({ name: "conv1d_silu", wgsl: () => wgsl, example: null });

// x: [B, L, E] window, weight: [E, K], state: [B, K-1, E] -> out: [B, L, E]
export function causalConv1dSilu(gpu: Gpu, a: ConvArgs): void {
  const k = gpu.kernel(conv1dSiluKernel, null);
  const [gx, gy] = grid(Math.ceil((a.B * a.L * a.E) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  const p = new Params().u32(a.B).u32(a.L).u32(a.E).u32(a.K).u32(a.ldx).u32(a.offx)
    .bool(!!a.bias).bool(!!a.stateIn).u32(gx);
  gpu.dispatch(k, [a.x, a.weight, a.bias ?? gpu.dummy, a.stateIn ?? gpu.dummy, a.out, a.stateOut ?? gpu.dummyOut], p, [gx, gy]);
}
