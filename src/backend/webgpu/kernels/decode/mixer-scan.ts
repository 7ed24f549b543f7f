/**
 * Fused decode, kernel 2 of 3 per layer: from kernel 1's partial x_proj to the gated scan output, one dispatch.
 * A workgroup owns CH channels of up to 8 rows (all B rows of the fused step; a block of rows of the batch step,
 * whose x_proj partials come from ./batch-conv.ts). Decode kernels are short, so what costs is waiting on memory: every
 * phase spreads its loads over all threads and issues them in fixed-size batches rather than one after another.
 *  1. sum kernel 1's G partials into dt | B | C of each row (workgroup memory), S slices of threads per output;
 *  2. dt_proj for the CH channels, 8 threads a channel over R, then softplus(· + bias);
 *  3. one thread per (b, e): advance the N states in place (h = exp(delta·A)·h + delta·u·B) and write
 *     y = (C·h + D·u) · silu(z).
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params } from "../../gpu.ts";
import { type WeightStorage, weightBinding, weightReader } from "../weights.ts";
import { DECODE_MAX_B } from "./mixer-in.ts";
import { SOFTPLUS_WGSL } from "../wgsl-common.ts";

/** B · (R + 2N) values of x_proj that fit workgroup memory. */
export const DECODE_MAX_BJ = 2048;
const CH = 32; // channels per workgroup

/** Bytes of workgroup memory the kernel needs for state size N (the decode steps check it against the device). */
export function mixerScanBytes(N: number): number {
  return 4 * (Math.max(DECODE_MAX_BJ + 256 * DECODE_MAX_B, DECODE_MAX_B * CH * (N + 1)) + DECODE_MAX_BJ + DECODE_MAX_B * CH + CH * (N + 2));
}

const wgsl = (N: number, ws: WeightStorage) => /* wgsl */ `
// bindings: 0 Q [G, B, J] | 1 lp (layer constants) | 2 Wdt [E, R] | 3 xz [B, 2E] | 4 ssm [B, E, N] in/out
//           5 y [B, E] out | 6 params
// grid: (ceil(E / CH), ceil(B / MAXB)): workgroup (x, y) owns channels x·CH .. and rows y·MAXB ..
const WG = 256u;
const CH = ${CH}u;
const N = ${N}u;
const MAXB = ${DECODE_MAX_B}u;
const MAXBJ = ${DECODE_MAX_BJ}u;
const BATCH = 8u; // loads issued together

struct P { B: u32, E: u32, R: u32, J: u32, G: u32, oPack: u32 }
@group(0) @binding(0) var<storage, read> Q: array<f32>;
@group(0) @binding(1) var<storage, read> lp: array<f32>;
@group(0) @binding(2) var<storage, read> wDt: array<${weightBinding(ws)}>;
@group(0) @binding(3) var<storage, read> xz: array<f32>;
@group(0) @binding(4) var<storage, read_write> ssm: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<uniform> p: P;

// one scratch array for what each phase alone uses: step 1's slices of the partial sums [MAXBJ], step 2's
// dt_proj partial sums [WG · MAXB] from RED0, step 3's states [MAXB, CH, N + 1] (a padded row per channel)
const RED0 = MAXBJ;
const NP = N + 1u;
const SL = 8u; // states a thread loads at once in step 3
var<workgroup> scr: array<f32, ${Math.max(DECODE_MAX_BJ + 256 * DECODE_MAX_B, DECODE_MAX_B * CH * (N + 1))}>;
var<workgroup> xd: array<f32, MAXBJ>;       // x_proj output [B, J]: dt | B | C
var<workgroup> dts: array<f32, MAXB * CH>;  // delta [B, CH]
var<workgroup> pks: array<f32, CH * (N + 2u)>; // the channels' A·log2(e) [N], dt bias, D

${weightReader(ws, "wdt", "wDt")}

${SOFTPLUS_WGSL}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let t = lid.x;
  let b0 = wg.y * MAXB;
  let B = min(MAXB, p.B - b0); // this group's rows
  let J = p.J;
  let BJ = B * J;
  let q0 = b0 * J;             // its rows' first x_proj value in a partial [B, J]
  let E = p.E;
  let e0 = wg.x * CH;

  // 1. x_proj = the sum of G partials; S slices of threads share an output, BATCH loads at a time
  let S = max(1u, WG / BJ);
  let slice = t % S;
  for (var i = t / S; i < BJ; i += WG / S) {
    var s = 0.0;
    for (var g0 = slice; g0 < p.G; g0 += BATCH * S) {
      // unconditional loads (the group clamped, the excess unused) so that all BATCH are in flight together:
      // behind a bounds check each waits for the one before
      var v: array<f32, BATCH>;
      for (var k = 0u; k < BATCH; k++) { v[k] = Q[min(g0 + k * S, p.G - 1u) * p.B * J + q0 + i]; }
      for (var k = 0u; k < BATCH; k++) { if (g0 + k * S < p.G) { s += v[k]; } }
    }
    scr[slice * BJ + i] = s;
  }
  workgroupBarrier();
  for (var i = t; i < BJ; i += WG) {
    var s = 0.0;
    for (var k = 0u; k < S; k++) { s += scr[k * BJ + i]; }
    xd[i] = s;
  }
  workgroupBarrier();

  // 2. dt_proj: 8 threads a channel, each over every 8th of its R weights
  let c = t / 8u;
  let rs = t % 8u;
  let e = e0 + c;
  var acc: array<f32, MAXB>;
  if (e < E) {
    for (var r0 = rs; r0 < p.R; r0 += 8u * BATCH) {
      var wv: array<f32, BATCH>; // loaded unconditionally (clamped), all in flight together, as in step 1
      for (var k = 0u; k < BATCH; k++) { wv[k] = wdt(e * p.R + min(r0 + 8u * k, p.R - 1u)); }
      for (var k = 0u; k < BATCH; k++) {
        let r = r0 + 8u * k;
        if (r < p.R) {
          // bounded by the constant MAXB, so that acc stays in registers (a loop to B indexes it at run time)
          for (var b = 0u; b < MAXB; b++) { if (b < B) { acc[b] = fma(wv[k], xd[b * J + r], acc[b]); } }
        }
      }
    }
  }
  for (var b = 0u; b < MAXB; b++) { scr[RED0 + t * MAXB + b] = acc[b]; }
  workgroupBarrier();
  if (rs == 0u && e < E) {
    for (var b = 0u; b < B; b++) {
      var s = lp[p.oPack + e * (N + 2u) + N]; // dt bias
      for (var k = 0u; k < 8u; k++) { s += scr[RED0 + (t + k) * MAXB + b]; }
      dts[b * CH + c] = softplus(s);
    }
  }
  workgroupBarrier();

  // 3. one step of the recurrence per (b, channel), N states in registers. The states of this group's rows and
  //    channels (N·CH contiguous values a row) and the channels' constants pass through workgroup memory, so that
  //    global loads and stores are side by side: a thread per channel reading its own N states directly would
  //    touch a cache line per thread per load.
  let nc = min(CH, E - e0); // this group's channels
  let rowLen = nc * N;
  let n3 = B * rowLen;
  // SL loads a thread at a time, unconditional (clamped to the last state, the excess unused) so that they are in
  // flight together: a loop of one guarded load each waits for the one before (8 rows: 16 in a row)
  for (var i0 = t; i0 < n3; i0 += SL * WG) {
    var v: array<f32, SL>;
    for (var k = 0u; k < SL; k++) {
      let i = min(i0 + k * WG, n3 - 1u);
      v[k] = ssm[((b0 + i / rowLen) * E + e0) * N + i % rowLen];
    }
    for (var k = 0u; k < SL; k++) {
      let i = i0 + k * WG;
      if (i < n3) { scr[((i / rowLen) * CH + (i % rowLen) / N) * NP + i % N] = v[k]; }
    }
  }
  for (var i = t; i < nc * (N + 2u); i += WG) { pks[i] = lp[p.oPack + e0 * (N + 2u) + i]; }
  workgroupBarrier();
  let b = t / CH;
  let cc = t % CH;
  let ee = e0 + cc;
  if (b < B && cc < nc) {
    let pk = cc * (N + 2u);
    let dt = dts[b * CH + cc];
    let uv = xz[(b0 + b) * 2u * E + ee];
    let zv = xz[(b0 + b) * 2u * E + E + ee];
    let du = dt * uv;
    let s0 = (b * CH + cc) * NP;
    var out = 0.0;
    for (var n = 0u; n < N; n++) {
      let hn = fma(exp2(dt * pks[pk + n]), scr[s0 + n], du * xd[b * J + p.R + n]);
      scr[s0 + n] = hn;
      out = fma(hn, xd[b * J + p.R + N + n], out);
    }
    out = fma(pks[pk + N + 1u], uv, out);
    y[(b0 + b) * E + ee] = out * zv / (1.0 + exp(-zv));
  }
  workgroupBarrier();
  for (var i = t; i < n3; i += WG) {
    ssm[((b0 + i / rowLen) * E + e0) * N + i % rowLen] = scr[((i / rowLen) * CH + (i % rowLen) / N) * NP + i % N];
  }
}
`;

export interface MixerScanArgs {
  B: number; E: number; N: number; R: number; J: number; G: number;
  Q: Buf; lp: Buf; oPack: number; wDt: Buf; wsDt: WeightStorage; xz: Buf; ssm: Buf; y: Buf;
}

export function decodeMixerScan(gpu: Gpu, a: MixerScanArgs): void {
  const k = gpu.kernel(`decode_scan_${a.N}_${a.wsDt}`, () => wgsl(a.N, a.wsDt));
  const p = new Params().u32(a.B).u32(a.E).u32(a.R).u32(a.J).u32(a.G).u32(a.oPack);
  gpu.dispatch(k, [a.Q, a.lp, a.wDt, a.xz, a.ssm, a.y], p, [Math.ceil(a.E / CH), Math.ceil(a.B / DECODE_MAX_B)]);
}
