/**
 * Batch decode, from in_proj to x_proj's partial sums (for batches past the fused kernels' 8 rows, whose matmuls
 * have rows enough to fill the GPU on their own). A workgroup owns CH channels of RB rows:
 *  1. x and z = Σ_s in_proj's K-split partials + bias; the causal conv over x's history (shifted in place: the
 *     thread of (b, e) alone reads and writes it) and SiLU; x and z written to xz [B, 2E];
 *  2. its partial x_proj Q[g, b, j] = Σ_{e of group g} Wx[j, e] · x[b, e], which ./mixer-scan.ts sums over groups.
 * The same work as the fused first kernel's steps 3 and 4 (./mixer-in.ts, with the same WGSL from ./conv-step.ts),
 * with in_proj done by a matmul before. Every load goes out first (step 0), as there.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params } from "../../gpu.ts";
import { convTapWgsl, wxChunkSumWgsl, wxChunkWgsl } from "./conv-step.ts";
import { DECODE_MAX_B } from "./mixer-in.ts";
import { type WeightStorage, weightBinding, weightReader } from "../weights.ts";

/** Channels a workgroup: fewer leave ./mixer-scan.ts more partial sums to add. */
export const BATCH_CONV_CHANNELS = 64;
/** Rows a workgroup: as many as ./mixer-scan.ts takes. */
export const BATCH_CONV_ROWS = DECODE_MAX_B;

/** Bytes of workgroup memory the kernel needs for x_proj width J. */
export function batchConvBytes(J: number): number {
  return 4 * (J * BATCH_CONV_ROWS + BATCH_CONV_ROWS * BATCH_CONV_CHANNELS);
}

const wgsl = (CH: number, S: number, E: number, K: number, J: number, ws: WeightStorage) => /* wgsl */ `
// bindings: 0 xzp [S, B, 2E] in_proj partials | 1 lp (layer constants) | 2 Wx [J, E] | 3 convState [B, K-1, E] in/out
//           4 xz [B, 2E] out | 5 Q [G, B, J] out | 6 params
// grid: (G = ceil(E / CH), ceil(B / RB))
const WG = 256u;
const CH = ${CH}u;
const RB = ${BATCH_CONV_ROWS}u;
const S = ${S}u;  // in_proj's K-parts
const E = ${E}u;
const J = ${J}u;  // x_proj outputs
const KC = ${Math.ceil((BATCH_CONV_ROWS * CH) / 256)}u; // (row, channel) pairs a thread

struct P { B: u32, oInBias: u32, oConvW: u32, oConvB: u32 }
@group(0) @binding(0) var<storage, read> xzp: array<f32>;
@group(0) @binding(1) var<storage, read> lp: array<f32>;
@group(0) @binding(2) var<storage, read> wX: array<${weightBinding(ws)}>;
@group(0) @binding(3) var<storage, read_write> convState: array<f32>;
@group(0) @binding(4) var<storage, read_write> xz: array<f32>;
@group(0) @binding(5) var<storage, read_write> Q: array<f32>;
@group(0) @binding(6) var<uniform> p: P;

var<workgroup> xs: array<f32, RB * CH>; // conv outputs of this group's rows and channels
var<workgroup> qs: array<f32, J * RB>;  // x_proj's sums [J, RB]

${weightReader(ws, "wx", "wX")}
${convTapWgsl(K)}
${wxChunkWgsl(CH, J, "xs")}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let t = lid.x;
  let B = p.B;
  let e0 = wg.x * CH;
  let b0 = wg.y * RB;
  let split = B * 2u * E; // words of one K-part of in_proj

  // 0. every load first, so that their latencies overlap (indices clamped rather than guarded: behind a bounds
  //    check each load waits for the one before; the excess values are never used): in_proj's parts and bias of
  //    x and z, the conv's history, weights and bias of each (row, channel) pair, and this thread's chunks of Wx
  var xzv: array<array<f32, 2u * S + 2u>, KC>;
  var taps: array<ConvTap, KC>;
  for (var k = 0u; k < KC; k++) {
    let i = t + k * WG;
    let b = min(b0 + i / CH, B - 1u);
    let e = min(e0 + i % CH, E - 1u);
    let o = b * 2u * E + e;
    for (var s = 0u; s < S; s++) {
      xzv[k][2u * s] = xzp[s * split + o];
      xzv[k][2u * s + 1u] = xzp[s * split + o + E];
    }
    xzv[k][2u * S] = lp[p.oInBias + e];
    xzv[k][2u * S + 1u] = lp[p.oInBias + E + e];
    taps[k] = loadConvTap(b, e);
  }
  var wxv: array<array<f32, CC>, KI>;
  for (var k = 0u; k < KI; k++) { wxv[k] = loadWxChunk(e0, t + k * WG); }

  // 1. in_proj's x and z, the causal conv and SiLU, one thread per (b, channel)
  for (var k = 0u; k < KC; k++) {
    let i = t + k * WG;
    let b = b0 + i / CH;
    let e = e0 + i % CH;
    var xc = 0.0;
    if (b < B && e < E) {
      var xv = xzv[k][2u * S];
      var zv = xzv[k][2u * S + 1u];
      for (var s = 0u; s < S; s++) {
        xv += xzv[k][2u * s];
        zv += xzv[k][2u * s + 1u];
      }
      xc = convApply(taps[k], b, e, xv);
      let o = b * 2u * E + e;
      xz[o] = xc;
      xz[o + E] = zv;
    }
    xs[i] = xc; // zero past B and E, so the clamped weights and rows there add nothing
  }
  workgroupBarrier();

  // 2. this group's share of x_proj: a thread per chunk of CC channels of a row of Wx (loaded in step 0)
${wxChunkSumWgsl("qs")}
  for (var i = t; i < RB * J; i += WG) {
    let b = b0 + i / J;
    if (b < B) { Q[(wg.x * B + b) * J + i % J] = qs[(i % J) * RB + i / J]; }
  }
}
`;

export interface BatchConvArgs {
  B: number; E: number; K: number; J: number;
  xzp: Buf; S: number; // in_proj's partial products [S, B, 2E], without bias
  lp: Buf; oInBias: number; oConvW: number; oConvB: number;
  wX: Buf; wsX: WeightStorage;
  convState: Buf; xz: Buf; Q: Buf;
  channels?: number; // channels a workgroup (default BATCH_CONV_CHANNELS)
}

// xzp: [S, B, 2E], convState: [B, K-1, E] updated in place -> xz: [B, 2E], Q: [G, B, J]; returns G
export function decodeBatchConv(gpu: Gpu, a: BatchConvArgs): number {
  const CH = a.channels ?? BATCH_CONV_CHANNELS;
  const k = gpu.kernel(`decode_batchconv_${CH}_${a.S}_${a.E}_${a.K}_${a.J}_${a.wsX}`, () => wgsl(CH, a.S, a.E, a.K, a.J, a.wsX));
  const groups = Math.ceil(a.E / CH);
  const p = new Params().u32(a.B).u32(a.oInBias).u32(a.oConvW).u32(a.oConvB);
  gpu.dispatch(k, [a.xzp, a.lp, a.wX, a.convState, a.xz, a.Q], p, [groups, Math.ceil(a.B / BATCH_CONV_ROWS)]);
  return groups;
}
