/**
 * Fused decode, kernel 1 of 3 per layer (one token per row, B rows): everything from the layer's input to its
 * share of x_proj, in one dispatch. Each workgroup owns CH channels and, in order:
 *  0. issues every load that needs nothing computed here: the first in_proj weights, the layer input, the conv's
 *     history and weights, its chunks of Wx (so that their latencies overlap instead of adding up);
 *  1. adds the residual and takes each row's sum of squares for the RMS norm (every workgroup does this: D values
 *     a row are cheap to read, and it saves a dispatch); workgroup 0 writes the new residual;
 *  2. computes its 2·CH rows of in_proj (x and z of each channel), TPR threads a row reading 4-wide, over the
 *     input times the norm weight; the norm's scale 1/rms is a factor of each row's sum, applied at the end;
 *  3. applies the causal conv (state shifted in place: the thread of (b, e) alone reads and writes it) and SiLU,
 *     writing x and z to xz [B, 2E];
 *  4. writes its partial x_proj Q[g, b, j] = Σ_{e of this group} Wx[j, e] · x[b, e]; kernel 2 sums over groups.
 * The residual lives in one [2, B, D] buffer: this layer reads half `par` and writes half 1 - par.
 *
 * With `acc` the partials of step 4 are added into fixed-point totals (./fixed.ts) instead of a slot per
 * workgroup, so that kernel 2 reads J values a row rather than G. The kernel also clears the totals the previous
 * layer's kernel 2 read (the first layer: the last layer's), which the next step's kernel 1 of that layer adds into.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { type ParamType, type WgslParts, paramBlock, standaloneWgsl } from "../compose.ts";
import { DECODE_CONV_MAX_K, convTapWgsl } from "./conv-step.ts";
import { type WeightStorage, weight4Binding, weight4Reader, weightBinding, weightReader } from "../weights.ts";
import { fixedAddWgsl } from "./fixed.ts";
import { defineKernel } from "../../kernel-def.ts";

export const DECODE_MAX_B = 8;
/** Rows × hidden size that fit the workgroup's copy of the normalized input (kept at 16 KiB of workgroup memory). */
export const DECODE_MAX_BD = 4096;
/** Conv kernel sizes the fused decode takes (the history is held in registers). */
export const DECODE_MAX_K = DECODE_CONV_MAX_K;

/** The fixed-point variant (./fixed.ts): the magnitude below which a partial of x_proj may be added, and the words
 *  from one total to the next. */
export interface MixerInAcc { limit: number; stride: number }

const MIXER_IN_PARAMS: [string, ParamType][] = [["hasRes", "u32"], ["par", "u32"], ["eps", "f32"], ["oNorm", "u32"],
  ["oInBias", "u32"], ["oConvW", "u32"], ["oConvB", "u32"], ["oX", "u32"], ["oZero", "u32"], ["nZero", "u32"]];

/** The shape of one compiled kernel 1: D, E, K, J and RB (the dispatch's rows) are constants of it, so that every
 *  loop over rows, weights and taps has a constant bound and its loads can be issued together. */
export interface MixerInShape {
  CH: number; D: number; E: number; K: number; J: number; wsIn: WeightStorage; wsX: WeightStorage;
  loadBytes: number; RB: number; acc: MixerInAcc | null;
}

/**
 * Kernel 1 as parts (../compose.ts): the phase function `mixerIn(t, g, ng)` does the work of group g of ng.
 * `shared` (the one-dispatch layer, ./layer.ts): xz is written with atomic stores, so that other workgroups of the
 * same dispatch read it from the device's cache rather than a stale copy in their own.
 */
export function mixerInParts(s: MixerInShape, shared = false): WgslParts {
  const { CH, D, E, K, J, wsIn, wsX, loadBytes, RB, acc } = s;
  if (shared && !acc) throw new Error("mixerInParts: the shared variant adds x_proj into fixed-point totals");
  // 4-value groups a thread loads together (quantized groups, 2 – 4 bytes, are counted as halves: 8 bytes)
  const BATCH = loadBytes / (wsIn === "f32" ? 16 : 8);
  const TPR = 256 / (2 * CH);
  const CC = Math.min(CH, 8); // channels of a chunk of Wx a thread holds (a row's CC weights side by side)
  const consts: [string, string][] = [
    ["WG", "256u"],
    ["MAXB", `${DECODE_MAX_B}u`],
    ["RB", `${RB}u`], // the dispatch's rows (B = RB): register loops run to it
    ["D", `${D}u`],
    ["E", `${E}u`],
    ["CH", `${CH}u`], // channels per workgroup
    ["J", `${J}u`], // x_proj outputs
    ["ROWS", `${2 * CH}u`], // their in_proj rows: x then z
    ["TPR", `${TPR}u`], // threads per in_proj row
    ["D4", `${D / 4}u`],
    ["BATCH", `${BATCH}u`], // in_proj loads issued together: loadBytes a thread (f32 vec4s or packed-half pairs)
    ["NIT", `${Math.ceil(D / 4 / (BATCH * TPR))}u`], // batches of in_proj loads a thread
    ["KD", `${Math.ceil(D / 256)}u`], // input values a thread a row
    ["KC", `${Math.ceil((RB * CH) / 256)}u`], // (row, channel) pairs of the conv a thread
    ["CC", `${CC}u`], // channels of a chunk of Wx
    ["NCC", `${CH / CC}u`], // chunks of a row of Wx in this group
    ["KI", `${Math.ceil((J * (CH / CC)) / 256)}u`], // chunks a thread holds: item i is output i / NCC, chunk i % NCC
  ];
  const params = MIXER_IN_PARAMS;
  const bindings: [string, string][] = [
    ["h", `var<storage, ${shared ? "read_write" : "read"}> h: array<f32>`], // [B, D] (the one-dispatch layer writes it last)
    ["res", "var<storage, read_write> res: array<f32>"], // [2, B, D]
    ["lp", "var<storage, read> lp: array<f32>"], // the layer's constants
    ["wIn", `var<storage, read> wIn: array<${weight4Binding(wsIn)}>`], // [2E, D]
    ["wX", `var<storage, read> wX: array<${weightBinding(wsX)}>`], // [J, E]
    ["convState", "var<storage, read_write> convState: array<f32>"], // [B, K-1, E] in/out
    ["xz", `var<storage, read_write> xz: array<${shared ? "atomic<u32>" : "f32"}>`], // [B, 2E] out
    // x_proj: fixed-point totals (this layer's region from word oX, and the region to clear), or a partial a group
    acc ? ["xacc", "var<storage, read_write> xacc: array<atomic<u32>>"] : ["Q", "var<storage, read_write> Q: array<f32>"],
  ];
  const decls = /* wgsl */ `
var<workgroup> us: array<f32, ${RB * D}>;  // input rows [B, D] times the norm weight (the norm's scale comes later)
var<workgroup> red: array<f32, ${RB * Math.max(256, J)}>; // partial sums
var<workgroup> rowOut: array<f32, ${RB * 2 * CH}>;
var<workgroup> xcs: array<f32, ${RB * CH}>;    // conv outputs of this group's channels
fn xzStore(i: u32, v: f32) { ${shared ? "atomicStore(&xz[i], bitcast<u32>(v));" : "xz[i] = v;"} }

${weight4Reader(wsIn, "win4", "wIn")}
${weightReader(wsX, "wx", "wX")}
${convTapWgsl(K)}
${acc ? fixedAddWgsl("xacc", acc.limit) : ""}

// chunk i of Wx (clamped: items past J · NCC and channels past E load valid weights, whose products are dropped
// or meet zeros in xcs)
fn loadWxChunk(e0: u32, i: u32) -> array<f32, CC> {
  var w: array<f32, CC>;
  let j = min(i / NCC, J - 1u);
  for (var c = 0u; c < CC; c++) { w[c] = wx(j * E + min(e0 + (i % NCC) * CC + c, E - 1u)); }
  return w;
}

`;
  const fn = /* wgsl */ `
// group g of ng: channels g·CH ..
fn mixerIn(t: u32, g: u32, ng: u32) {
  let e0 = g * CH;

  // 0. every load that needs nothing computed here goes out first, so that all are in flight together (indices
  //    are clamped rather than guarded: behind a bounds check each load waits for the one before); the excess
  //    values are never used
  let row = t / TPR;          // in_proj: this thread's row and its share of it
  let q = t % TPR;
  let c = row % CH;
  let e = e0 + c;
  let ec = min(e, E - 1u);
  let grow = select(ec, E + ec, row >= CH);
  var wv: array<vec4<f32>, BATCH>;
  for (var k = 0u; k < BATCH; k++) { wv[k] = win4(grow * D4 + min(q + k * TPR, D4 - 1u)); }
  let inBias = lp[p.oInBias + grow];
  var hv: array<array<f32, KD>, RB>; // the layer input (h + residual), KD values a row
  var gv: array<f32, KD>;            // and the norm weights at them
  for (var k = 0u; k < KD; k++) {
    let d = min(t + k * WG, D - 1u);
    gv[k] = lp[p.oNorm + d];
    for (var b = 0u; b < RB; b++) {
      let r = res[p.par * RB * D + b * D + d];
      hv[b][k] = h[b * D + d] + select(0.0, r, p.hasRes != 0u);
    }
  }
  var taps: array<ConvTap, KC>; // the conv's history, weights and bias of each (row, channel) pair
  for (var k = 0u; k < KC; k++) {
    let i = t + k * WG;
    taps[k] = loadConvTap(min(i / CH, RB - 1u), min(e0 + i % CH, E - 1u));
  }
  var wxv: array<array<f32, CC>, KI>; // x_proj: chunks of CC channels of rows of Wx
  for (var k = 0u; k < KI; k++) { wxv[k] = loadWxChunk(e0, t + k * WG); }

  // 1. residual add (workgroup 0 writes the new residual) and the norm's sum of squares of every row; the rows are
  //    kept times the norm weight, unscaled: in_proj's sums take the scale at the end
  var ss: array<f32, RB>;
  for (var b = 0u; b < RB; b++) { ss[b] = 0.0; }
  for (var k = 0u; k < KD; k++) {
    let d = t + k * WG;
    if (d < D) {
      for (var b = 0u; b < RB; b++) {
        let v = hv[b][k];
        if (g == 0u) { res[(1u - p.par) * RB * D + b * D + d] = v; }
        us[b * D + d] = v * gv[k];
        ss[b] = fma(v, v, ss[b]);
      }
    }
  }
  for (var b = 0u; b < RB; b++) { red[b * WG + t] = ss[b]; }
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (t < s) { for (var b = 0u; b < RB; b++) { red[b * WG + t] += red[b * WG + t + s]; } }
    workgroupBarrier();
  }
  var inv: array<f32, RB>;
  for (var b = 0u; b < RB; b++) { inv[b] = inverseSqrt(red[b * WG] / f32(D) + p.eps); }
  workgroupBarrier(); // red is read by all before step 2 reuses it

  // 2. in_proj rows x[e], z[e] of this group's channels, the first batch of weights loaded in step 0
  var acc: array<f32, RB>;
  for (var b = 0u; b < RB; b++) { acc[b] = 0.0; }
  for (var it = 0u; it < NIT; it++) {
    if (it > 0u) {
      for (var k = 0u; k < BATCH; k++) { wv[k] = win4(grow * D4 + min(q + (it * BATCH + k) * TPR, D4 - 1u)); }
    }
    for (var k = 0u; k < BATCH; k++) {
      let k4 = q + (it * BATCH + k) * TPR;
      if (k4 < D4) {
        for (var b = 0u; b < RB; b++) {
          let o = b * D + 4u * k4;
          acc[b] = fma(wv[k].x, us[o], fma(wv[k].y, us[o + 1u], fma(wv[k].z, us[o + 2u], fma(wv[k].w, us[o + 3u], acc[b]))));
        }
      }
    }
  }
  for (var b = 0u; b < RB; b++) { red[t * RB + b] = acc[b]; }
  workgroupBarrier();
  if (q == 0u && e < E) {
    for (var b = 0u; b < RB; b++) {
      var s = 0.0;
      for (var j = 0u; j < TPR; j++) { s += red[(t + j) * RB + b]; }
      rowOut[b * ROWS + row] = fma(inv[b], s, inBias);
    }
  }
  workgroupBarrier();

  // 3. causal conv over (history, x) and SiLU, a thread per (row, channel)
  for (var k = 0u; k < KC; k++) {
    let i = t + k * WG;
    if (i < RB * CH) {
      let b = i / CH;
      let cc = i % CH;
      let ee = e0 + cc;
      var xc = 0.0;
      if (ee < E) {
        xc = convApply(taps[k], b, ee, rowOut[b * ROWS + cc]);
        xzStore(b * 2u * E + ee, xc);
        xzStore(b * 2u * E + E + ee, rowOut[b * ROWS + CH + cc]);
      }
      xcs[b * CH + cc] = xc; // zero past E, so the clamped weights there add nothing
    }
  }
  workgroupBarrier();

  // 4. this group's share of x_proj, Q[g, b, j] = Σ_{e of this group} Wx[j, e] · x[b, e]: a thread per chunk of CC
  //    channels of a row of Wx (the weights loaded in step 0), the NCC chunks of a row added in workgroup memory
  var part: array<array<f32, RB>, KI>;
  for (var k = 0u; k < KI; k++) {
    let c0 = ((t + k * WG) % NCC) * CC;
    for (var b = 0u; b < RB; b++) {
      var s = 0.0;
      for (var cc = 0u; cc < CC; cc++) { s = fma(wxv[k][cc], xcs[b * CH + c0 + cc], s); }
      part[k][b] = s;
    }
  }
  // NCC passes, a barrier each: a pass adds one chunk of every output into red [J, RB], so no two threads write
  // one place
  for (var n = 0u; n < NCC; n++) {
    for (var k = 0u; k < KI; k++) {
      let i = t + k * WG;
      if (i < J * NCC && i % NCC == n) {
        let j = i / NCC;
        for (var b = 0u; b < RB; b++) { red[j * RB + b] = select(red[j * RB + b] + part[k][b], part[k][b], n == 0u); }
      }
    }
    workgroupBarrier();
  }
${acc ? `  for (var j = t; j < J; j += WG) {
    for (var b = 0u; b < RB; b++) { fixedAdd(p.oX + ${acc.stride}u * (b * J + j), p.oX + ${acc.stride}u * RB * J, red[j * RB + b]); }
  }
  // the totals the previous layer's kernel 2 read, cleared for the next step (the values and the poison word)
  for (var i = g * WG + t; i < p.nZero; i += WG * ng) {
    fixedClear(p.oZero + i * ${acc.stride}u);
  }` : `  for (var j = t; j < J; j += WG) {
    for (var b = 0u; b < RB; b++) { Q[(g * RB + b) * J + j] = red[j * RB + b]; }
  }`}
}
`;
  return { consts, params, bindings, decls, fn };
}

/** The standalone kernel's WGSL (exported for inspection). */
export const mixerInWgsl = (s: MixerInShape) => standaloneWgsl(mixerInParts(s), "256", "mixerIn(lid.x, wg.x, nwg.x)");

export interface MixerInArgs {
  B: number; D: number; E: number; K: number; J: number; eps: number;
  h: Buf; res: Buf; hasRes: boolean; par: number;
  lp: Buf; oNorm: number; oInBias: number; oConvW: number; oConvB: number;
  wIn: Buf; wsIn: WeightStorage; wX: Buf; wsX: WeightStorage;
  convState: Buf; xz: Buf; Q: Buf;
  channels?: number; // channels per workgroup (0 or absent: the default)
  loadBytes?: number; // bytes of in_proj a thread loads at once (DECODE_LOAD_BYTES_CHOICES; default 64)
  // the fixed-point variant: Q is then the buffer of x_proj's totals, this layer's region from word oX; nZero
  // values from word oZero are cleared (the poison word counts as one)
  acc?: { oX: number; oZero: number; nZero: number; limit: number; stride: number };
}

/** Bytes of weights a thread of the decode kernels (mixer-in's in_proj, matvec) loads before using any
 *  (WebGpuInternalTuning.decodeLoadBytes): more keeps more of the memory system busy, at the cost of registers. */
export const DECODE_LOAD_BYTES_CHOICES: readonly number[] = [64, 128, 256, 384];

/** Channels per workgroup the kernel may take (WebGpuInternalTuning.decodeChannels). */
export const DECODE_CHANNEL_CHOICES: readonly number[] = [4, 8, 16, 32, 64];

/**
 * Channels per workgroup: more groups read in_proj with more of the GPU; fewer leave kernel 2 fewer partials.
 * `chosen` (one of DECODE_CHANNEL_CHOICES) overrides the default.
 */
export function mixerInChannels(E: number, chosen = 0): number {
  return chosen > 0 ? chosen : E <= 2048 ? 16 : 32;
}

/** Kernel 1's groups (workgroups of its own dispatch): one per mixerInChannels(E, chosen) channels. */
export const mixerInGroups = (E: number, chosen = 0) => Math.ceil(E / mixerInChannels(E, chosen));

/** The compiled shape of kernel 1 for these arguments. */
export function mixerInShape(a: MixerInArgs): MixerInShape {
  const acc = a.acc ? { limit: a.acc.limit, stride: a.acc.stride } : null;
  return { CH: mixerInChannels(a.E, a.channels), D: a.D, E: a.E, K: a.K, J: a.J, wsIn: a.wsIn, wsX: a.wsX, loadBytes: a.loadBytes ?? 64, RB: a.B, acc };
}

/** Kernel 1's parameter values, by name. */
export function mixerInParams(a: MixerInArgs): Record<string, number | boolean> {
  return {
    hasRes: a.hasRes, par: a.par, eps: a.eps, oNorm: a.oNorm, oInBias: a.oInBias, oConvW: a.oConvW, oConvB: a.oConvB,
    oX: a.acc?.oX ?? 0, oZero: a.acc?.oZero ?? 0, nZero: a.acc?.nZero ?? 0,
  };
}

const mixerInKernel = defineKernel({
  name: "decode_in",
  wgsl: mixerInWgsl,
  label: (s) => `decode_in_${s.CH}_${s.D}_${s.E}_${s.K}_${s.J}_${s.wsIn}_${s.wsX}_${s.loadBytes}_r${s.RB}${s.acc ? `_acc${s.acc.limit}_${s.acc.stride}` : ""}`,
  example: { CH: 16, D: 768, E: 1536, K: 4, J: 80, wsIn: "f32", wsX: "f32", loadBytes: 256, RB: 1, acc: null },
});

/** Runs kernel 1 with CH = mixerInChannels(E, a.channels); returns its workgroups (the partials of x_proj). */
export function decodeMixerIn(gpu: Gpu, a: MixerInArgs): number {
  if (!Number.isInteger(a.B) || a.B < 1 || a.B > DECODE_MAX_B) throw new Error(`decodeMixerIn: ${a.B} rows, expected 1 to ${DECODE_MAX_B}`);
  if (a.B * a.J > 256 * DECODE_MAX_B) throw new Error(`decodeMixerIn: ${a.B} rows of ${a.J} x_proj outputs, expected at most ${256 * DECODE_MAX_B}`);
  if (a.D % 4 !== 0) throw new Error(`decodeMixerIn: hidden size ${a.D} is not a multiple of 4`);
  const k = gpu.kernel(mixerInKernel, mixerInShape(a));
  const groups = mixerInGroups(a.E, a.channels);
  gpu.dispatch(k, [a.h, a.res, a.lp, a.wIn, a.wX, a.convState, a.xz, a.Q], paramBlock(MIXER_IN_PARAMS, mixerInParams(a)), [groups]);
  return groups;
}
