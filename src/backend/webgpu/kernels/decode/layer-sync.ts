/**
 * Fused decode, a whole layer in one dispatch (WebGpuTuning.decodeGridSync): the three kernels of mixer-in.ts,
 * mixer-scan.ts and matvec.ts as three phases of one kernel, its workgroups waiting for each other between them
 * through atomics in GPU memory instead of through dispatch boundaries. A dependent dispatch costs 6 – 10 us on
 * Dawn/Vulkan whatever it does (BENCHMARKS.md), about two thirds of a 130m layer; a wait here costs an L2 round
 * trip or two.
 *
 * Workgroup g owns CH channels, as in mixer-in.ts:
 *  1. residual add + RMSNorm of every row (each workgroup; workgroup 0 writes the new residual), in_proj rows of
 *     its channels, conv + SiLU (x and z stay in workgroup memory), its partial x_proj, published as Q[g];
 *  2. once all G partials are in: their sum (dt | B | C), dt_proj of its channels, the scan step (states in
 *     place) and the gate; y of its channels published;
 *  3. once all of y is in: rows g·8 + 8·G·k of out_proj (32 threads a row), written as the next layer's input.
 *
 * Synchronisation. WGSL atomics are relaxed: a counter's increment may become visible before the values written
 * just before it. So every published value is itself an atomic word, cleared beforehand to a NaN pattern no
 * arithmetic produces; a reader waits for the counter (cheap to poll), then reads the values and polls any word
 * that still holds the pattern. Exchange areas alternate between two sets by layer: a layer clears the set the
 * previous layer used (that dispatch has finished) for the next one.
 *
 * WebGPU does not promise that the G workgroups of a dispatch run at the same time; this kernel needs them to
 * (G ≤ 128 for the 130m – 1.4b shapes; an H100/H200 has 132 SMs). Every wait gives up after `spinLimit` polls
 * and raises a flag the backend reads, so a GPU that does not co-schedule them gets an error, not a hang.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params } from "../../gpu.ts";
import { type WeightStorage, weight4Binding, weight4Reader, weightBinding, weightReader } from "../weights.ts";
import { SOFTPLUS_WGSL } from "../wgsl-common.ts";
import { DECODE_MAX_B, DECODE_MAX_BD, DECODE_MAX_K } from "./mixer-in.ts";

/** The pattern a cleared exchange word holds: a NaN whose payload no float arithmetic here yields. */
export const SYNC_EMPTY = 0x7fbadbad;
/** Words of scratch before the exchange sets: h [2, B, D] | res [2, B, D] | the timeout flag (padded to 4). */
export const syncLayout = (B: number, D: number, E: number, J: number, G: number) => {
  const h = 0, res = 2 * B * D, flag = 4 * B * D;
  const sets = flag + 4;
  const setWords = Math.ceil((2 + G * B * J + B * E) / 4) * 4; // counters (Q, y) | Q [G, B, J] | y [B, E]
  return { h, res, flag, sets, setWords, words: sets + 2 * setWords };
};
/** B · E values of y one workgroup stages for out_proj (in the normalized-input array, free by then). */
export const SYNC_MAX_BE = DECODE_MAX_BD;

const wgsl = (CH: number, N: number, wsIn: WeightStorage, wsX: WeightStorage, wsDt: WeightStorage, wsOut: WeightStorage) => /* wgsl */ `
// bindings: 0 S scratch (atomic words: h, res, flag, exchange sets) | 1 lp (layer constants) | 2 Win [2E, D]
//           3 Wx [J, E] | 4 Wdt [E, R] | 5 Wout [D, E] | 6 convState [B, K-1, E] | 7 ssm [B, E, N] | 8 params
// grid: (G = ceil(E / CH))
const WG = 256u;
const MAXB = ${DECODE_MAX_B}u;
const MAXU = ${DECODE_MAX_BD}u;
const CH = ${CH}u;           // channels per workgroup
const ROWS = 2u * CH;        // their in_proj rows: x then z
const TPR = WG / ROWS;       // threads per in_proj row
const TPC = WG / CH;         // threads per channel in dt_proj
const N = ${N}u;
const MAXK = ${DECODE_MAX_K - 1}u;
const BATCH = 4u;
const LB = 8u;               // exchange words a thread loads before it looks at them
const EMPTY = ${SYNC_EMPTY}u;

struct P {
  B: u32, D: u32, E: u32, K: u32, J: u32, R: u32, G: u32, hasRes: u32, par: u32, eps: f32,
  oNorm: u32, oInBias: u32, oConvW: u32, oConvB: u32, oPack: u32, oOutBias: u32, hasOutBias: u32,
  xo: u32, xoNext: u32, setWords: u32, oH: u32, oRes: u32, oFlag: u32, spinLimit: u32,
}
@group(0) @binding(0) var<storage, read_write> S: array<atomic<u32>>;
@group(0) @binding(1) var<storage, read> lp: array<f32>;
@group(0) @binding(2) var<storage, read> wIn: array<${weight4Binding(wsIn)}>;
@group(0) @binding(3) var<storage, read> wX: array<${weightBinding(wsX)}>;
@group(0) @binding(4) var<storage, read> wDt: array<${weightBinding(wsDt)}>;
@group(0) @binding(5) var<storage, read> wOut: array<${weight4Binding(wsOut)}>;
@group(0) @binding(6) var<storage, read_write> convState: array<f32>;
@group(0) @binding(7) var<storage, read_write> ssm: array<f32>;
@group(0) @binding(8) var<uniform> p: P;

var<workgroup> us: array<f32, MAXU>;          // normalized input rows [B, D]; then x_proj [B, J]; then y [B, E]
var<workgroup> red: array<f32, WG * MAXB>;    // partial sums
var<workgroup> rowOut: array<f32, MAXB * ROWS>;
var<workgroup> xcs: array<f32, MAXB * CH>;    // conv outputs of this group's channels
var<workgroup> zs: array<f32, MAXB * CH>;     // and their gates
var<workgroup> dts: array<f32, MAXB * CH>;    // delta [B, CH]

${weight4Reader(wsIn, "win4", "wIn")}
${weightReader(wsX, "wx", "wX")}
${weightReader(wsDt, "wdt", "wDt")}
${weight4Reader(wsOut, "wout4", "wOut")}
${SOFTPLUS_WGSL}

fn ld(i: u32) -> f32 { return bitcast<f32>(atomicLoad(&S[i])); }
fn st(i: u32, v: f32) { atomicStore(&S[i], bitcast<u32>(v)); }

/** Polls word i until it is published (or the spin limit passes: then the flag is raised). */
fn waitFor(i: u32) -> f32 {
  var v = atomicLoad(&S[i]);
  for (var n = 0u; v == EMPTY && n < p.spinLimit; n++) { v = atomicLoad(&S[i]); }
  if (v == EMPTY) { atomicMax(&S[p.oFlag], 1u); }
  return bitcast<f32>(v);
}

/** Thread 0 polls counter c until all G workgroups have counted (or the spin limit passes). */
fn awaitCount(c: u32) {
  var n = 0u;
  while (atomicLoad(&S[c]) < p.G && n < p.spinLimit) { n++; }
  if (n >= p.spinLimit) { atomicMax(&S[p.oFlag], 1u); }
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let t = lid.x;
  let B = p.B;
  let D = p.D;
  let E = p.E;
  let J = p.J;
  let e0 = wg.x * CH;
  let cntQ = p.xo;
  let cntY = p.xo + 1u;
  let oQ = p.xo + 2u;
  let oY = oQ + p.G * B * J;
  let inH = p.oH + p.par * B * D;
  let outH = p.oH + (1u - p.par) * B * D;

  // 0. clear the other exchange set for the next layer (the previous layer, which used it, has finished)
  for (var i = wg.x * WG + t; i < p.setWords; i += p.G * WG) {
    atomicStore(&S[p.xoNext + i], select(EMPTY, 0u, i < 2u));
  }

  // 1a. residual add + RMSNorm of every row
  for (var b = 0u; b < B; b++) {
    var ss = 0.0;
    for (var d = t; d < D; d += WG) {
      var v = ld(inH + b * D + d);
      if (p.hasRes != 0u) { v += ld(p.oRes + p.par * B * D + b * D + d); }
      if (wg.x == 0u) { st(p.oRes + (1u - p.par) * B * D + b * D + d, v); }
      us[b * D + d] = v;
      ss = fma(v, v, ss);
    }
    red[t] = ss;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
      if (t < s) { red[t] += red[t + s]; }
      workgroupBarrier();
    }
    let inv = inverseSqrt(red[0] / f32(D) + p.eps);
    workgroupBarrier();
    for (var d = t; d < D; d += WG) { us[b * D + d] *= inv * lp[p.oNorm + d]; }
  }
  workgroupBarrier();

  // 1b. in_proj rows x[e], z[e] of this group's channels
  {
    let row = t / TPR;
    let q = t % TPR;
    let c = row % CH;
    let e = e0 + c;
    let grow = select(e, E + e, row >= CH);
    var acc: array<f32, MAXB>;
    if (e < E) {
      let D4 = D / 4u;
      for (var k0 = q; k0 < D4; k0 += BATCH * TPR) {
        var wv: array<vec4<f32>, BATCH>;
        for (var k = 0u; k < BATCH; k++) {
          if (k0 + k * TPR < D4) { wv[k] = win4(grow * D4 + k0 + k * TPR); }
        }
        for (var k = 0u; k < BATCH; k++) {
          let k4 = k0 + k * TPR;
          if (k4 < D4) {
            for (var b = 0u; b < B; b++) {
              let o = b * D + 4u * k4;
              acc[b] = fma(wv[k].x, us[o], fma(wv[k].y, us[o + 1u], fma(wv[k].z, us[o + 2u], fma(wv[k].w, us[o + 3u], acc[b]))));
            }
          }
        }
      }
    }
    for (var b = 0u; b < MAXB; b++) { red[t * MAXB + b] = acc[b]; }
    workgroupBarrier();
    if (q == 0u && e < E) {
      for (var b = 0u; b < B; b++) {
        var s = lp[p.oInBias + grow];
        for (var j = 0u; j < TPR; j++) { s += red[(t + j) * MAXB + b]; }
        rowOut[b * ROWS + row] = s;
      }
    }
    workgroupBarrier();
  }

  // 1c. causal conv + SiLU, one thread per (b, channel); the history shifts in place
  let H = p.K - 1u;
  for (var i = t; i < B * CH; i += WG) {
    let b = i / CH;
    let cc = i % CH;
    let ee = e0 + cc;
    var xc = 0.0;
    var zv = 0.0;
    if (ee < E) {
      let xv = rowOut[b * ROWS + cc];
      var hist: array<f32, MAXK>;
      for (var j = 0u; j < MAXK; j++) { if (j < H) { hist[j] = convState[(b * H + j) * E + ee]; } }
      var s = lp[p.oConvB + ee];
      for (var j = 0u; j < MAXK; j++) { if (j < H) { s = fma(lp[p.oConvW + ee * p.K + j], hist[j], s); } }
      s = fma(lp[p.oConvW + ee * p.K + H], xv, s);
      for (var j = 0u; j < MAXK; j++) {
        if (j + 1u < H) { convState[(b * H + j) * E + ee] = hist[j + 1u]; }
      }
      if (H > 0u) { convState[(b * H + H - 1u) * E + ee] = xv; }
      xc = s / (1.0 + exp(-s));
      zv = rowOut[b * ROWS + CH + cc];
    }
    xcs[b * CH + cc] = xc;
    zs[b * CH + cc] = zv;
  }
  workgroupBarrier();

  // 1d. this group's share of x_proj, published
  for (var j = t; j < J; j += WG) {
    var a: array<f32, MAXB>;
    for (var b = 0u; b < MAXB; b++) { a[b] = 0.0; } // zeroed each pass: a declaration in a loop is not, on Dawn
    for (var cc = 0u; cc < CH; cc++) {
      let ee = e0 + cc;
      if (ee < E) {
        let wv = wx(j * E + ee);
        for (var b = 0u; b < B; b++) { a[b] = fma(wv, xcs[b * CH + cc], a[b]); }
      }
    }
    for (var b = 0u; b < B; b++) { st(oQ + (wg.x * B + b) * J + j, a[b]); }
  }
  workgroupBarrier();
  if (t == 0u) {
    atomicAdd(&S[cntQ], 1u);
    awaitCount(cntQ);
  }
  workgroupBarrier();

  // 2a. x_proj = the sum of the G partials (dt | B | C, into us: the normalized input is used up). SL slices of
  // threads share an output, each loading LB partials at a time before looking at any (a wait per load would
  // expose an L2 round trip per partial), then the slices' sums are added in order
  let BJ = B * J;
  let SL = max(1u, WG / BJ);
  let slice = t % SL;
  for (var i = t / SL; i < BJ; i += WG / SL) {
    var s = 0.0;
    for (var g0 = slice; g0 < p.G; g0 += LB * SL) {
      var v: array<u32, LB>;
      for (var k = 0u; k < LB; k++) {
        v[k] = 0u;
        let g = g0 + k * SL;
        if (g < p.G) { v[k] = atomicLoad(&S[oQ + g * BJ + i]); }
      }
      for (var k = 0u; k < LB; k++) {
        let g = g0 + k * SL;
        if (g < p.G) {
          if (v[k] == EMPTY) { s += waitFor(oQ + g * BJ + i); } else { s += bitcast<f32>(v[k]); }
        }
      }
    }
    red[slice * BJ + i] = s;
  }
  workgroupBarrier();
  for (var i = t; i < BJ; i += WG) {
    var s = 0.0;
    for (var k = 0u; k < SL; k++) { s += red[k * BJ + i]; }
    us[i] = s;
  }
  workgroupBarrier();

  // 2b. dt_proj of this group's channels: TPC threads a channel over R
  {
    let c = t / TPC;
    let rs = t % TPC;
    let e = e0 + c;
    var acc: array<f32, MAXB>;
    if (e < E) {
      for (var r = rs; r < p.R; r += TPC) {
        let wv = wdt(e * p.R + r);
        for (var b = 0u; b < B; b++) { acc[b] = fma(wv, us[b * J + r], acc[b]); }
      }
    }
    for (var b = 0u; b < MAXB; b++) { red[t * MAXB + b] = acc[b]; }
    workgroupBarrier();
    if (rs == 0u && e < E) {
      for (var b = 0u; b < B; b++) {
        var s = lp[p.oPack + e * (N + 2u) + N]; // dt bias
        for (var k = 0u; k < TPC; k++) { s += red[(t + k) * MAXB + b]; }
        dts[b * CH + c] = softplus(s);
      }
    }
    workgroupBarrier();
  }

  // 2c. the scan step per (b, channel), N states in place; y published
  for (var i = t; i < B * CH; i += WG) {
    let b = i / CH;
    let cc = i % CH;
    let ee = e0 + cc;
    if (ee < E) {
      let pk = p.oPack + ee * (N + 2u);
      let dt = dts[b * CH + cc];
      let uv = xcs[b * CH + cc];
      let zv = zs[b * CH + cc];
      let du = dt * uv;
      let s0 = (b * E + ee) * N;
      var out = 0.0;
      for (var n = 0u; n < N; n++) {
        let hn = fma(exp2(dt * lp[pk + n]), ssm[s0 + n], du * us[b * J + p.R + n]);
        ssm[s0 + n] = hn;
        out = fma(hn, us[b * J + p.R + N + n], out);
      }
      out = fma(lp[pk + N + 1u], uv, out);
      st(oY + b * E + ee, out * zv / (1.0 + exp(-zv)));
    }
  }
  workgroupBarrier();
  if (t == 0u) {
    atomicAdd(&S[cntY], 1u);
    awaitCount(cntY);
  }
  workgroupBarrier();

  // 3. out_proj: y staged in workgroup memory (LB loads at a time, as in 2a), then 32 threads a row of W_out,
  // rows g·8 + 8·G·k
  for (var i0 = t; i0 < B * E; i0 += LB * WG) {
    var v: array<u32, LB>;
    for (var k = 0u; k < LB; k++) {
      v[k] = 0u;
      if (i0 + k * WG < B * E) { v[k] = atomicLoad(&S[oY + i0 + k * WG]); }
    }
    for (var k = 0u; k < LB; k++) {
      let i = i0 + k * WG;
      if (i < B * E) {
        if (v[k] == EMPTY) { us[i] = waitFor(oY + i); } else { us[i] = bitcast<f32>(v[k]); }
      }
    }
  }
  workgroupBarrier();
  let lane = t % 32u;
  let E4 = E / 4u;
  for (var n0 = wg.x * 8u; n0 < D; n0 += p.G * 8u) {
    let n = n0 + t / 32u;
    var s: array<f32, MAXB>;
    for (var b = 0u; b < MAXB; b++) { s[b] = 0.0; } // (as in 1d)
    if (n < D) {
      for (var k0 = lane; k0 < E4; k0 += 32u * BATCH) {
        var wv: array<vec4<f32>, BATCH>;
        for (var k = 0u; k < BATCH; k++) {
          if (k0 + 32u * k < E4) { wv[k] = wout4(n * E4 + k0 + 32u * k); }
        }
        for (var k = 0u; k < BATCH; k++) {
          let k4 = k0 + 32u * k;
          if (k4 < E4) {
            for (var b = 0u; b < B; b++) {
              let o = b * E + k4 * 4u;
              s[b] = fma(wv[k].x, us[o], fma(wv[k].y, us[o + 1u], fma(wv[k].z, us[o + 2u], fma(wv[k].w, us[o + 3u], s[b]))));
            }
          }
        }
      }
    }
    for (var b = 0u; b < MAXB; b++) { red[b * WG + t] = s[b]; }
    workgroupBarrier();
    for (var w = 16u; w > 0u; w >>= 1u) {
      if (lane < w) {
        for (var b = 0u; b < B; b++) { red[b * WG + t] += red[b * WG + t + w]; }
      }
      workgroupBarrier();
    }
    if (lane == 0u && n < D) {
      var bias = 0.0;
      if (p.hasOutBias != 0u) { bias = lp[p.oOutBias + n]; }
      for (var b = 0u; b < B; b++) { st(outH + b * D + n, red[b * WG + t] + bias); }
    }
    workgroupBarrier();
  }
}
`;

export interface LayerSyncArgs {
  B: number; D: number; E: number; K: number; J: number; R: number; N: number; eps: number;
  CH: number; G: number; hasRes: boolean; par: number;
  scratch: Buf; layout: ReturnType<typeof syncLayout>; set: number; spinLimit: number;
  lp: Buf; oNorm: number; oInBias: number; oConvW: number; oConvB: number; oPack: number; oOutBias: number; hasOutBias: boolean;
  wIn: Buf; wsIn: WeightStorage; wX: Buf; wsX: WeightStorage; wDt: Buf; wsDt: WeightStorage; wOut: Buf; wsOut: WeightStorage;
  convState: Buf; ssm: Buf;
}

/** One layer of the fused decode in one dispatch (see the top of this file). */
export function decodeLayerSync(gpu: Gpu, a: LayerSyncArgs): void {
  const k = gpu.kernel(`decode_layer_sync_${a.CH}_${a.N}_${a.wsIn}_${a.wsX}_${a.wsDt}_${a.wsOut}`,
    () => wgsl(a.CH, a.N, a.wsIn, a.wsX, a.wsDt, a.wsOut));
  const L = a.layout;
  const p = new Params().u32(a.B).u32(a.D).u32(a.E).u32(a.K).u32(a.J).u32(a.R).u32(a.G).bool(a.hasRes).u32(a.par).f32(a.eps)
    .u32(a.oNorm).u32(a.oInBias).u32(a.oConvW).u32(a.oConvB).u32(a.oPack).u32(a.oOutBias).bool(a.hasOutBias)
    .u32(L.sets + a.set * L.setWords).u32(L.sets + (1 - a.set) * L.setWords).u32(L.setWords)
    .u32(L.h).u32(L.res).u32(L.flag).u32(a.spinLimit);
  gpu.dispatch(k, [a.scratch, a.lp, a.wIn, a.wX, a.wDt, a.wOut, a.convState, a.ssm], p, [a.G]);
}
