/**
 * y = x · wᵀ + bias for a few rows of x (decode: one row per sequence of the batch). Reading w is the whole
 * cost, so each group of LPR threads (32, more for long rows) streams one row of w as 4-wide loads (vec4 of f32,
 * 2 u32 words of packed halves, or 4 values of a Q8_0 / Q4_0 block and its scale) and applies it to every row of x at once; the LPR partial sums are added in
 * workgroup memory. A lane loads its whole share of the row at once where it is at most 16 vec4s: rows past 2048
 * take 64 – 256 lanes so that it stays so (past 16384, 256 lanes load in batches). K is a constant of the
 * kernel (a pipeline per K). Needs K % 4 == 0 (the tiled kernel takes the rest). With `norm` the input is first
 * RMSNorm(x + res) · g, which every workgroup computes for itself: the decode's head takes norm_f so, without a
 * dispatch of its own.
 */
import type { Buf, Gpu } from "../gpu.ts";
import { Params, grid } from "../gpu.ts";
import { type WeightStorage, weight4Binding, weight4Reader } from "./weights.ts";
import { ORDERABLE_WGSL, treeSumWgsl } from "./wgsl-common.ts";
import { defineKernel } from "../kernel-def.ts";

/** Rows of x this kernel takes at most. */
export const MATVEC_MAX_ROWS = 8;

/** vec4s of a row of w a lane loads at most before using any: a whole row where it fits in this many (no loop
 *  over batches, every load in flight at once), else batches of `loadBytes`. (With the next batch in flight while
 *  one was used, 1.4b's out_proj took 13.1 against 9.9 us on the H200; the whole row at once took 1.4b's head from
 *  393 to 95 us, 130m's out_proj from 5.1 to 3.8.) */
const WHOLE_ROW_VEC4S = 16;

/** Lanes a row of w: as many (32 – 256) as keep a lane's share within WHOLE_ROW_VEC4S. (32 lanes loading rows
 *  past 2048 in batches of loadBytes were slower: BENCHMARKS.md.) */
export function matvecRowLanes(K: number): number {
  const split = Math.ceil(Math.ceil(K / 4 / 32) / WHOLE_ROW_VEC4S);
  return 32 * Math.min(8, 2 ** Math.ceil(Math.log2(split)));
}

const wgsl = (T: number, K: number, ws: WeightStorage, loadBytes: number, LPR: number, norm: boolean, argmax: boolean) => {
  const K4 = K / 4;
  const perLane = Math.ceil(K4 / LPR);
  const BATCH = perLane <= WHOLE_ROW_VEC4S ? perLane : loadBytes / (ws === "f32" ? 16 : 8);
  return /* wgsl */ `
// bindings: 0 x [T, ldx] f32 | 1 w [N, K] as 4-element groups | 2 bias [N] | 3 y [T, N]
//           ${norm ? "4 res [.., T, K] (from offRes) | 5 g [K] (the norm's weight) | " : ""}${argmax ? `${norm ? 6 : 4} part (atomic) | ${norm ? 7 : 5} ids [T] (i32) | ` : ""}params
const T = ${T}u;     // rows of x
const K4 = ${K4}u;   // 4-element groups of a row of w: a constant, so that the loops below have constant bounds
const LPR = ${LPR}u; // lanes a row of w
const RPW = ${256 / LPR}u; // rows of w per workgroup
const BATCH = ${BATCH}u; // vec4s (or packed-half pairs) a lane loads together
const NIT = ${Math.ceil(perLane / BATCH)}u; // batches a lane

struct P { N: u32, ldx: u32, offx: u32, hasBias: u32, groupsX: u32, eps: f32, offRes: u32, V: u32, groups: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<${weight4Binding(ws)}>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
${norm ? `@group(0) @binding(4) var<storage, read> res: array<f32>;
@group(0) @binding(5) var<storage, read> g: array<f32>;
${argmax ? ARGMAX_BINDINGS(6) : ""}@group(0) @binding(${argmax ? 8 : 6}) var<uniform> p: P;

var<workgroup> us: array<f32, T * K4 * 4u>; // (x + res) · g [T, K]; the norm's scale is applied to the sums
// the input at (row t, column k)
fn xAt(t: u32, k: u32) -> f32 { return us[t * K4 * 4u + k]; }` : `${argmax ? ARGMAX_BINDINGS(4) : ""}@group(0) @binding(${argmax ? 6 : 4}) var<uniform> p: P;
fn xAt(t: u32, k: u32) -> f32 { return x[t * p.ldx + p.offx + k]; }`}

var<workgroup> red: array<f32, 256u * T>;
${argmax ? ARGMAX_DECLS : ""}
${weight4Reader(ws)}

// batch i of this lane's share of row n: unconditional loads (the index clamped to the row, the excess unused) so
// that all are in flight together; behind a bounds check each would wait for the one before
fn load(n: u32, lane: u32, i: u32) -> array<vec4<f32>, BATCH> {
  var wv: array<vec4<f32>, BATCH>;
  for (var k = 0u; k < BATCH; k++) { wv[k] = weight4(n * K4 + min(lane + LPR * (i * BATCH + k), K4 - 1u)); }
  return wv;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let lane = lid.x % LPR;
  let n = (wg.y * p.groupsX + wg.x) * RPW + lid.x / LPR;
  let nc = min(n, p.N - 1u); // rows past N load row N - 1 and store nothing
  var s: array<f32, T>;
  for (var t = 0u; t < T; t++) { s[t] = 0.0; }
${norm ? `  // RMSNorm of x + res, each workgroup for itself (K values a row: cheaper than a dispatch): the rows times g
  // into workgroup memory, each row's 1 / rms from a tree of sums of squares
  var inv: array<f32, T>;
  for (var t = 0u; t < T; t++) {
    var ss = 0.0;
    for (var k = lid.x; k < K4 * 4u; k += 256u) {
      let v = x[t * p.ldx + p.offx + k] + res[p.offRes + t * K4 * 4u + k];
      us[t * K4 * 4u + k] = v * g[k];
      ss = fma(v, v, ss);
    }
    red[t * 256u + lid.x] = ss;
  }
  workgroupBarrier();
  ${treeSumWgsl("red", "lid.x", "T")}
  for (var t = 0u; t < T; t++) { inv[t] = inverseSqrt(red[t * 256u] / f32(K4 * 4u) + p.eps); }
  workgroupBarrier(); // red is reused below
` : ""}  for (var i = 0u; i < NIT; i++) {
    let wv = load(nc, lane, i);
    for (var k = 0u; k < BATCH; k++) {
      let k4 = lane + LPR * (i * BATCH + k);
      if (k4 < K4) {
        for (var t = 0u; t < T; t++) {
          let o = k4 * 4u;
          s[t] = fma(wv[k].x, xAt(t, o), fma(wv[k].y, xAt(t, o + 1u), fma(wv[k].z, xAt(t, o + 2u), fma(wv[k].w, xAt(t, o + 3u), s[t]))));
        }
      }
    }
  }
  for (var t = 0u; t < T; t++) { red[t * 256u + lid.x] = s[t]${norm ? " * inv[t]" : ""}; }
  workgroupBarrier();
  for (var st = LPR / 2u; st > 0u; st >>= 1u) {
    if (lane < st) {
      for (var t = 0u; t < T; t++) { red[t * 256u + lid.x] += red[t * 256u + lid.x + st]; }
    }
    workgroupBarrier();
  }
  if (lane == 0u) {
    var b = 0.0;
    if (p.hasBias != 0u && n < p.N) { b = bias[n]; }
    for (var t = 0u; t < T; t++) {
      let v = red[t * 256u + lid.x] + b;
      if (n < p.N) { y[t * p.N + n] = v; }
${argmax ? `      kHi[t * RPW + lid.x / LPR] = select(0u, orderable(v), n < p.V); // 0: below every real key, rows past V take no part
` : ""}    }
  }
${argmax ? `  // the best of this workgroup's rows below V for each row of x, then the best of all workgroups' (greedy)
  let gi = wg.y * p.groupsX + wg.x;
  if (gi >= p.groups) { return; } // the grid's padding past the last group
  workgroupBarrier();
  if (lid.x < T) {
    var bh = 0u;
    var bl = 0u;
    for (var r = 0u; r < RPW; r++) {
      let h = kHi[lid.x * RPW + r];
      let l = p.V - 1u - min(gi * RPW + r, p.V - 1u);
      if (keyGT(h, l, bh, bl)) { bh = h; bl = l; }
    }
    atomicStore(&part[2u * (gi * T + lid.x)], bh);
    atomicStore(&part[2u * (gi * T + lid.x) + 1u], bl);
  }
  argmaxFinish(lid.x);` : ""}
}
`;
};

/** WGSL of the argmax option's bindings from binding \`at\`: the partial bests of every workgroup (a key each: two
 *  words) and their count after them, and the ids out. */
const ARGMAX_BINDINGS = (at: number) => `@group(0) @binding(${at}) var<storage, read_write> part: array<atomic<u32>>;
@group(0) @binding(${at + 1}) var<storage, read_write> ids: array<i32>;
`;

/** The argmax option's declarations: the keys of a workgroup's rows, and the last workgroup's reduction over all
 *  partial bests. Keys as the sampler's (kernels/sample.ts): (orderable(logit), V - 1 - id), larger is better, so
 *  ties go to the smaller id. */
const ARGMAX_DECLS = /* wgsl */ `
var<workgroup> kHi: array<u32, RPW * T>;
var<workgroup> rHi: array<u32, 256>;
var<workgroup> rLo: array<u32, 256>;
var<workgroup> last: u32;
${ORDERABLE_WGSL}
fn keyGT(h: u32, l: u32, qh: u32, ql: u32) -> bool { return h > qh || (h == qh && l > ql); }
// after this workgroup's partial bests: counts it finished; the last one to finish reduces every partial best to
// the ids (reading them through atomics, which other workgroups' stores in this dispatch reach) and sets the count
// back to zero for the next dispatch
fn argmaxFinish(t: u32) {
  storageBarrier();
  if (t == 0u) { last = u32(atomicAdd(&part[2u * p.groups * T], 1u) == p.groups - 1u); }
  if (workgroupUniformLoad(&last) == 0u) { return; }
  for (var row = 0u; row < T; row++) {
    var bh = 0u;
    var bl = 0u;
    for (var gi = t; gi < p.groups; gi += 256u) {
      let h = atomicLoad(&part[2u * (gi * T + row)]);
      let l = atomicLoad(&part[2u * (gi * T + row) + 1u]);
      if (keyGT(h, l, bh, bl)) { bh = h; bl = l; }
    }
    rHi[t] = bh;
    rLo[t] = bl;
    workgroupBarrier();
    for (var st = 128u; st > 0u; st >>= 1u) {
      if (t < st && keyGT(rHi[t + st], rLo[t + st], rHi[t], rLo[t])) {
        rHi[t] = rHi[t + st];
        rLo[t] = rLo[t + st];
      }
      workgroupBarrier();
    }
    if (t == 0u) { ids[row] = i32(p.V - 1u - rLo[0]); }
    workgroupBarrier();
  }
  if (t == 0u) { atomicStore(&part[2u * p.groups * T], 0u); }
}
`;

export interface MatvecArgs {
  x: Buf; ldx: number; offx: number; rows: number; K: number;
  w: Buf; ws: WeightStorage; N: number;
  bias: Buf | null;
  y: Buf;
  loadBytes?: number; // bytes of w a lane loads at once: 64 (default), 128, 256 or 384
  // x is RMSNorm(x + res) · g first (res [T, K] from word offRes of its buffer); rows · K at most MATVEC_NORM_MAX
  norm?: { res: Buf; offRes: number; g: Buf; eps: number };
  // also the greedy choice of each row of y, over its first V columns, into ids (i32 [T]), in the same dispatch:
  // part holds matvecArgmaxWords(...) words, zero at first (a dispatch leaves them so)
  argmax?: { V: number; part: Buf; ids: Buf };
}

/** Words of the argmax option's buffer for rows × N outputs: two a workgroup and row, and the count. */
export function matvecArgmaxWords(rows: number, N: number, K: number): number {
  return 2 * matvecGroups(N, K) * rows + 1;
}

/** Workgroups of a matvec over N rows of w of K weights. */
function matvecGroups(N: number, K: number): number {
  return Math.ceil(N / (256 / matvecRowLanes(K)));
}

/** Rows × K a matvec with the norm (MatvecArgs.norm) takes: its normalized input is held in workgroup memory. */
export const MATVEC_NORM_MAX = 4096;

/** T rows of x, K weights a row of w (a multiple of 4), LPR lanes a row (matvecRowLanes); with the norm, the argmax. */
const matvecKernel = defineKernel({
  name: "matvec",
  wgsl: (s: { T: number; K: number; ws: WeightStorage; loadBytes: number; LPR: number; norm: boolean; argmax: boolean }) =>
    wgsl(s.T, s.K, s.ws, s.loadBytes, s.LPR, s.norm, s.argmax),
  label: (s) => `matvec_${s.T}_${s.K}_${s.ws}_${s.loadBytes}_${s.LPR}${s.norm ? "_norm" : ""}${s.argmax ? "_argmax" : ""}`,
  example: { T: 1, K: 768, ws: "f32", loadBytes: 64, LPR: 32, norm: false, argmax: false },
});

// x: [T <= 8, K] window, w: [N, K], bias: [N] -> y: [T, N]
export function matvec(gpu: Gpu, a: MatvecArgs): void {
  const loadBytes = a.loadBytes ?? 64;
  if (a.K % 4 !== 0) throw new Error(`matvec: K ${a.K} is not a multiple of 4`);
  const LPR = matvecRowLanes(a.K);
  const norm = a.norm ?? null, am = a.argmax ?? null;
  if (norm && a.rows * a.K > MATVEC_NORM_MAX) throw new Error(`matvec: ${a.rows} rows of ${a.K} to normalize, expected at most ${MATVEC_NORM_MAX} values`);
  if (am && !(am.V >= 1 && am.V <= a.N)) throw new Error(`matvec: argmax over ${am.V} of ${a.N} columns`);
  const k = gpu.kernel(matvecKernel, { T: a.rows, K: a.K, ws: a.ws, loadBytes, LPR, norm: !!norm, argmax: !!am });
  const groups = matvecGroups(a.N, a.K);
  const [gx, gy] = grid(groups, gpu.limits.maxComputeWorkgroupsPerDimension);
  const p = new Params().u32(a.N).u32(a.ldx).u32(a.offx).bool(!!a.bias).u32(gx).f32(norm?.eps ?? 0).u32(norm?.offRes ?? 0)
    .u32(am?.V ?? 0).u32(groups);
  gpu.dispatch(k, [a.x, a.w, a.bias ?? gpu.dummy, a.y, ...(norm ? [norm.res, norm.g] : []), ...(am ? [am.part, am.ids] : [])], p, [gx, gy]);
}
