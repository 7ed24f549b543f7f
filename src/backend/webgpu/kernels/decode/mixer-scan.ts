/**
 * Fused decode, kernel 2 of 2 per layer: from kernel 1's partial x_proj to the layer's out_proj, one dispatch.
 * Workgroup (g, s) owns CH channels of all B rows (channel group g) and the DS rows d0 .. d0 + DS of out_proj
 * (slice s). Decode kernels are short, so what costs is waiting on memory: every phase spreads its loads over all
 * threads and issues them in fixed-size batches, and the weights, which depend on nothing, are loaded first so that
 * their latency overlaps the phases before their use.
 *  1. sum kernel 1's G partials into dt | B | C of each row (workgroup memory), S slices of threads per output;
 *  2. dt_proj for the CH channels, TPC threads a channel over R, then softplus(· + bias);
 *  3. one thread per (b, e): advance the N states (h = exp(delta·A)·h + delta·u·B) and y = (C·h + D·u) · silu(z),
 *     kept in workgroup memory;
 *  4. out_proj of this slice restricted to the group's channels: parts[g, b, d] = Σ_{e of g} Wout[d, e] · y[b, e]
 *     (+ the bias in group 0). The next kernel 1 (or the head) adds the G partials to the residual.
 * Phases 1-3 are repeated by every slice of a group (cheap next to a dispatch, and it lets out_proj spread over
 * ~100 workgroups while G stays small), so the state cannot be updated in place: one slice reads the state
 * another has already written. It goes from ssmIn to ssmOut, written by slice 0; the caller alternates the two.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params } from "../../gpu.ts";
import { type WeightStorage, weight4Binding, weight4Reader, weightBinding, weightReader } from "../weights.ts";
import { DECODE_MAX_B } from "./mixer-in.ts";
import { DECODE_WG as WG, type MixerScanGeometry } from "./geometry.ts";

/** B · (R + 2N) values of x_proj that fit workgroup memory. */
export const DECODE_MAX_BJ = 2048;
const wgsl = (N: number, CH: number, wsDt: WeightStorage, vecR: boolean, wsOut: WeightStorage, vecE: boolean) => /* wgsl */ `
// bindings: 0 mid: xz [B, 2E] from word 0, Q [G1, B, J] from word oQ | 1 lp (layer constants) | 2 Wdt [E, R]
//           3 Wout [D, E] | 4 ssmIn [B, E, N] | 5 ssmOut [B, E, N] | 6 parts [G, B, D] out | 7 params
// grid: (G = ceil(E / CH), S = ceil(D / DS))
const WG = ${WG}u;
const CH = ${CH}u;
const N = ${N}u;
const MAXB = ${DECODE_MAX_B}u;
const MAXBJ = ${DECODE_MAX_BJ}u;
const BATCH = 8u;        // x_proj partials read together
const TPC = WG / CH;     // dt_proj threads per channel
const DTB = 8u;          // dt_proj 4-weight groups a thread loads together
const TPR = CH / 16u;    // out_proj threads per row, 16 channels each (4 groups of 4)
const RP = WG / TPR;     // out_proj rows per pass
const PB = 4u;           // out_proj passes whose weights load together

struct P { B: u32, E: u32, R: u32, J: u32, G1: u32, oPack: u32, oQ: u32, D: u32, DS: u32, oOutBias: u32 }
@group(0) @binding(0) var<storage, read> mid: array<f32>;
@group(0) @binding(1) var<storage, read> lp: array<f32>;
@group(0) @binding(2) var<storage, read> wDt: array<${vecR ? weight4Binding(wsDt) : weightBinding(wsDt)}>;
@group(0) @binding(3) var<storage, read> wOut: array<${vecE ? weight4Binding(wsOut) : weightBinding(wsOut)}>;
@group(0) @binding(4) var<storage, read> ssmIn: array<f32>;
@group(0) @binding(5) var<storage, read_write> ssmOut: array<f32>;
@group(0) @binding(6) var<storage, read_write> parts: array<f32>;
@group(0) @binding(7) var<uniform> p: P;

var<workgroup> part: array<f32, MAXBJ>;     // slices of the partial sums, then the reductions' partial sums
var<workgroup> xd: array<f32, MAXBJ>;       // x_proj output [B, J]: dt | B | C
var<workgroup> dy: array<f32, MAXB * CH>;   // delta [B, CH], then y [B, CH]

${vecR ? weight4Reader(wsDt, "wdtv", "wDt") : weightReader(wsDt, "wdt", "wDt")}
${vecE ? weight4Reader(wsOut, "woutv", "wOut") : weightReader(wsOut, "wout", "wOut")}

// Wdt[e, r .. r + 3] (zeros past R)
fn wdt4(e: u32, r: u32) -> vec4<f32> {
  ${vecR ? "return wdtv((e * p.R + r) / 4u);" : `var v = vec4<f32>();
  for (var k = 0u; k < 4u; k++) { if (r + k < p.R) { v[k] = wdt(e * p.R + r + k); } }
  return v;`}
}

// Wout[d, e .. e + 3] (zeros past E)
fn wout4(d: u32, e: u32) -> vec4<f32> {
  ${vecE ? "if (e < p.E) { return woutv((d * p.E + e) / 4u); }\n  return vec4<f32>();" : `var v = vec4<f32>();
  for (var k = 0u; k < 4u; k++) { if (e + k < p.E) { v[k] = wout(d * p.E + e + k); } }
  return v;`}
}

fn softplus(v: f32) -> f32 {
  let ev = exp(v);
  // log(1 + e) loses e when e is tiny; its series keeps it (PyTorch passes v > 20 through)
  return select(select(log(1.0 + ev), ev * (1.0 - 0.5 * ev), ev < 1e-4), v, v > 20.0);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let t = lid.x;
  let B = p.B;
  let J = p.J;
  let BJ = B * J;
  let E = p.E;
  let R = p.R;
  let e0 = wg.x * CH;
  let d0 = wg.y * p.DS;
  let dEnd = min(p.D, d0 + p.DS);

  // the first batches of dt_proj's and out_proj's weights, loaded before the phases they wait for
  let c = t / TPC;   // dt_proj: channel and slice of R
  let rs = t % TPC;
  let e = e0 + c;
  var wd: array<vec4<f32>, DTB>;
  if (e < E) {
    for (var k = 0u; k < DTB; k++) {
      let r = 4u * (rs + TPC * k);
      if (r < R) { wd[k] = wdt4(e, r); }
    }
  }
  let oq = t % TPR;  // out_proj: channel quarter and row within a pass
  let orow = t / TPR;
  var wo: array<vec4<f32>, 4u * PB>;
  for (var pb = 0u; pb < PB; pb++) {
    let d = d0 + pb * RP + orow;
    if (d < dEnd) {
      for (var k = 0u; k < 4u; k++) { wo[pb * 4u + k] = wout4(d, e0 + 4u * (k * TPR + oq)); }
    }
  }

  // 1. x_proj = the sum of G1 partials; S slices of threads share an output, BATCH loads at a time
  let S = max(1u, WG / BJ);
  let slice = t % S;
  for (var i = t / S; i < BJ; i += WG / S) {
    var s = 0.0;
    for (var g0 = slice; g0 < p.G1; g0 += BATCH * S) {
      for (var k = 0u; k < BATCH; k++) {
        let g = g0 + k * S;
        if (g < p.G1) { s += mid[p.oQ + g * BJ + i]; }
      }
    }
    part[slice * BJ + i] = s;
  }
  workgroupBarrier();
  for (var i = t; i < BJ; i += WG) {
    var s = 0.0;
    for (var k = 0u; k < S; k++) { s += part[k * BJ + i]; }
    xd[i] = s;
  }
  workgroupBarrier();

  // 2. dt_proj: TPC threads a channel, each over every TPC-th group of 4 of its R weights
  var acc: array<f32, MAXB>;
  if (e < E) {
    for (var q0 = rs; 4u * q0 < R; q0 += TPC * DTB) {
      if (q0 != rs) {
        for (var k = 0u; k < DTB; k++) {
          let r = 4u * (q0 + TPC * k);
          if (r < R) { wd[k] = wdt4(e, r); }
        }
      }
      for (var k = 0u; k < DTB; k++) {
        let r = 4u * (q0 + TPC * k);
        for (var j = 0u; j < 4u; j++) {
          if (r + j < R) {
            for (var b = 0u; b < B; b++) { acc[b] = fma(wd[k][j], xd[b * J + r + j], acc[b]); }
          }
        }
      }
    }
  }
  for (var b = 0u; b < MAXB; b++) { part[t * MAXB + b] = acc[b]; }
  workgroupBarrier();
  if (rs == 0u && e < E) {
    for (var b = 0u; b < B; b++) {
      var s = lp[p.oPack + e * (N + 2u) + N]; // dt bias
      for (var k = 0u; k < TPC; k++) { s += part[(t + k) * MAXB + b]; }
      dy[b * CH + c] = softplus(s);
    }
  }
  workgroupBarrier();

  // 3. one step of the recurrence per (b, channel), N states in registers; y replaces delta in dy
  for (var i = t; i < B * CH; i += WG) {
    let b = i / CH;
    let cc = i % CH;
    let ee = e0 + cc;
    var yv = 0.0;
    if (ee < E) {
      let pk = p.oPack + ee * (N + 2u); // A·log2(e) [N], dt bias, D
      let dt = dy[i];
      let uv = mid[b * 2u * E + ee];
      let zv = mid[b * 2u * E + E + ee];
      let du = dt * uv;
      let s0 = (b * E + ee) * N;
      var hs: array<f32, N>;
      for (var n = 0u; n < N; n++) { hs[n] = ssmIn[s0 + n]; }
      var out = 0.0;
      for (var n = 0u; n < N; n++) {
        let hn = fma(exp2(dt * lp[pk + n]), hs[n], du * xd[b * J + R + n]);
        hs[n] = hn;
        out = fma(hn, xd[b * J + R + N + n], out);
      }
      if (wg.y == 0u) {
        for (var n = 0u; n < N; n++) { ssmOut[s0 + n] = hs[n]; }
      }
      out = fma(lp[pk + N + 1u], uv, out);
      yv = out * zv / (1.0 + exp(-zv));
    }
    dy[i] = yv;
  }
  workgroupBarrier();

  // 4. out_proj rows d0 .. dEnd over this group's channels, RP rows a pass, PB passes' weights loaded together
  for (var p0 = 0u; d0 + p0 * RP < dEnd; p0 += PB) {
    if (p0 != 0u) {
      for (var pb = 0u; pb < PB; pb++) {
        let d = d0 + (p0 + pb) * RP + orow;
        if (d < dEnd) {
          for (var k = 0u; k < 4u; k++) { wo[pb * 4u + k] = wout4(d, e0 + 4u * (k * TPR + oq)); }
        }
      }
    }
    for (var pb = 0u; pb < PB; pb++) {
      if (d0 + (p0 + pb) * RP >= dEnd) { break; } // the same in every thread
      let d = d0 + (p0 + pb) * RP + orow;
      var s = array<f32, MAXB>(); // explicit zeros: a var in a loop is not reliably re-zeroed on every trip
      for (var k = 0u; k < 4u; k++) {
        let cc = 4u * (k * TPR + oq);
        let w = wo[pb * 4u + k];
        for (var b = 0u; b < B; b++) {
          let o = b * CH + cc;
          s[b] = fma(w.x, dy[o], fma(w.y, dy[o + 1u], fma(w.z, dy[o + 2u], fma(w.w, dy[o + 3u], s[b]))));
        }
      }
      for (var b = 0u; b < MAXB; b++) { part[t * MAXB + b] = s[b]; }
      workgroupBarrier();
      if (oq == 0u && d < dEnd) {
        for (var b = 0u; b < B; b++) {
          var v = select(0.0, lp[p.oOutBias + d], wg.x == 0u);
          for (var j = 0u; j < TPR; j++) { v += part[(t + j) * MAXB + b]; }
          parts[(wg.x * B + b) * p.D + d] = v;
        }
      }
      workgroupBarrier();
    }
  }
}
`;

export interface MixerScanArgs {
  B: number; E: number; N: number; R: number; J: number; D: number;
  /** kernel 1's workgroups (its partial x_proj sums) */
  G1: number;
  mid: Buf; oQ: number; lp: Buf; oPack: number; oOutBias: number;
  wDt: Buf; wsDt: WeightStorage; wOut: Buf; wsOut: WeightStorage;
  ssmIn: Buf; ssmOut: Buf; parts: Buf;
  /** the workgroup layout (./geometry.ts) */
  g: MixerScanGeometry;
}

export function decodeMixerScan(gpu: Gpu, a: MixerScanArgs): void {
  const g = a.g;
  const vecR = a.R % 4 === 0, vecE = a.E % 4 === 0;
  const k = gpu.kernel(`decode_scan_${a.N}_${g.CH}_${a.wsDt}${vecR ? "v" : ""}_${a.wsOut}${vecE ? "v" : ""}`,
    () => wgsl(a.N, g.CH, a.wsDt, vecR, a.wsOut, vecE));
  const p = new Params().u32(a.B).u32(a.E).u32(a.R).u32(a.J).u32(a.G1).u32(a.oPack).u32(a.oQ).u32(a.D).u32(g.DS).u32(a.oOutBias);
  gpu.dispatch(k, [a.mid, a.lp, a.wDt, a.wOut, a.ssmIn, a.ssmOut, a.parts], p, [g.G, g.S]);
}
