/**
 * Conv backward, step 1 of 3: the gradient at the SiLU's input, recomputing the pre-activation from zero history
 * (the training forward), one thread per value (b, t, e):
 *   pre = bias[e] + Σ_k w[e, k] · seq[b, t + k, e]   (seq = K−1 zeros then x[b])
 *   dpre = dy · σ(pre) · (1 + pre · (1 − σ(pre)))
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { grid } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";

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

// x: [B, L, E] window, weight: [E, K], bias: [E], dy: [B, L, E] -> dpre: [B, L, E]
export function convPre(gpu: Gpu, s: ConvBwdShape, x: Buf, ldx: number, offx: number, weight: Buf, bias: Buf | null, dy: Buf, dpre: Buf): void {
  const k = gpu.kernel(bwdConvPreKernel, null);
  const [gx, gy] = grid(Math.ceil((s.B * s.L * s.E) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(convPreParts, { x, weight, bias: bias ?? gpu.dummy, dy, dpre }),
    paramBlock(convPreParts.params, { B: s.B, L: s.L, E: s.E, K: s.K, ldx, offx, hasBias: !!bias, groupsX: gx }), [gx, gy]);
}
