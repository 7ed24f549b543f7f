/**
 * Conv backward, step 3 of 3: partial weight and bias gradients per chunk of time steps of one batch row, one
 * thread per (chunk, e):
 *   part[g, e, k] = Σ_{t in chunk g} dpre[b, t, e] · seq[b, t + k, e]  (k < K),   part[g, e, K] = Σ dpre[b, t, e]
 * reduce-groups.ts adds the chunks in order into dWeight [E, K] and dBias [E].
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params } from "../../gpu.ts";
import type { ConvBwdShape } from "./conv-pre.ts";
import { defineKernel } from "../../kernel-def.ts";

const wgsl = (K: number) => /* wgsl */ `
// bindings: 0 x [B·L, ldx] | 1 dpre [B·L, E] | 2 part [B·nT, E, K + 1] out | 3 params
// grid: (ceil(E / 64), nT, B)
const K = ${K}u;
struct P { B: u32, L: u32, E: u32, ldx: u32, offx: u32, chunkLen: u32, nT: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dpre: array<f32>;
@group(0) @binding(2) var<storage, read_write> part: array<f32>;
@group(0) @binding(3) var<uniform> p: P;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let e = gid.x;
  if (e >= p.E) { return; }
  let tc = wg.y;
  let b = wg.z;
  let H = K - 1u;
  let t0 = tc * p.chunkLen;
  let t1 = min(t0 + p.chunkLen, p.L);
  var acc: array<f32, K + 1u>;
  // window[k] = seq[b, t + k, e]: slide it along t
  var win: array<f32, K>;
  for (var k = 0u; k < K; k++) {
    let j = t0 + k; // seq index
    win[k] = 0.0;
    if (j >= H && j - H < p.L) { win[k] = x[(b * p.L + j - H) * p.ldx + p.offx + e]; }
  }
  for (var t = t0; t < t1; t++) {
    let g = dpre[(b * p.L + t) * p.E + e];
    for (var k = 0u; k < K; k++) { acc[k] = fma(g, win[k], acc[k]); }
    acc[K] += g;
    for (var k = 0u; k + 1u < K; k++) { win[k] = win[k + 1u]; }
    let j = t + K; // seq index entering the window
    win[K - 1u] = 0.0;
    if (j - H < p.L) { win[K - 1u] = x[(b * p.L + j - H) * p.ldx + p.offx + e]; }
  }
  let o = ((b * p.nT + tc) * p.E + e) * (K + 1u);
  for (var k = 0u; k <= K; k++) { part[o + k] = acc[k]; }
}
`;

/** Time chunks per batch row for the partial sums: enough threads, few partials. */
export function convChunks(B: number, L: number, E: number): { chunkLen: number; nT: number } {
  const want = Math.max(1, Math.ceil(65536 / (B * E)));
  const chunkLen = Math.max(16, Math.ceil(L / want));
  return { chunkLen, nT: Math.ceil(L / chunkLen) };
}

const convDwKernel = defineKernel({ name: "bwd_conv_dw", wgsl, label: (K) => `bwd_conv_dw_${K}`, example: 4 });

// x: [B, L, E] window, dpre: [B, L, E] -> part: [B·nT, E, K + 1]
export function convDw(gpu: Gpu, s: ConvBwdShape, x: Buf, ldx: number, offx: number, dpre: Buf, chunkLen: number, nT: number, part: Buf): void {
  const k = gpu.kernel(convDwKernel, s.K);
  const p = new Params().u32(s.B).u32(s.L).u32(s.E).u32(ldx).u32(offx).u32(chunkLen).u32(nT);
  gpu.dispatch(k, [x, dpre, part], p, [Math.ceil(s.E / 64), nT, s.B]);
}
