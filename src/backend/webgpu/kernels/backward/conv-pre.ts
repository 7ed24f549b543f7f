/**
 * Conv backward, step 1 of 3: the gradient at the SiLU's input, recomputing the pre-activation from zero history
 * (the training forward), one thread per value (b, t, e):
 *   pre = bias[e] + Σ_k w[e, k] · seq[b, t + k, e]   (seq = K−1 zeros then x[b])
 *   dpre = dy · σ(pre) · (1 + pre · (1 − σ(pre)))
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params, grid } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";

const wgsl = /* wgsl */ `
// bindings: 0 x [B·L, ldx] | 1 weight [E, K] | 2 bias [E] | 3 dy [B·L, E] | 4 dpre [B·L, E] out | 5 params
struct P { B: u32, L: u32, E: u32, K: u32, ldx: u32, offx: u32, hasBias: u32, groupsX: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dpre: array<f32>;
@group(0) @binding(5) var<uniform> p: P;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
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
}
`;

export interface ConvBwdShape { B: number; L: number; E: number; K: number }

const bwdConvPreKernel = defineKernel({ name: "bwd_conv_pre", wgsl: () => wgsl, example: null });

// x: [B, L, E] window, weight: [E, K], bias: [E], dy: [B, L, E] -> dpre: [B, L, E]
export function convPre(gpu: Gpu, s: ConvBwdShape, x: Buf, ldx: number, offx: number, weight: Buf, bias: Buf | null, dy: Buf, dpre: Buf): void {
  const k = gpu.kernel(bwdConvPreKernel, null);
  const [gx, gy] = grid(Math.ceil((s.B * s.L * s.E) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  const p = new Params().u32(s.B).u32(s.L).u32(s.E).u32(s.K).u32(ldx).u32(offx).bool(!!bias).u32(gx);
  gpu.dispatch(k, [x, weight, bias ?? gpu.dummy, dy, dpre], p, [gx, gy]);
}
