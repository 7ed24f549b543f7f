/**
 * Fused decode, kernel 1 of 2 per layer (one token per row, B rows): everything from the layer's input to its
 * share of x_proj, in one dispatch. Each workgroup owns CH channels and, in order:
 *  1. rebuilds all B input rows in workgroup memory and RMS-normalizes them (./input.ts; every workgroup does this,
 *     it saves a dispatch): the previous layer's residual plus the G partial sums its kernel 2 left of out_proj,
 *     or, at the first layer, the embedding rows of the ids (the gather folded in here saves another dispatch);
 *     workgroup 0 writes the new residual;
 *  2. computes its 2·CH rows of in_proj (x and z of each channel), TPR threads a row reading 4-wide; the first
 *     batch of weights is loaded before step 1, which does not feed it, so the two latencies overlap;
 *  3. applies the causal conv (state shifted in place: the thread of (b, e) alone reads and writes it) and SiLU,
 *     writing x and z to xz;
 *  4. writes its partial x_proj Q[g, b, j] = Σ_{e of this group} Wx[j, e] · x[b, e]; kernel 2 sums over groups.
 * The residual lives in one [2, B, D] buffer: this layer reads half `par` and writes half 1 - par. xz and Q share
 * one buffer `mid` (a binding fewer: the first layer's variant binds 8 storage buffers, WebGPU's default limit).
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params } from "../../gpu.ts";
import { type WeightStorage, weight4Binding, weight4Reader, weightBinding, weightReader } from "../weights.ts";
import { gatherInputWgsl, normRowsWgsl, sumInputWgsl } from "./input.ts";

export const DECODE_MAX_B = 8;
/** Rows × hidden size that fit the workgroup's copy of the normalized input. */
export const DECODE_MAX_BD = 4096;
/** Conv kernel sizes the fused decode takes (the history is held in registers). */
export const DECODE_MAX_K = 9;

/** The first layer's input: the embedding table's storage; later layers read f32 partial sums (null). */
type Source = WeightStorage | null;

const wgsl = (CH: number, wsIn: WeightStorage, wsX: WeightStorage, first: Source) => {
  // storage bindings in order, then the parameter block
  const names = first ? ["tb", "ids", "res", "lp", "wIn", "wX", "convState", "mid"] : ["parts", "res", "lp", "wIn", "wX", "convState", "mid"];
  const at = (n: string) => names.indexOf(n);
  return /* wgsl */ `
// bindings: ${first ? "table [V, D] | ids [B] i32" : "parts [G, B, D] (the previous layer's out_proj, partial sums)"} | res [2, B, D]
//           | lp (layer constants) | Win [2E, D] | Wx [J, E] | convState [B, K-1, E] in/out
//           | mid out: xz [B, 2E] from word 0, Q [groups, B, J] from word oQ | params
// grid: (ceil(E / CH))
const WG = 256u;
const MAXB = ${DECODE_MAX_B}u;
const MAXU = ${DECODE_MAX_BD}u;
const CH = ${CH}u;          // channels per workgroup
const ROWS = 2u * CH;       // their in_proj rows: x then z
const TPR = WG / ROWS;      // threads per in_proj row
const BATCH = ${wsIn === "f32" ? 4 : 8}u; // in_proj loads issued together: 64 bytes a thread (f32 vec4s or packed-half pairs)
const MAXK = 8u;            // conv kernel sizes up to this

struct P {
  B: u32, D: u32, E: u32, K: u32, J: u32, hasRes: u32, par: u32, eps: f32,
  oNorm: u32, oInBias: u32, oConvW: u32, oConvB: u32,
  G: u32,   // partial groups of the input, or the table's rows V at the first layer
  oQ: u32,  // where Q starts in mid
}
${first
    ? `@group(0) @binding(${at("tb")}) var<storage, read> tb: array<${weightBinding(first)}>;
@group(0) @binding(${at("ids")}) var<storage, read> ids: array<i32>;`
    : `@group(0) @binding(${at("parts")}) var<storage, read> parts: array<f32>;`}
@group(0) @binding(${at("res")}) var<storage, read_write> res: array<f32>;
@group(0) @binding(${at("lp")}) var<storage, read> lp: array<f32>;
@group(0) @binding(${at("wIn")}) var<storage, read> wIn: array<${weight4Binding(wsIn)}>;
@group(0) @binding(${at("wX")}) var<storage, read> wX: array<${weightBinding(wsX)}>;
@group(0) @binding(${at("convState")}) var<storage, read_write> convState: array<f32>;
@group(0) @binding(${at("mid")}) var<storage, read_write> mid: array<f32>;
@group(0) @binding(${names.length}) var<uniform> p: P;

var<workgroup> us: array<f32, MAXU>;          // normalized input rows [B, D]
var<workgroup> red: array<f32, WG * MAXB>;    // partial sums
var<workgroup> rowOut: array<f32, MAXB * ROWS>;
var<workgroup> xcs: array<f32, MAXB * CH>;    // conv outputs of this group's channels

${weight4Reader(wsIn, "win4", "wIn")}
${weightReader(wsX, "wx", "wX")}
${first ? weightReader(first, "tbl", "tb") : ""}
fn normWeight(d: u32) -> f32 { return lp[p.oNorm + d]; }
${first ? gatherInputWgsl : sumInputWgsl(true)}
${normRowsWgsl}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let t = lid.x;
  let B = p.B;
  let D = p.D;
  let E = p.E;
  let e0 = wg.x * CH;

  // in_proj rows x[e], z[e] of this group's channels: the first batch of weights is loaded now
  let row = t / TPR;
  let q = t % TPR;
  let c = row % CH;
  let e = e0 + c;
  let grow = select(e, E + e, row >= CH);
  let D4 = D / 4u;
  var wv: array<vec4<f32>, BATCH>;
  if (e < E) {
    for (var k = 0u; k < BATCH; k++) {
      if (q + k * TPR < D4) { wv[k] = win4(grow * D4 + q + k * TPR); }
    }
  }

  // 1. the input rows, normalized
  ${first
    ? "gatherInput(t, B, D, p.G, wg.x == 0u, (1u - p.par) * B * D);"
    : "sumInput(t, B * D, p.G, p.hasRes != 0u, p.par * B * D, wg.x == 0u, (1u - p.par) * B * D);"}
  normRows(t, B, D, p.eps);

  // 2. in_proj
  var acc: array<f32, MAXB>;
  if (e < E) {
    for (var k0 = q; k0 < D4; k0 += BATCH * TPR) {
      if (k0 != q) {
        for (var k = 0u; k < BATCH; k++) {
          if (k0 + k * TPR < D4) { wv[k] = win4(grow * D4 + k0 + k * TPR); }
        }
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

  // 3. causal conv over (state, x) and SiLU, one thread per (b, channel)
  let H = p.K - 1u;
  for (var i = t; i < B * CH; i += WG) {
    let b = i / CH;
    let cc = i % CH;
    let ee = e0 + cc;
    var xc = 0.0;
    if (ee < E) {
      let xv = rowOut[b * ROWS + cc];
      var hist: array<f32, MAXK>;
      for (var j = 0u; j < MAXK; j++) { if (j < H) { hist[j] = convState[(b * H + j) * E + ee]; } }
      var s = lp[p.oConvB + ee];
      for (var j = 0u; j < MAXK; j++) { if (j < H) { s = fma(lp[p.oConvW + ee * p.K + j], hist[j], s); } }
      s = fma(lp[p.oConvW + ee * p.K + H], xv, s);
      // the history shifts by one: the oldest input leaves, x enters last
      for (var j = 0u; j < MAXK; j++) {
        if (j + 1u < H) { convState[(b * H + j) * E + ee] = hist[j + 1u]; }
      }
      if (H > 0u) { convState[(b * H + H - 1u) * E + ee] = xv; }
      xc = s / (1.0 + exp(-s));
      mid[b * 2u * E + ee] = xc;
      mid[b * 2u * E + E + ee] = rowOut[b * ROWS + CH + cc];
    }
    xcs[b * CH + cc] = xc;
  }
  workgroupBarrier();

  // 4. this group's share of x_proj
  for (var j = t; j < p.J; j += WG) {
    var a = array<f32, MAXB>(); // explicit zeros: a var in a loop is not reliably re-zeroed on every trip
    for (var cc = 0u; cc < CH; cc++) {
      let ee = e0 + cc;
      if (ee < E) {
        let wv = wx(j * E + ee);
        for (var b = 0u; b < B; b++) { a[b] = fma(wv, xcs[b * CH + cc], a[b]); }
      }
    }
    for (var b = 0u; b < B; b++) { mid[p.oQ + (wg.x * B + b) * p.J + j] = a[b]; }
  }
}
`;
};

export interface MixerInArgs {
  B: number; D: number; E: number; K: number; J: number; eps: number;
  /** the input: the previous layer's partial sums [G, B, D] over res, or the embedding of ids (first layer) */
  input: { parts: Buf; G: number; hasRes: boolean } | { table: Buf; ws: WeightStorage; V: number; ids: Buf };
  res: Buf; par: number;
  lp: Buf; oNorm: number; oInBias: number; oConvW: number; oConvB: number;
  wIn: Buf; wsIn: WeightStorage; wX: Buf; wsX: WeightStorage;
  convState: Buf; mid: Buf; oQ: number;
  /** channels per workgroup (./geometry.ts) */
  CH: number;
}

export function decodeMixerIn(gpu: Gpu, a: MixerInArgs): void {
  const CH = a.CH;
  const inp = a.input;
  const first: Source = "table" in inp ? inp.ws : null;
  const k = gpu.kernel(`decode_in_${CH}_${a.wsIn}_${a.wsX}_${first ?? "parts"}`, () => wgsl(CH, a.wsIn, a.wsX, first));
  const hasRes = "table" in inp ? false : inp.hasRes;
  const p = new Params().u32(a.B).u32(a.D).u32(a.E).u32(a.K).u32(a.J).bool(hasRes).u32(a.par).f32(a.eps)
    .u32(a.oNorm).u32(a.oInBias).u32(a.oConvW).u32(a.oConvB).u32("table" in inp ? inp.V : inp.G).u32(a.oQ);
  const src = "table" in inp ? [inp.table, inp.ids] : [inp.parts];
  gpu.dispatch(k, [...src, a.res, a.lp, a.wIn, a.wX, a.convState, a.mid], p, [Math.ceil(a.E / CH)]);
}
