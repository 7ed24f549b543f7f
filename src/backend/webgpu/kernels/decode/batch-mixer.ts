/**
 * Batch decode, everything of a layer between in_proj and out_proj in one dispatch, one workgroup per row (for
 * batches past the fused kernels' 8 rows, where the matmuls have enough rows to fill the GPU on their own):
 *  1. x = Σ_s in_proj's K-split partials + bias, the causal conv over the row's history (shifted in place) and
 *     SiLU, kept in workgroup memory [E];
 *  2. x_proj [J] = Wx · x, LP threads an output, then summed;
 *  3. per channel: delta = softplus(dt_proj + bias), the N states advanced in place
 *     (h = exp(delta·A)·h + delta·x·B), y = (C·h + D·x) · silu(z).
 * Mirrors the CPU's conv step, Linear and selective scan step (src/backend/cpu), which the tests compare it to.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params } from "../../gpu.ts";
import { type WeightStorage, weightBinding, weightReader } from "../weights.ts";
import { SOFTPLUS_WGSL } from "../wgsl-common.ts";

const WG = 256;
/** Partial sums of x_proj kept at once (LP threads an output). */
const RED = 2048;
/** Conv kernel sizes the kernel takes (the history, K - 1 values, is held in registers). */
export const BATCH_MIXER_MAX_K = 9;

/** Threads per x_proj output: up to 8, as many as J · LP ≤ RED allows. */
const lanesPerOutput = (J: number) => (J * 8 <= RED ? 8 : J * 4 <= RED ? 4 : J * 2 <= RED ? 2 : 1);

/** Bytes of workgroup memory the kernel needs, or Infinity where it cannot run (x_proj wider than RED). */
export function batchMixerBytes(E: number, J: number): number {
  return J > RED ? Infinity : 4 * (E + J * lanesPerOutput(J) + J);
}

const wgsl = (E: number, N: number, R: number, J: number, wsX: WeightStorage, wsDt: WeightStorage) => /* wgsl */ `
// bindings: 0 xzp [S, B, 2E] in_proj partials | 1 lp (layer constants) | 2 Wx [J, E] | 3 Wdt [E, R]
//           4 convState [B, K-1, E] in/out | 5 ssm [B, E, N] in/out | 6 y [B, E] out | 7 params
// grid: (B)
const WG = ${WG}u;
const E = ${E}u;
const N = ${N}u;
const R = ${R}u;
const J = ${J}u;
const LP = ${lanesPerOutput(J)}u; // threads per x_proj output
const MAXK = ${BATCH_MIXER_MAX_K - 1}u; // history length

struct P { B: u32, S: u32, K: u32, oInBias: u32, oConvW: u32, oConvB: u32, oPack: u32 }
@group(0) @binding(0) var<storage, read> xzp: array<f32>;
@group(0) @binding(1) var<storage, read> lp: array<f32>;
@group(0) @binding(2) var<storage, read> wX: array<${weightBinding(wsX)}>;
@group(0) @binding(3) var<storage, read> wDt: array<${weightBinding(wsDt)}>;
@group(0) @binding(4) var<storage, read_write> convState: array<f32>;
@group(0) @binding(5) var<storage, read_write> ssm: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;
@group(0) @binding(7) var<uniform> p: P;

var<workgroup> xs: array<f32, E>;       // the conv's output x [E]
var<workgroup> red: array<f32, J * LP>; // x_proj partial sums
var<workgroup> xd: array<f32, J>;       // x_proj: dt (R) | B (N) | C (N)

${weightReader(wsX, "wx", "wX")}
${weightReader(wsDt, "wdt", "wDt")}
${SOFTPLUS_WGSL}

/** in_proj output o of row b (o < E: x, else z): its K-split partials and bias. */
fn inProj(b: u32, o: u32) -> f32 {
  var v = lp[p.oInBias + o];
  let stride = p.B * 2u * E;
  for (var s = 0u; s < p.S; s++) { v += xzp[s * stride + b * 2u * E + o]; }
  return v;
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let t = lid.x;
  let b = wg.x;
  let K = p.K;
  let H = K - 1u;

  // 1. causal conv over (history, x) and SiLU; the thread of channel e alone reads and shifts its history
  for (var e = t; e < E; e += WG) {
    let xv = inProj(b, e);
    var hist: array<f32, MAXK>;
    for (var j = 0u; j < MAXK; j++) { if (j < H) { hist[j] = convState[(b * H + j) * E + e]; } }
    var s = lp[p.oConvB + e];
    for (var j = 0u; j < MAXK; j++) { if (j < H) { s = fma(lp[p.oConvW + e * K + j], hist[j], s); } }
    s = fma(lp[p.oConvW + e * K + H], xv, s);
    for (var j = 0u; j < MAXK; j++) { if (j + 1u < H) { convState[(b * H + j) * E + e] = hist[j + 1u]; } }
    if (H > 0u) { convState[(b * H + H - 1u) * E + e] = xv; }
    xs[e] = s / (1.0 + exp(-s));
  }
  workgroupBarrier();

  // 2. x_proj: the LP threads of an output read its row of Wx side by side, four loads in flight each
  let lane = t % LP;
  for (var j0 = 0u; j0 < J; j0 += WG / LP) {
    let j = j0 + t / LP;
    if (j < J) {
      let row = j * E;
      var a0 = 0.0;
      var a1 = 0.0;
      var a2 = 0.0;
      var a3 = 0.0;
      var e = lane;
      while (e + 3u * LP < E) {
        a0 = fma(wx(row + e), xs[e], a0);
        a1 = fma(wx(row + e + LP), xs[e + LP], a1);
        a2 = fma(wx(row + e + 2u * LP), xs[e + 2u * LP], a2);
        a3 = fma(wx(row + e + 3u * LP), xs[e + 3u * LP], a3);
        e += 4u * LP;
      }
      while (e < E) {
        a0 = fma(wx(row + e), xs[e], a0);
        e += LP;
      }
      red[j * LP + lane] = (a0 + a1) + (a2 + a3);
    }
  }
  workgroupBarrier();
  for (var j = t; j < J; j += WG) {
    var s = 0.0;
    for (var l = 0u; l < LP; l++) { s += red[j * LP + l]; }
    xd[j] = s;
  }
  workgroupBarrier();

  // 3. per channel: delta, one step of its N states, the gated output
  for (var e = t; e < E; e += WG) {
    let pk = p.oPack + e * (N + 2u); // A·log2(e) [N], dt bias, D
    var d = lp[pk + N];
    for (var r = 0u; r < R; r++) { d = fma(wdt(e * R + r), xd[r], d); }
    let dt = softplus(d);
    let u = xs[e];
    let du = dt * u;
    let s0 = (b * E + e) * N;
    var hs: array<f32, N>;
    for (var n = 0u; n < N; n++) { hs[n] = ssm[s0 + n]; }
    var out = 0.0;
    for (var n = 0u; n < N; n++) {
      let hn = fma(exp2(dt * lp[pk + n]), hs[n], du * xd[R + n]);
      ssm[s0 + n] = hn;
      out = fma(hn, xd[R + N + n], out);
    }
    out = fma(lp[pk + N + 1u], u, out);
    let zv = inProj(b, E + e);
    y[b * E + e] = out * zv / (1.0 + exp(-zv));
  }
}
`;

export interface BatchMixerArgs {
  B: number; E: number; N: number; R: number; J: number; K: number;
  xzp: Buf; S: number; // in_proj's partial products [S, B, 2E], without bias
  lp: Buf; oInBias: number; oConvW: number; oConvB: number; oPack: number;
  wX: Buf; wsX: WeightStorage; wDt: Buf; wsDt: WeightStorage;
  convState: Buf; ssm: Buf; y: Buf;
}

// xzp: [S, B, 2E], convState: [B, K-1, E] and ssm: [B, E, N] updated in place -> y: [B, E]
export function decodeBatchMixer(gpu: Gpu, a: BatchMixerArgs): void {
  const k = gpu.kernel(`decode_batchmixer_${a.E}_${a.N}_${a.R}_${a.J}_${a.wsX}_${a.wsDt}`,
    () => wgsl(a.E, a.N, a.R, a.J, a.wsX, a.wsDt));
  const p = new Params().u32(a.B).u32(a.S).u32(a.K).u32(a.oInBias).u32(a.oConvW).u32(a.oConvB).u32(a.oPack);
  gpu.dispatch(k, [a.xzp, a.lp, a.wX, a.wDt, a.convState, a.ssm, a.y], p, [a.B]);
}
