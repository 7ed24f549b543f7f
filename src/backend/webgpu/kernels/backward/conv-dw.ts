/**
 * Conv backward, step 3 of 3: partial weight and bias gradients per chunk of time steps of one batch row, one
 * thread per (chunk, e):
 *   part[g, e, k] = Σ_{t in chunk g} dpre[b, t, e] · seq[b, t + k, e]  (k < K),   part[g, e, K] = Σ dpre[b, t, e]
 * reduce-groups.ts adds the chunks in order into dWeight [E, K] and dBias [E].
 */
import type { Buf, Gpu } from "../../gpu.ts";
import type { ConvBwdShape } from "./conv-pre.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";

// x [B·L, ldx] | dpre [B·L, E] | part [B·nT, E, K + 1] out; grid: (ceil(E / 64), nT, B)
const makeParts = (K: number): WgslParts => ({
  consts: [["K", `${K}u`]],
  params: [["B", "u32"], ["L", "u32"], ["E", "u32"], ["ldx", "u32"], ["offx", "u32"], ["chunkLen", "u32"], ["nT", "u32"]],
  bindings: [
    ["x", "var<storage, read> x: array<f32>"],
    ["dpre", "var<storage, read> dpre: array<f32>"],
    ["part", "var<storage, read_write> part: array<f32>"],
  ],
  decls: "",
  fn: /* wgsl */ `
fn convDw(gid: vec3<u32>, wg: vec3<u32>) {
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
}`,
});

const partsByK = new Map<number, WgslParts>();
/** The kernel's parts for conv kernel K, made once. */
function parts(K: number): WgslParts {
  let made = partsByK.get(K);
  if (!made) partsByK.set(K, made = makeParts(K));
  return made;
}

/** Time chunks per batch row for the partial sums: enough threads, few partials. */
export function convChunks(B: number, L: number, E: number): { chunkLen: number; nT: number } {
  const want = Math.max(1, Math.ceil(65536 / (B * E)));
  const chunkLen = Math.max(16, Math.ceil(L / want));
  return { chunkLen, nT: Math.ceil(L / chunkLen) };
}

const convDwKernel = defineKernel({
  name: "bwd_conv_dw", wgsl: (K: number) => standaloneWgsl(parts(K), "64", "convDw(gid, wg)"), label: (K) => `bwd_conv_dw_${K}`, example: 4,
});

// x: [B, L, E] window, dpre: [B, L, E] -> part: [B·nT, E, K + 1]
export function convDw(gpu: Gpu, s: ConvBwdShape, x: Buf, ldx: number, offx: number, dpre: Buf, chunkLen: number, nT: number, part: Buf): void {
  const k = gpu.kernel(convDwKernel, s.K);
  const kernelParts = parts(s.K);
  const p = paramBlock(kernelParts.params, { B: s.B, L: s.L, E: s.E, ldx, offx, chunkLen, nT });
  gpu.dispatch(k, bindingsByName(kernelParts, { x, dpre, part }), p, [Math.ceil(s.E / 64), nT, s.B]);
}
