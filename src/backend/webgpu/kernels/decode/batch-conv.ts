/**
 * Batch decode, from in_proj to x_proj's partial sums (for batches past the fused kernels' 8 rows, whose matmuls
 * have rows enough to fill the GPU on their own). A workgroup owns CH channels of RB rows:
 *  1. x and z = Σ_s in_proj's K-split partials + bias; the causal conv over x's history (shifted in place: the
 *     thread of (b, e) alone reads and writes it) and SiLU; x and z written to xz [B, 2E];
 *  2. its partial x_proj Q[g, b, j] = Σ_{e of group g} Wx[j, e] · x[b, e], which the scan kernel (./batch-scan.ts,
 *     or ./mixer-scan.ts) sums over groups.
 * The same work as the fused first kernel's steps 3 and 4 (./mixer-in.ts), with in_proj done by a matmul before.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params } from "../../gpu.ts";
import { convTapWgsl } from "./conv-step.ts";
import { DECODE_MAX_B } from "./mixer-in.ts";
import { type WeightStorage, weightBinding, weightReader } from "../weights.ts";
import { defineKernel } from "../../kernel-def.ts";

/** Channels a workgroup: fewer leave the scan kernel more partial sums to add. */
export const BATCH_CONV_CHANNELS = 64;
/** Rows a workgroup: as many as ./mixer-scan.ts takes (a block of its rows). */
export const BATCH_CONV_ROWS = DECODE_MAX_B;

/** Channels of Wx staged at a time (a padded row of WC + 1 per output). */
const WC = 16;
/** Outputs (row, j) a thread accumulates at most: RB · J ≤ 8 · WG. */
const MAXO = 8;

/** Bytes of workgroup memory the kernel needs for x_proj width J. */
export function batchConvBytes(J: number): number {
  return 4 * (J * (WC + 1) + BATCH_CONV_ROWS * BATCH_CONV_CHANNELS);
}

/**
 * WGSL statements that stage WC channels of Wx from channel e0 + c0 into the workgroup array `dst` as [J, WC + 1]
 * (rows padded by one, so threads reading a column hit different banks), WC threads side by side on a row: a
 * thread walking its own row of Wx touches a cache line per thread per load. Channels past E stage as zeros.
 * Reads the kernel's J, WC, WG, E, e0, c0, t and its Wx reader `wx`. (The fused step's first kernel holds its chunks
 * of Wx in registers instead; here, with 8 rows a workgroup, that measured slower on the H200: 8.8 against 8.1 us
 * at 64 rows of 130m.)
 */
const stageWxWgsl = (dst: string) => /* wgsl */ `
    for (var i = t; i < J * WC; i += WG) {
      let c = i % WC;
      var v = 0.0;
      if (e0 + c0 + c < E) { v = wx((i / WC) * E + e0 + c0 + c); }
      ${dst}[(i / WC) * (WC + 1u) + c] = v;
    }`;

const wgsl = (S: number, E: number, K: number, J: number, ws: WeightStorage) => /* wgsl */ `
// bindings: 0 xzp [S, B, 2E] in_proj partials | 1 lp (layer constants) | 2 Wx [J, E] | 3 convState [B, K-1, E] in/out
//           4 xz [B, 2E] out | 5 Q [G, B, J] out | 6 params
// grid: (G = ceil(E / CH), ceil(B / RB))
const WG = 256u;
const CH = ${BATCH_CONV_CHANNELS}u;
const RB = ${BATCH_CONV_ROWS}u;
const S = ${S}u;  // in_proj's K-parts: a constant, so that a thread's loads of all parts are in flight at once
const J = ${J}u;  // x_proj outputs
const E = ${E}u;
const WC = ${WC}u; // channels of Wx staged at a time
const MAXO = ${MAXO}u; // outputs a thread accumulates (RB · J ≤ MAXO · WG)

struct P { B: u32, oInBias: u32, oConvW: u32, oConvB: u32 }
@group(0) @binding(0) var<storage, read> xzp: array<f32>;
@group(0) @binding(1) var<storage, read> lp: array<f32>;
@group(0) @binding(2) var<storage, read> wX: array<${weightBinding(ws)}>;
@group(0) @binding(3) var<storage, read_write> convState: array<f32>;
@group(0) @binding(4) var<storage, read_write> xz: array<f32>;
@group(0) @binding(5) var<storage, read_write> Q: array<f32>;
@group(0) @binding(6) var<uniform> p: P;

var<workgroup> xs: array<f32, RB * CH>; // conv outputs of this group's rows and channels
var<workgroup> wxs: array<f32, J * (WC + 1u)>; // WC channels of Wx [J, WC], rows padded by one

${weightReader(ws, "wx", "wX")}
${convTapWgsl(K)}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let t = lid.x;
  let B = p.B;
  let e0 = wg.x * CH;
  let b0 = wg.y * RB;
  let split = B * 2u * E; // words of one K-part of in_proj

  // 1. in_proj's x and z, the causal conv and SiLU, one thread per (b, channel)
  for (var i = t; i < RB * CH; i += WG) {
    let r = i / CH;
    let c = i % CH;
    let b = b0 + r;
    let e = e0 + c;
    var xc = 0.0;
    if (b < B && e < E) {
      let o = b * 2u * E + e;
      var xv = lp[p.oInBias + e];
      var zv = lp[p.oInBias + E + e];
      for (var s = 0u; s < S; s++) {
        xv += xzp[s * split + o];
        zv += xzp[s * split + o + E];
      }
      xc = convApply(loadConvTap(b, e), b, e, xv);
      xz[o] = xc;
      xz[o + E] = zv;
    }
    xs[i] = xc;
  }
  workgroupBarrier();

  // 2. this group's share of x_proj, one thread per (row, output). Wx is staged WC channels at a time, 16 threads
  //    side by side on a row of it: a thread walking its own row would touch a cache line per thread per load.
  var acc: array<f32, MAXO>;
  for (var k = 0u; k < MAXO; k++) { acc[k] = 0.0; }
  for (var c0 = 0u; c0 < CH; c0 += WC) {
${stageWxWgsl("wxs")}
    workgroupBarrier();
    for (var k = 0u; k < MAXO; k++) {
      let i = t + k * WG;
      if (i < RB * J) {
        let r = i / J;
        let w0 = (i % J) * (WC + 1u);
        let x0 = r * CH + c0;
        var a = acc[k];
        for (var c = 0u; c < WC; c++) { a = fma(wxs[w0 + c], xs[x0 + c], a); }
        acc[k] = a;
      }
    }
    workgroupBarrier();
  }
  for (var k = 0u; k < MAXO; k++) {
    let i = t + k * WG;
    let b = b0 + i / J;
    if (i < RB * J && b < B) { Q[(wg.x * B + b) * J + i % J] = acc[k]; }
  }
}
`;

export interface BatchConvArgs {
  B: number; E: number; K: number; J: number;
  xzp: Buf; S: number; // in_proj's partial products [S, B, 2E], without bias
  lp: Buf; oInBias: number; oConvW: number; oConvB: number;
  wX: Buf; wsX: WeightStorage;
  convState: Buf; xz: Buf; Q: Buf;
}

/** S parts of in_proj, E channels, conv kernel K, J outputs of x_proj (weights ws). */
const batchConvKernel = defineKernel({
  name: "decode_batchconv", wgsl: (s: { S: number; E: number; K: number; J: number; ws: WeightStorage }) => wgsl(s.S, s.E, s.K, s.J, s.ws),
  label: (s) => `decode_batchconv_${s.S}_${s.E}_${s.K}_${s.J}_${s.ws}`, example: { S: 8, E: 1536, K: 4, J: 80, ws: "f32" },
});

// xzp: [S, B, 2E], convState: [B, K-1, E] updated in place -> xz: [B, 2E], Q: [G, B, J]; returns G
export function decodeBatchConv(gpu: Gpu, a: BatchConvArgs): number {
  const k = gpu.kernel(batchConvKernel, { S: a.S, E: a.E, K: a.K, J: a.J, ws: a.wsX });
  const groups = Math.ceil(a.E / BATCH_CONV_CHANNELS);
  const p = new Params().u32(a.B).u32(a.oInBias).u32(a.oConvW).u32(a.oConvB);
  gpu.dispatch(k, [a.xzp, a.lp, a.wX, a.convState, a.xz, a.Q], p, [groups, Math.ceil(a.B / BATCH_CONV_ROWS)]);
  return groups;
}
