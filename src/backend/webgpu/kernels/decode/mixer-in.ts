/**
 * Fused decode, kernel 1 of 3 per layer (one token per row, B rows): everything from the layer's input to its
 * share of x_proj, in one dispatch. Each workgroup owns CH channels and, in order:
 *  1. adds the residual and RMS-normalizes all B rows into workgroup memory (every workgroup does this: D values
 *     a row are cheap to read, and it saves a dispatch); workgroup 0 writes the new residual;
 *  2. computes its 2·CH rows of in_proj (x and z of each channel), TPR threads a row reading 4-wide;
 *  3. applies the causal conv (state shifted in place: the thread of (b, e) alone reads and writes it) and SiLU,
 *     writing x and z to xz [B, 2E];
 *  4. writes its partial x_proj Q[g, b, j] = Σ_{e of this group} Wx[j, e] · x[b, e]; kernel 2 sums over groups.
 * The residual lives in one [2, B, D] buffer: this layer reads half `par` and writes half 1 - par.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params } from "../../gpu.ts";
import { CONV_STEP_WGSL, DECODE_CONV_MAX_K, stageWxWgsl } from "./conv-step.ts";
import { type WeightStorage, weight4Binding, weight4Reader, weightBinding, weightReader } from "../weights.ts";

export const DECODE_MAX_B = 8;
/** Rows × hidden size that fit the workgroup's copy of the normalized input. */
export const DECODE_MAX_BD = 4096;
/** Conv kernel sizes the fused decode takes (the history is held in registers). */
export const DECODE_MAX_K = DECODE_CONV_MAX_K;

/** Channels of Wx staged at a time for x_proj of width J (a padded row of WC + 1 per output in \`red\`, free after
 *  step 2), or 0 where J is too wide to stage and each thread reads its row of Wx directly. */
function stagedChannels(CH: number, J: number): number {
  for (let wc = Math.min(CH, 16); wc >= 1; wc /= 2) if (J * (wc + 1) <= 256 * DECODE_MAX_B) return wc;
  return 0;
}

/** Step 4: this group's share of x_proj. Staged, 16 threads read a row of Wx side by side; a thread walking its
 *  own row touches a cache line per thread per load. */
function xprojWgsl(CH: number, J: number): string {
  const WC = stagedChannels(CH, J);
  if (WC === 0) return /* wgsl */ `
  // 4. this group's share of x_proj (too wide to stage: a thread per output reads its row of Wx)
  for (var j = t; j < p.J; j += WG) {
    var a: array<f32, RB>;
    for (var b = 0u; b < RB; b++) { a[b] = 0.0; } // zeroed each pass: a declaration in a loop is not, on Dawn
    for (var cc = 0u; cc < CH; cc++) {
      let ee = e0 + cc;
      if (ee < E) {
        let wv = wx(j * E + ee);
        for (var b = 0u; b < RB; b++) { a[b] = fma(wv, xcs[b * CH + cc], a[b]); }
      }
    }
    for (var b = 0u; b < RB; b++) { Q[(wg.x * B + b) * p.J + j] = a[b]; }
  }`;
  const KO = Math.ceil(J / 256);
  return /* wgsl */ `
  // 4. this group's share of x_proj: Wx staged ${WC} channels at a time into red, a thread per output
  const J = ${J}u;
  const WC = ${WC}u;
  const KO = ${KO}u; // outputs a thread
  var a: array<array<f32, RB>, KO>;
  for (var k = 0u; k < KO; k++) { for (var b = 0u; b < RB; b++) { a[k][b] = 0.0; } }
  for (var c0 = 0u; c0 < CH; c0 += WC) {
${stageWxWgsl("red")}
    workgroupBarrier();
    for (var k = 0u; k < KO; k++) {
      let j = t + k * WG;
      if (j < J) {
        for (var c = 0u; c < WC; c++) {
          let wv = red[j * (WC + 1u) + c];
          for (var b = 0u; b < RB; b++) { a[k][b] = fma(wv, xcs[b * CH + c0 + c], a[k][b]); }
        }
      }
    }
    workgroupBarrier();
  }
  for (var k = 0u; k < KO; k++) {
    let j = t + k * WG;
    if (j < J) { for (var b = 0u; b < RB; b++) { Q[(wg.x * B + b) * J + j] = a[k][b]; } }
  }`;
}

/** The kernel's WGSL (exported for inspection). */
export const mixerInWgsl = (CH: number, J: number, wsIn: WeightStorage, wsX: WeightStorage, loadBytes: number, RB: number) => /* wgsl */ `
// bindings: 0 h [B, D] | 1 res [2, B, D] | 2 lp (layer constants) | 3 Win [2E, D] | 4 Wx [J, E]
//           5 convState [B, K-1, E] in/out | 6 xz [B, 2E] out | 7 Q [groups, B, J] out | 8 params
// grid: (ceil(E / CH))
const WG = 256u;
const MAXB = ${DECODE_MAX_B}u;
const RB = ${RB}u;          // the dispatch's rows (B = RB): register loops run to it
const MAXU = ${DECODE_MAX_BD}u;
const CH = ${CH}u;          // channels per workgroup
const ROWS = 2u * CH;       // their in_proj rows: x then z
const TPR = WG / ROWS;      // threads per in_proj row
const BATCH = ${loadBytes / (wsIn === "f32" ? 16 : 8)}u; // in_proj loads issued together: ${loadBytes} bytes a thread (f32 vec4s or packed-half pairs)

struct P {
  B: u32, D: u32, E: u32, K: u32, J: u32, hasRes: u32, par: u32, eps: f32,
  oNorm: u32, oInBias: u32, oConvW: u32, oConvB: u32,
}
@group(0) @binding(0) var<storage, read> h: array<f32>;
@group(0) @binding(1) var<storage, read_write> res: array<f32>;
@group(0) @binding(2) var<storage, read> lp: array<f32>;
@group(0) @binding(3) var<storage, read> wIn: array<${weight4Binding(wsIn)}>;
@group(0) @binding(4) var<storage, read> wX: array<${weightBinding(wsX)}>;
@group(0) @binding(5) var<storage, read_write> convState: array<f32>;
@group(0) @binding(6) var<storage, read_write> xz: array<f32>;
@group(0) @binding(7) var<storage, read_write> Q: array<f32>;
@group(0) @binding(8) var<uniform> p: P;

var<workgroup> us: array<f32, MAXU>;          // normalized input rows [B, D]
var<workgroup> red: array<f32, WG * MAXB>;    // partial sums
var<workgroup> rowOut: array<f32, MAXB * ROWS>;
var<workgroup> xcs: array<f32, MAXB * CH>;    // conv outputs of this group's channels

${weight4Reader(wsIn, "win4", "wIn")}
${CONV_STEP_WGSL}
${weightReader(wsX, "wx", "wX")}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let t = lid.x;
  let B = p.B;
  let D = p.D;
  let E = p.E;
  let e0 = wg.x * CH;

  // 1. residual add + RMSNorm of every row
  for (var b = 0u; b < B; b++) {
    var ss = 0.0;
    for (var d0 = t; d0 < D; d0 += BATCH * WG) {
      for (var k = 0u; k < BATCH; k++) {
        let d = d0 + k * WG;
        if (d < D) {
          var v = h[b * D + d];
          if (p.hasRes != 0u) { v += res[p.par * B * D + b * D + d]; }
          if (wg.x == 0u) { res[(1u - p.par) * B * D + b * D + d] = v; }
          us[b * D + d] = v;
          ss = fma(v, v, ss);
        }
      }
    }
    red[t] = ss;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
      if (t < s) { red[t] += red[t + s]; }
      workgroupBarrier();
    }
    let inv = inverseSqrt(red[0] / f32(D) + p.eps);
    workgroupBarrier(); // red[0] read by all before the next row reuses red
    for (var d = t; d < D; d += WG) { us[b * D + d] *= inv * lp[p.oNorm + d]; }
  }
  workgroupBarrier();

  // 2. in_proj rows x[e], z[e] of this group's channels
  let row = t / TPR;
  let q = t % TPR;
  let c = row % CH;
  let e = e0 + c;
  let grow = select(e, E + e, row >= CH);
  var acc: array<f32, RB>;
  if (e < E) {
    let D4 = D / 4u;
    for (var k0 = q; k0 < D4; k0 += BATCH * TPR) {
      var wv: array<vec4<f32>, BATCH>;
      // unconditional loads (the index clamped to the row, the excess unused) so that all BATCH are in flight
      // together: behind a bounds check each waits for the one before
      for (var k = 0u; k < BATCH; k++) { wv[k] = win4(grow * D4 + min(k0 + k * TPR, D4 - 1u)); }
      for (var k = 0u; k < BATCH; k++) {
        let k4 = k0 + k * TPR;
        if (k4 < D4) {
          // bounded by the constant RB, so that acc stays in registers (a loop to B indexes it at run time), and
          // RB the dispatch's rows: bounded by 8 with a guard, one row's step did 8 rows' predicated loads and FMAs
          for (var b = 0u; b < RB; b++) {
            let o = b * D + 4u * k4;
            acc[b] = fma(wv[k].x, us[o], fma(wv[k].y, us[o + 1u], fma(wv[k].z, us[o + 2u], fma(wv[k].w, us[o + 3u], acc[b]))));
          }
        }
      }
    }
  }
  for (var b = 0u; b < RB; b++) { red[t * MAXB + b] = acc[b]; }
  workgroupBarrier();
  if (q == 0u && e < E) {
    for (var b = 0u; b < B; b++) {
      var s = lp[p.oInBias + grow];
      for (var j = 0u; j < TPR; j++) { s += red[(t + j) * MAXB + b]; }
      rowOut[b * ROWS + row] = s;
    }
  }
  workgroupBarrier();

  // 3. causal conv over (state, x) and SiLU, one thread per (b, channel)
  for (var i = t; i < B * CH; i += WG) {
    let b = i / CH;
    let cc = i % CH;
    let ee = e0 + cc;
    var xc = 0.0;
    if (ee < E) {
      let xv = rowOut[b * ROWS + cc];
      xc = convStep(b, ee, xv);
      xz[b * 2u * E + ee] = xc;
      xz[b * 2u * E + E + ee] = rowOut[b * ROWS + CH + cc];
    }
    xcs[b * CH + cc] = xc;
  }
  workgroupBarrier();

${xprojWgsl(CH, J)}
}
`;

export interface MixerInArgs {
  B: number; D: number; E: number; K: number; J: number; eps: number;
  h: Buf; res: Buf; hasRes: boolean; par: number;
  lp: Buf; oNorm: number; oInBias: number; oConvW: number; oConvB: number;
  wIn: Buf; wsIn: WeightStorage; wX: Buf; wsX: WeightStorage;
  convState: Buf; xz: Buf; Q: Buf;
  channels?: number; // channels per workgroup (0 or absent: the default)
  loadBytes?: number; // bytes of in_proj a thread loads at once (DECODE_LOAD_BYTES_CHOICES; default 64)
}

/** Bytes of weights a thread of the decode kernels (mixer-in's in_proj, matvec) loads before using any
 *  (WebGpuTuning.decodeLoadBytes): more keeps more of the memory system busy, at the cost of registers. */
export const DECODE_LOAD_BYTES_CHOICES: readonly number[] = [64, 128, 256];

/** Channels per workgroup the kernel may take (WebGpuTuning.decodeChannels). */
export const DECODE_CHANNEL_CHOICES: readonly number[] = [4, 8, 16, 32, 64];

/**
 * Channels per workgroup: more groups read in_proj with more of the GPU; fewer leave kernel 2 fewer partials.
 * `chosen` (one of DECODE_CHANNEL_CHOICES) overrides the default.
 */
export function mixerInChannels(E: number, chosen = 0): number {
  return chosen > 0 ? chosen : E <= 2048 ? 16 : 32;
}

/** Runs kernel 1 with CH = mixerInChannels(E, a.channels); returns its workgroups (the partials of x_proj). */
export function decodeMixerIn(gpu: Gpu, a: MixerInArgs): number {
  const CH = mixerInChannels(a.E, a.channels);
  const loadBytes = a.loadBytes ?? 64;
  if (!Number.isInteger(a.B) || a.B < 1 || a.B > DECODE_MAX_B) throw new Error(`decodeMixerIn: ${a.B} rows, expected 1 to ${DECODE_MAX_B}`);
  const k = gpu.kernel(`decode_in_${CH}_${a.J}_${a.wsIn}_${a.wsX}${loadBytes === 64 ? "" : `_${loadBytes}`}_r${a.B}`,
    () => mixerInWgsl(CH, a.J, a.wsIn, a.wsX, loadBytes, a.B));
  const groups = Math.ceil(a.E / CH);
  const p = new Params().u32(a.B).u32(a.D).u32(a.E).u32(a.K).u32(a.J).bool(a.hasRes).u32(a.par).f32(a.eps)
    .u32(a.oNorm).u32(a.oInBias).u32(a.oConvW).u32(a.oConvB);
  gpu.dispatch(k, [a.h, a.res, a.lp, a.wIn, a.wX, a.convState, a.xz, a.Q], p, [groups]);
  return groups;
}
