/**
 * Causal depthwise conv1d + SiLU with a carried history:
 *   out[b, t, e] = silu(bias[e] + Σ_k weight[e, k] · seq[b, t + k, e])
 * where seq[b] = the K-1 rows of stateIn[b] followed by the L rows of x[b] (zeros when there is no state).
 * The history after the last position goes to stateOut, a buffer distinct from stateIn: the threads of the first
 * positions write it, and no thread may overwrite history that another is still reading.
 *
 * Two kernels. Where the channels and x's window fall on 4-float boundaries and the kernel is at most
 * CONV_QUAD_MAX_K wide (every real checkpoint's), a thread takes 4 channels of CONV_RUN consecutive positions:
 * it loads the run's CONV_RUN + K - 1 rows of seq as vec4s once, each used by K outputs, where a thread per
 * value loads K scalars for its one output (and divides its index by E and L). Elsewhere, one thread per value.
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

/** The widest conv the 4-channel kernels take (their weights and window are in registers). */
export const CONV_QUAD_MAX_K = 8;
/** Positions a thread of the 4-channel kernels computes. */
const CONV_RUN = 8;

/** Whether a conv of E channels and K taps over windows of these row lengths (ld) and column offsets (off) takes the
 *  4-channel kernels (this one, and the backward's in ../backward/conv-pre.ts and conv-dx.ts): every window's rows
 *  and the channels on 4-float boundaries. */
export function convQuadFits(E: number, K: number, windows: readonly { ld: number; off: number }[]): boolean {
  return E % 4 === 0 && K >= 2 && K <= CONV_QUAD_MAX_K && windows.every((w) => w.ld % 4 === 0 && w.off % 4 === 0);
}

/** The grid of a 4-channel kernel: a thread per (batch row, run of CONV_RUN positions, 4 channels). */
export function convQuadGrid(gpu: Gpu, B: number, L: number, E: number): [number, number] {
  return grid(Math.ceil((B * Math.ceil(L / CONV_RUN) * (E / 4)) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
}

/** The 4-channel kernels' constants (K taps, HK = K - 1 of history, RUN positions a thread). */
export const convQuadConsts = (K: number): [string, string][] => [["K", `${K}u`], ["HK", `${K - 1}u`], ["RUN", `${CONV_RUN}u`]];

/** WGSL of the 4-channel kernels: thread i's place (quadOf: its channels e .. e + 3, batch row b, first position t0,
 *  or ok false past the last thread), its run's window (quadWindow: rows t0 .. t0 + RUN + HK - 1 of the kernel's own
 *  quadRow(b, j, e), zero where there is none) and its channels' weights (quadWeights). Needs params B, L, E,
 *  groupsX, the binding weight [E, K] and the kernel's fn quadRow. */
export const CONV_QUAD_WGSL = /* wgsl */ `
struct Quad { e: u32, b: u32, t0: u32, ok: bool }
fn quadOf(gid: vec3<u32>) -> Quad {
  let i = gid.y * p.groupsX * 256u + gid.x;
  let E4 = p.E / 4u;
  let runs = (p.L + RUN - 1u) / RUN;
  return Quad((i % E4) * 4u, i / (E4 * runs), ((i / E4) % runs) * RUN, i < p.B * runs * E4);
}
// all the window's rows are loaded before any is used
fn quadWindow(q: Quad) -> array<vec4<f32>, RUN + HK> {
  var win: array<vec4<f32>, RUN + HK>;
  for (var j = 0u; j < RUN + HK; j++) { win[j] = quadRow(q.b, q.t0 + j, q.e); }
  return win;
}
fn quadWeights(e: u32) -> array<vec4<f32>, K> {
  var w: array<vec4<f32>, K>;
  for (var k = 0u; k < K; k++) {
    w[k] = vec4<f32>(weight[e * K + k], weight[(e + 1u) * K + k], weight[(e + 2u) * K + k], weight[(e + 3u) * K + k]);
  }
  return w;
}`;

/** WGSL of the 4-channel kernels that make the conv's pre-activations (the forward, and the backward's first step):
 *  those of a run's positions from its window of seq (position t0 + tt reads win[tt .. tt + K - 1]), bias included.
 *  Needs CONV_QUAD_WGSL, the param hasBias and the binding bias [E]. */
export const CONV_QUAD_PRE_WGSL = /* wgsl */ `
fn quadPre(win: array<vec4<f32>, RUN + HK>, e: u32) -> array<vec4<f32>, RUN> {
  let w = quadWeights(e);
  var b0 = vec4<f32>(0.0);
  if (p.hasBias != 0u) { b0 = vec4<f32>(bias[e], bias[e + 1u], bias[e + 2u], bias[e + 3u]); }
  var pre: array<vec4<f32>, RUN>;
  for (var tt = 0u; tt < RUN; tt++) {
    var s = b0;
    for (var k = 0u; k < K; k++) { s = fma(w[k], win[tt + k], s); }
    pre[tt] = s;
  }
  return pre;
}`;

// the same bindings, read as vec4s (x, stateIn, out, stateOut); K a constant of the kernel
const quadParts = new Map<number, WgslParts>();
const convQuadParts = (K: number): WgslParts => quadParts.get(K) ?? quadParts.set(K, makeQuadParts(K)).get(K)!;
const makeQuadParts = (K: number): WgslParts => ({
  consts: convQuadConsts(K),
  params: [["B", "u32"], ["L", "u32"], ["E", "u32"], ["ldx", "u32"], ["offx", "u32"], ["hasBias", "u32"], ["hasState", "u32"], ["groupsX", "u32"]],
  bindings: [
    ["x", "var<storage, read> x: array<vec4<f32>>"],
    ["weight", "var<storage, read> weight: array<f32>"],
    ["bias", "var<storage, read> bias: array<f32>"],
    ["stateIn", "var<storage, read> stateIn: array<vec4<f32>>"],
    ["out", "var<storage, read_write> out: array<vec4<f32>>"],
    ["stateOut", "var<storage, read_write> stateOut: array<vec4<f32>>"],
  ],
  decls: /* wgsl */ `${CONV_QUAD_WGSL}${CONV_QUAD_PRE_WGSL}
// channels e .. e + 3 (e a multiple of 4) of position j of the sequence history ++ x of batch row b (zero past
// its end)
fn quadRow(b: u32, j: u32, e: u32) -> vec4<f32> {
  if (j >= p.L + HK) { return vec4<f32>(0.0); }
  if (j < HK) {
    if (p.hasState != 0u) { return stateIn[((b * HK + j) * p.E + e) / 4u]; }
    return vec4<f32>(0.0);
  }
  return x[((b * p.L + j - HK) * p.ldx + p.offx + e) / 4u];
}`,
  fn: /* wgsl */ `
fn conv1dSiluQuad(gid: vec3<u32>) {
  let q = quadOf(gid);
  if (!q.ok) { return; }
  let pre = quadPre(quadWindow(q), q.e);
  for (var tt = 0u; tt < RUN; tt++) {
    let t = q.t0 + tt;
    if (t >= p.L) { break; }
    let s = pre[tt];
    out[((q.b * p.L + t) * p.E + q.e) / 4u] = s / (1.0 + exp(-s));
  }
  if (q.t0 == 0u && p.hasState != 0u) {
    for (var j = 0u; j < HK; j++) { stateOut[((q.b * HK + j) * p.E + q.e) / 4u] = quadRow(q.b, p.L + j, q.e); }
  }
}`,
});

const conv1dSiluQuadKernel = defineKernel({
  name: "conv1d_silu_quad",
  wgsl: (s: { K: number }) => standaloneWgsl(convQuadParts(s.K), "256", "conv1dSiluQuad(gid)"),
  label: (s) => `conv1d_silu_quad_k${s.K}`,
  example: { K: 4 },
});

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
  if (convQuadFits(a.E, a.K, [{ ld: a.ldx, off: a.offx }])) {
    const parts = convQuadParts(a.K);
    const k = gpu.kernel(conv1dSiluQuadKernel, { K: a.K });
    const [gx, gy] = convQuadGrid(gpu, a.B, a.L, a.E);
    gpu.dispatch(k, bindingsByName(parts, { x: a.x, weight: a.weight, bias: a.bias ?? gpu.dummy, stateIn: a.stateIn ?? gpu.dummy, out: a.out, stateOut: a.stateOut ?? gpu.dummyOut }),
      paramBlock(parts.params, { B: a.B, L: a.L, E: a.E, ldx: a.ldx, offx: a.offx, hasBias: !!a.bias, hasState: !!a.stateIn, groupsX: gx }), [gx, gy]);
    return;
  }
  const k = gpu.kernel(conv1dSiluKernel, null);
  const [gx, gy] = grid(Math.ceil((a.B * a.L * a.E) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(conv1dSiluParts, { x: a.x, weight: a.weight, bias: a.bias ?? gpu.dummy, stateIn: a.stateIn ?? gpu.dummy, out: a.out, stateOut: a.stateOut ?? gpu.dummyOut }),
    paramBlock(conv1dSiluParts.params, { B: a.B, L: a.L, E: a.E, K: a.K, ldx: a.ldx, offx: a.offx, hasBias: !!a.bias, hasState: !!a.stateIn, groupsX: gx }), [gx, gy]);
}
