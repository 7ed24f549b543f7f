/**
 * Backward of Mamba-2's SSM on WebGPU (the CPU's ssdBackwardF32, ../../../cpu/ssd-backward.ts, is the reference):
 * the recurrence run backwards in time with dS ([P, N]), the gradient reaching the state:
 *   dS' = dS + gy ⊗ C_t;  dC_t = gyᵀ·state_t;  dB_t = dt·dS'ᵀ·x_t;  dx_t = D·gy + dt·dS'·B_t
 *   da = Σ dS'∘state_{t-1};  ddt = Σ dS'·x_t⊗B_t + da·a·A;  dA += da·a·dt;  dS = a·dS'
 * where gy = dout·silu(z) (the caller computes it first: y before the gate comes from a forward scan without z).
 *
 * Every state value (p, n) follows its own recurrence; only the gradients sum over p or n. So a workgroup takes one
 * (batch row b, head h, block of TP rows p, block of NB columns n), a thread a row p with NB state values and NB of
 * dS in registers, and workgroups are B·H·⌈P/TP⌉·⌈N/NB⌉ (at B1 H24 P64 N128: 384 of 64 threads):
 * - ssd_bwd_forward runs the forward once, keeping the state at the start of every M-th chunk of K positions
 *   (checkpoints, in the work buffer; M = 1, or 4 where that saves splitting the heads into pieces);
 * - ssd_bwd_main walks the chunks from the last. A chunk's inputs are staged in workgroup memory (loaded into
 *   registers while the chunk before is worked on, where it comes right after it); its states are
 *   recomputed from their checkpoint into workgroup memory (each thread its own; with M > 1 the run's M chunk
 *   starts first), then it steps back through them. Per step the sums over the block's rows (dB_t, dC_t of its
 *   columns, da, the first term of ddt) go by subgroup shuffles over blocks of W rows (a reduce-scatter, as the
 *   Mamba-1 scan backward's: no barrier), and over the blocks in workgroup memory once a chunk; without subgroups
 *   all through workgroup memory (two buffers taking turns: one barrier a step); the sum over columns of dx is
 *   left in partials per column block, one per (t, h, block, p);
 * - ssd_bwd_rows (a thread per (t, h)) finishes ddt and dt's gradient from the blocks' partials and each row's terms
 *   of dA_log, D and dt_bias; ssd_bwd_dx (per (t, h, p)) adds up dx; ssd_bwd_reduce sums dB, dC over the heads of a
 *   group and the row blocks; ssd_bwd_params sums the per-row terms over time. All add into the caller's windows.
 * Time goes in segments (from the last, dS carried between them) so that the per-position partials are a
 * segment's; heads go in pieces only where the checkpoints alone would not fit a buffer (the scratch is reused).
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params, grid } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";
import { check } from "../../../../errors.ts";
import { softplusWgsl } from "./common.ts";
import { reduceScatter } from "../backward/scan/reduce.ts";

/** state columns a thread keeps (a column block) */
const NB = 8;
/** the most rows (threads) a workgroup takes */
const MAX_TP = 64;
/** positions the forward kernel stages at a time */
const FWD_STAGE = 32;
/** the longest chunk between checkpoints (its states sit in workgroup memory, K·NB·TP floats) */
const MAX_K = 8;

export interface SsdBwdShape {
  /** threads (rows) a workgroup, a multiple of 32 */
  TP: number;
  /** positions a chunk: the backward recomputes a chunk's states at once, into workgroup memory */
  K: number;
  /** chunks between the checkpoints kept in the work buffer (1, or more to keep fewer: the main kernel then
   *  recomputes the checkpoints of a run of M chunks into workgroup memory first) */
  M: number;
  /** the sums over rows: by subgroup shuffles over blocks of W lanes (a power of two, at most the device's smallest
   *  subgroup), then workgroup memory over the blocks; or 0, all through workgroup memory */
  W: number;
}

// the parameters every backward kernel reads (one struct, so that one Params serves them all)
const paramsStruct = /* wgsl */ `struct P {
  B: u32, L: u32, H: u32, P: u32, G: u32, N: u32, h0: u32, hp: u32,
  nNB: u32, nPB: u32, nK: u32, groupsX: u32,
  ldx: u32, offx: u32, lddt: u32, offdt: u32, ldb: u32, offb: u32, ldc: u32, offc: u32,
  ldo: u32, offo: u32, hasState: u32, lo: f32, hi: f32,
  oCk: u32, oDx: u32, oDB: u32, oDC: u32, oDa: u32, oDdt: u32, oTerms: u32,
  oDS: u32, cA: u32, cB: u32, tA: u32, Sn: u32,
}`;

const commonWgsl = /* wgsl */ `
fn sigmoid(v: f32) -> f32 { return 1.0 / (1.0 + exp(-v)); }
// dt at row r (after its bias, the softplus and the clamp), and the raw value before the softplus
fn dtRaw(r: u32, h: u32) -> f32 { return dt[r * p.lddt + p.offdt + h] + consts[h]; }
fn dtOf(v: f32) -> f32 { return clamp(${softplusWgsl("v")}, p.lo, p.hi); }
`;

// one workgroup a (b, h, row block, column block): its id and what it covers
const blockWgsl = (s: SsdBwdShape) => /* wgsl */ `
  let wid = wg.y * p.groupsX + wg.x;
  let nb = wid % p.nNB;
  let pb = (wid / p.nNB) % p.nPB;
  let bhl = wid / (p.nNB * p.nPB);
  if (bhl >= p.B * p.hp) { return; }
  let b = bhl / p.hp;
  let hl = bhl % p.hp;
  let h = p.h0 + hl;
  let g = h / (p.H / p.G);
  let A = -exp(consts[p.H + h]);
  let row = pb * ${s.TP}u + tid; // this thread's row p of the state
  let live = row < p.P;
  let prow = min(row, p.P - 1u); // a row to read where it is not live (its values are masked)
  let n0 = nb * NB;
  let ck = p.oCk + wid * ((p.nK + ${s.M - 1}u) / ${s.M}u) * NB * ${s.TP}u; // this workgroup's checkpoints: [⌈nK / M⌉][NB][TP]
`;

/** floats of a chunk's staged inputs (x, B, dt and the decay; with gy and C in the main kernel) */
const stageFloats = (s: SsdBwdShape, main: boolean) => s.K * ((main ? 2 : 1) * (s.TP + NB) + 2);

// the KS positions [t0, t1)'s inputs into workgroup memory, the threads loading side by side: sx [K][TP] (the block's
// rows of x), sB [K][NB] (its columns of B), sd, sa [K] (dt and the decay exp(dt·A)); and sg, sC in the main kernel
const stageDecls = (KS: number, s: SsdBwdShape, main: boolean) => /* wgsl */ `
var<workgroup> sx: array<f32, ${KS * s.TP}>;
var<workgroup> sB: array<f32, ${KS * NB}>;
var<workgroup> sd: array<f32, ${KS}>;
var<workgroup> sa: array<f32, ${KS}>;
${main ? `var<workgroup> sg: array<f32, ${KS * s.TP}>;
var<workgroup> sC: array<f32, ${KS * NB}>;` : ""}`;
const stageWgsl = (KS: number, s: SsdBwdShape, main: boolean) => /* wgsl */ `
    for (var i = tid; i < ${KS * s.TP}u; i += ${s.TP}u) {
      let t = t0 + i / ${s.TP}u;
      let q = pb * ${s.TP}u + i % ${s.TP}u;
      let ok = t < t1 && q < p.P;
      let r = b * p.L + min(t, p.L - 1u);
      let qq = min(q, p.P - 1u);
      sx[i] = select(0.0, x[r * p.ldx + p.offx + h * p.P + qq], ok);
      ${main ? "sg[i] = select(0.0, gy[r * p.H * p.P + h * p.P + qq], ok);" : ""}
    }
    for (var i = tid; i < ${KS * NB}u; i += ${s.TP}u) {
      let t = t0 + i / NB;
      let n = n0 + i % NB;
      let ok = t < t1 && n < p.N;
      let r = b * p.L + min(t, p.L - 1u);
      let nn = min(n, p.N - 1u);
      sB[i] = select(0.0, Bm[r * p.ldb + p.offb + g * p.N + nn], ok);
      ${main ? "sC[i] = select(0.0, Cm[r * p.ldc + p.offc + g * p.N + nn], ok);" : ""}
    }
    for (var i = tid; i < ${KS}u; i += ${s.TP}u) {
      let d = dtOf(dtRaw(b * p.L + min(t0 + i, p.L - 1u), h));
      sd[i] = d;
      sa[i] = exp(d * A);
    }
    workgroupBarrier();`;

/**
 * The main kernel's chunk inputs through registers, so that the next chunk's loads are in flight while this one
 * is worked on: declarations, the loads of the chunk starting at position `start` (a WGSL expression), and their
 * stores into the stage (unrolled: each thread loads x and gy of its own row for the K positions, its share of B and
 * C, and dt for one position).
 */
function prefetchWgsl(s: SsdBwdShape) {
  const nBC = Math.ceil((s.K * NB) / s.TP);
  const decls = [...Array.from({ length: s.K }, (_, m) => `var pfx${m} = 0.0; var pfg${m} = 0.0;`),
    ...Array.from({ length: nBC }, (_, m) => `var pfB${m} = 0.0; var pfC${m} = 0.0;`), "var pfv = 0.0;"].join("\n  ");
  const load = (start: string) => `{
      let f0 = ${start};
      let f1 = min(p.L, f0 + K);
      let q = pb * TP + tid;
      let qq = min(q, p.P - 1u);
      ${Array.from({ length: s.K }, (_, m) => `{
        let r = b * p.L + min(f0 + ${m}u, p.L - 1u);
        let ok = f0 + ${m}u < f1 && q < p.P;
        pfx${m} = select(0.0, x[r * p.ldx + p.offx + h * p.P + qq], ok);
        pfg${m} = select(0.0, gy[r * p.H * p.P + h * p.P + qq], ok);
      }`).join("\n      ")}
      ${Array.from({ length: nBC }, (_, m) => `{
        let i = tid + ${m * s.TP}u;
        let n = n0 + i % NB;
        let t = f0 + i / NB;
        let ok = i < K * NB && t < f1 && n < p.N;
        let r = b * p.L + min(t, p.L - 1u);
        let nn = min(n, p.N - 1u);
        pfB${m} = select(0.0, Bm[r * p.ldb + p.offb + g * p.N + nn], ok);
        pfC${m} = select(0.0, Cm[r * p.ldc + p.offc + g * p.N + nn], ok);
      }`).join("\n      ")}
      pfv = dtRaw(b * p.L + min(f0 + min(tid, K - 1u), p.L - 1u), h);
    }`;
  const store = `${Array.from({ length: s.K }, (_, m) => `sx[tid + ${m * s.TP}u] = pfx${m}; sg[tid + ${m * s.TP}u] = pfg${m};`).join("\n    ")}
    ${Array.from({ length: nBC }, (_, m) => `if (tid + ${m * s.TP}u < K * NB) { sB[tid + ${m * s.TP}u] = pfB${m}; sC[tid + ${m * s.TP}u] = pfC${m}; }`).join("\n    ")}
    if (tid < K) {
      let d = dtOf(pfv);
      sd[tid] = d;
      sa[tid] = exp(d * A);
    }`;
  return { decls, load, store };
}

const fwdWgsl = (s: SsdBwdShape) => /* wgsl */ `
// bindings: 0 x | 1 dt | 2 Bm | 3 consts [3H] | 4 state0 [B, H, P, N] | 5 work | 6 params
${paramsStruct}
const NB = ${NB}u;
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dt: array<f32>;
@group(0) @binding(2) var<storage, read> Bm: array<f32>;
@group(0) @binding(3) var<storage, read> consts: array<f32>;
@group(0) @binding(4) var<storage, read> state0: array<f32>;
@group(0) @binding(5) var<storage, read_write> work: array<f32>;
@group(0) @binding(6) var<uniform> p: P;
${stageDecls(FWD_STAGE, s, false)}
${commonWgsl}
// the forward over the block's state values, keeping the state before every (K·M)-th position; the inputs staged
// FWD_STAGE positions at a time
@compute @workgroup_size(${s.TP})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
${blockWgsl(s)}
  var st: array<f32, NB>;
  for (var j = 0u; j < NB; j++) {
    let n = n0 + j;
    st[j] = select(0.0, state0[((b * p.H + h) * p.P + prow) * p.N + min(n, p.N - 1u)], p.hasState != 0u && live && n < p.N);
  }
  for (var t0 = 0u; t0 < p.L; t0 += ${FWD_STAGE}u) {
    let t1 = min(p.L, t0 + ${FWD_STAGE}u);
    ${stageWgsl(FWD_STAGE, s, false)}
    for (var k = 0u; k < t1 - t0; k++) {
      if ((t0 + k) % ${s.K * s.M}u == 0u) {
        for (var j = 0u; j < NB; j++) { work[ck + ((t0 + k) / ${s.K * s.M}u * NB + j) * ${s.TP}u + tid] = st[j]; }
      }
      let dx = sd[k] * sx[k * ${s.TP}u + tid];
      for (var j = 0u; j < NB; j++) { st[j] = fma(sa[k], st[j], dx * sB[k * NB + j]); }
    }
    workgroupBarrier(); // the chunk's inputs have been read
  }
}
`;

const RED = 2 * NB + 2; // the sums over rows a step: dB (NB), dC (NB), da, ddt

/** the terms a lane sums by shuffles: RED rounded up to a multiple of W */
const rv = (W: number) => Math.ceil(RED / W) * W;

/** The step k's sums of the terms tv[0 .. RED) over each block of W rows by subgroup shuffles, into red[k][block]
 *  (see mainWgsl). */
function shuffleSums(W: number, TP: number): string {
  const { lines, terms } = reduceScatter(Array.from({ length: rv(W) }, (_, k) => (k < RED ? `tv[${k}]` : "0.0")), W / 2, 1, "sgl");
  const k0 = `(sgl % ${W}u) * ${terms.length}u`;
  return [...lines, ...terms.map((v, i) => `red[(k * ${TP / W}u + tid / ${W}u) * ${rv(W)}u + ${k0} + ${i}u] = ${v};`)].join("\n      ");
}

const mainWgsl = (s: SsdBwdShape) => /* wgsl */ `${s.W > 0 ? "enable subgroups;" : ""}
// bindings: 0 x | 1 dt | 2 Bm | 3 Cm | 4 consts [3H] | 5 gy [T, H·P] | 6 work | 7 params
// the segment of chunks [cA, cB) (positions tA .. tA + Sn of every batch row), dS carried at oDS from the segment
// after it; work: the checkpoints at oCk; out, per (b, t) of the segment: dx partials [B·Sn, hp, nNB, P] at oDx, dB
// and dC per head and row block [B·Sn, hp, nPB, N] at oDB, oDC, da and the first term of ddt per block
// [B·Sn, hp, nPB·nNB] at oDa, oDdt
${paramsStruct}
const NB = ${NB}u;
const TP = ${s.TP}u;
const K = ${s.K}u;
const RED = ${RED}u;
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dt: array<f32>;
@group(0) @binding(2) var<storage, read> Bm: array<f32>;
@group(0) @binding(3) var<storage, read> Cm: array<f32>;
@group(0) @binding(4) var<storage, read> consts: array<f32>;
@group(0) @binding(5) var<storage, read> gy: array<f32>;
@group(0) @binding(6) var<storage, read_write> work: array<f32>;
@group(0) @binding(7) var<uniform> p: P;
${stageDecls(s.K, s, true)}
${s.M > 1 ? `// the starting states of a run's chunks (each thread reads back only its own): [M][NB][TP]
var<workgroup> ick: array<f32, ${s.M * NB * s.TP}>;` : ""}
// the chunk's states (each thread reads back only its own): [K][NB][TP]
var<workgroup> hist: array<f32, ${s.K * NB * s.TP}>;
${s.W > 0
    ? `// the blocks' sums of the chunk's steps: [K][TP / W][RV]
var<workgroup> red: array<f32, ${s.K * (s.TP / s.W) * rv(s.W)}>;`
    : `// the per-row terms of a step's sums, two steps' worth taking turns: [2][RED][TP + 1] (padded against bank clashes)
var<workgroup> red: array<f32, ${2 * RED * (s.TP + 1)}>;`}
${commonWgsl}
@compute @workgroup_size(${s.TP})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32${s.W > 0 ? ", @builtin(subgroup_invocation_id) sgl: u32" : ""}) {
${blockWgsl(s)}
  let HP = p.H * p.P;
  var tv: array<f32, RED>; // this row's terms of the step's sums: dB (NB), dC (NB), da, ddt
  var dS: array<f32, NB>;
  var st: array<f32, NB>;
  // dS from the segment after this one (zero after the last position)
  let carried = p.oDS + wid * NB * TP;
  for (var j = 0u; j < NB; j++) { dS[j] = select(0.0, work[carried + j * TP + tid], p.cB < p.nK); }
  var turn = 0u;
  ${prefetchWgsl(s).decls}
  var have = false; // the registers hold the inputs of the chunk about to be worked on
  // runs of M chunks from the last (the segment starts and ends at runs' bounds, or at L)
  for (var o1 = (p.cB + ${s.M - 1}u) / ${s.M}u; o1 > p.cA / ${s.M}u; o1--) {
    let oc = o1 - 1u;
    let nIn = min(${s.M}u, p.nK - oc * ${s.M}u); // chunks in this run
    ${s.M > 1 ? `// the run's chunks' starting states from its checkpoint, into ick
    for (var j = 0u; j < NB; j++) { st[j] = work[ck + (oc * NB + j) * TP + tid]; }
    for (var i = 0u; i < nIn; i++) {
      for (var j = 0u; j < NB; j++) { ick[(i * NB + j) * TP + tid] = st[j]; }
      if (i + 1u < nIn) {
        let t0 = (oc * ${s.M}u + i) * K;
        let t1 = min(p.L, t0 + K);
        ${stageWgsl(s.K, s, false)}
        for (var k = 0u; k < t1 - t0; k++) {
          let dx = sd[k] * sx[k * TP + tid];
          for (var j = 0u; j < NB; j++) { st[j] = fma(sa[k], st[j], dx * sB[k * NB + j]); }
        }
        workgroupBarrier(); // the chunk's inputs have been read
      }
    }` : ""}
  for (var i1 = nIn; i1 > 0u; i1--) {
    let c = oc * ${s.M}u + i1 - 1u;
    let t0 = c * K;
    let t1 = min(p.L, t0 + K);
    // the chunk's starting state (loaded first: its wait overlaps the staging's)
    for (var j = 0u; j < NB; j++) { st[j] = ${s.M > 1 ? "ick[((i1 - 1u) * NB + j) * TP + tid]" : "work[ck + (oc * NB + j) * TP + tid]"}; }
    // the chunk's inputs (the previous chunk's were all read before its last barrier): from the registers where
    // they were loaded during the previous chunk, else loaded now
    if (!have) ${prefetchWgsl(s).load("t0")}
    ${prefetchWgsl(s).store}
    workgroupBarrier();
    // the next chunk's inputs into the registers, where it comes right after this one (in this run and segment)
    have = ${s.M > 1 ? "i1 > 1u" : "c > p.cA"};
    if (have) ${prefetchWgsl(s).load("t0 - K")}
    // the chunk's states from its start: hist[k] = the state before step t0 + k
    for (var k = 0u; k < t1 - t0; k++) {
      let dx = sd[k] * sx[k * TP + tid];
      for (var j = 0u; j < NB; j++) {
        hist[(k * NB + j) * TP + tid] = st[j];
        st[j] = fma(sa[k], st[j], dx * sB[k * NB + j]);
      }
    }
    // back through the chunk: st is state_t
    for (var tt = t1; tt > t0; tt--) {
      let t = tt - 1u;
      let r = b * p.L + t;
      let k = t - t0;
      let d = sd[k];
      let a = sa[k];
      let xv = sx[k * TP + tid];
      let gv = sg[k * TP + tid];
      var dxp = 0.0;
      var da = 0.0;
      var ddt = 0.0;
      let base = turn * RED * (TP + 1u);${s.W > 0 ? " // (unused with shuffles)" : ""}
      for (var j = 0u; j < NB; j++) {
        let Bn = sB[k * NB + j];
        let Cn = sC[k * NB + j];
        let prev = hist[(k * NB + j) * TP + tid];
        let dsv = fma(gv, Cn, dS[j]); // the whole gradient reaching state_t
        let bx = dsv * xv;
        tv[j] = d * bx;
        tv[NB + j] = gv * st[j];
        da = fma(dsv, prev, da);
        ddt = fma(bx, Bn, ddt);
        dxp = fma(dsv, Bn, dxp);
        dS[j] = a * dsv;
        st[j] = prev;
      }
      tv[2u * NB] = da;
      tv[2u * NB + 1u] = ddt;
      let hr = (b * p.Sn + t - p.tA) * p.hp + hl; // (b, t, h) of this segment and piece
      if (live) { work[p.oDx + (hr * p.nNB + nb) * p.P + row] = d * dxp; }
      ${s.W > 0 ? `// the sums over each block of W rows now (no barrier); over the blocks after the chunk
      ${shuffleSums(s.W, s.TP)}` : `for (var k = 0u; k < RED; k++) { red[base + k * (TP + 1u) + tid] = tv[k]; }
      workgroupBarrier();
      // the sums over the block's rows, a thread each (the other buffer takes the next step's terms meanwhile)
      if (tid < RED) {
        var sum = 0.0;
        let o = base + tid * (TP + 1u);
        for (var k = 0u; k < TP; k++) { sum = sum + red[o + k]; }
        if (tid < 2u * NB) {
          let n = n0 + tid % NB;
          if (n < p.N) { work[select(p.oDB, p.oDC, tid >= NB) + (hr * p.nPB + pb) * p.N + n] = sum; }
        } else {
          work[select(p.oDa, p.oDdt, tid > 2u * NB) + hr * p.nPB * p.nNB + pb * p.nNB + nb] = sum;
        }
      }
      turn = 1u - turn;`}
    }${s.W > 0 ? `
    workgroupBarrier(); // the chunk's block sums are in red
    // the sums over the blocks, (step, term) by (step, term) over the threads
    for (var u = tid; u < (t1 - t0) * RED; u += TP) {
      let k = u / RED;
      let v = u % RED;
      var sum = 0.0;
      for (var sl = 0u; sl < ${s.TP / s.W}u; sl++) { sum = sum + red[(k * ${s.TP / s.W}u + sl) * ${rv(s.W)}u + v]; }
      let hr = (b * p.Sn + t0 + k - p.tA) * p.hp + hl;
      if (v < 2u * NB) {
        let n = n0 + v % NB;
        if (n < p.N) { work[select(p.oDB, p.oDC, v >= NB) + (hr * p.nPB + pb) * p.N + n] = sum; }
      } else {
        work[select(p.oDa, p.oDdt, v > 2u * NB) + hr * p.nPB * p.nNB + pb * p.nNB + nb] = sum;
      }
    }` : ""}
  }
  }
  for (var j = 0u; j < NB; j++) { work[carried + j * TP + tid] = dS[j]; }
}
`;

const rowsWgsl = /* wgsl */ `
// bindings: 0 x | 1 dt | 2 consts [3H] | 3 gy [T, H·P] | 4 work | 5 dDt (added into, at ldo, offo) | 6 params
// per (b, t, h) of the segment: da and ddt from the blocks' partials; dt's gradient; the row's terms of dA_log, D and dt_bias
${paramsStruct}
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dt: array<f32>;
@group(0) @binding(2) var<storage, read> consts: array<f32>;
@group(0) @binding(3) var<storage, read> gy: array<f32>;
@group(0) @binding(4) var<storage, read_write> work: array<f32>;
@group(0) @binding(5) var<storage, read_write> dDt: array<f32>;
@group(0) @binding(6) var<uniform> p: P;
${commonWgsl}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 64u + gid.x; // (b, t, h) of this segment and piece
  if (i >= p.B * p.Sn * p.hp) { return; }
  let bt = i / p.hp;
  let r = (bt / p.Sn) * p.L + p.tA + bt % p.Sn;
  let h = p.h0 + i % p.hp;
  let parts = p.nPB * p.nNB;
  var da = 0.0;
  var ddt = 0.0;
  for (var k = 0u; k < parts; k++) { da = da + work[p.oDa + i * parts + k]; ddt = ddt + work[p.oDdt + i * parts + k]; }
  let A = -exp(consts[p.H + h]);
  let v = dtRaw(r, h);
  let sp = ${softplusWgsl("v")};
  let d = clamp(sp, p.lo, p.hi);
  let a = exp(d * A);
  ddt = ddt + da * a * A;
  var graw = 0.0;
  if (sp >= p.lo && sp <= p.hi) { graw = ddt * select(sigmoid(v), 1.0, v > 20.0); }
  let o = r * p.ldo + p.offo + h;
  dDt[o] = dDt[o] + graw;
  var dD = 0.0;
  for (var q = 0u; q < p.P; q++) { dD = fma(gy[r * p.H * p.P + h * p.P + q], x[r * p.ldx + p.offx + h * p.P + q], dD); }
  work[p.oTerms + i * 3u] = da * a * d * A; // dA_log's term (dA · A)
  work[p.oTerms + i * 3u + 1u] = dD;
  work[p.oTerms + i * 3u + 2u] = graw;
}
`;

const dxWgsl = /* wgsl */ `
// bindings: 0 consts [3H] | 1 gy [T, H·P] | 2 work | 3 dx (added into, at ldo, offo) | 4 params
// dx[t, h, p] += D·gy + Σ over column blocks of the partials
${paramsStruct}
@group(0) @binding(0) var<storage, read> consts: array<f32>;
@group(0) @binding(1) var<storage, read> gy: array<f32>;
@group(0) @binding(2) var<storage, read> work: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;
@group(0) @binding(4) var<uniform> p: P;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 64u + gid.x; // (b, t, h, p) of this segment and piece
  if (i >= p.B * p.Sn * p.hp * p.P) { return; }
  let q = i % p.P;
  let hr = i / p.P;
  let bt = hr / p.hp;
  let r = (bt / p.Sn) * p.L + p.tA + bt % p.Sn;
  let h = p.h0 + hr % p.hp;
  var s = consts[2u * p.H + h] * gy[r * p.H * p.P + h * p.P + q];
  for (var k = 0u; k < p.nNB; k++) { s = s + work[p.oDx + (hr * p.nNB + k) * p.P + q]; }
  let o = r * p.ldo + p.offo + h * p.P + q;
  dx[o] = dx[o] + s;
}
`;

const reduceWgsl = /* wgsl */ `
// bindings: 0 work | 1 dst (dB or dC, added into at ldo, offo) | 2 params (oDB: where the per-head sums are)
// dst[t, g, n] += Σ over the piece's heads of group g and the row blocks of the per-head sums
${paramsStruct}
@group(0) @binding(0) var<storage, read> work: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> p: P;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 64u + gid.x;
  let GN = p.G * p.N;
  if (i >= p.B * p.Sn * GN) { return; }
  let bt = i / GN; // (b, t) of the segment
  let r = (bt / p.Sn) * p.L + p.tA + bt % p.Sn;
  let g = (i % GN) / p.N;
  let n = i % p.N;
  let per = p.H / p.G;
  let lo = max(g * per, p.h0);
  let hi = min((g + 1u) * per, p.h0 + p.hp);
  if (lo >= hi) { return; }
  var s = 0.0;
  for (var h = lo; h < hi; h++) {
    for (var pb = 0u; pb < p.nPB; pb++) { s = s + work[p.oDB + ((bt * p.hp + h - p.h0) * p.nPB + pb) * p.N + n]; }
  }
  let o = r * p.ldo + p.offo + g * p.N + n;
  dst[o] = dst[o] + s;
}
`;

const paramsWgsl = /* wgsl */ `
// bindings: 0 work (per-(t, h) terms at oTerms) | 1 dA_log [H] | 2 dD [H] | 3 dDtBias [H] (added into) | 4 params
// a workgroup per head of the piece: its terms summed over the segment's B·Sn rows
${paramsStruct}
@group(0) @binding(0) var<storage, read> work: array<f32>;
@group(0) @binding(1) var<storage, read_write> dA_log: array<f32>;
@group(0) @binding(2) var<storage, read_write> dD: array<f32>;
@group(0) @binding(3) var<storage, read_write> dBias: array<f32>;
@group(0) @binding(4) var<uniform> p: P;
var<workgroup> part: array<f32, 768>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let hl = wg.x;
  var s = vec3<f32>(0.0);
  for (var bt = tid; bt < p.B * p.Sn; bt += 256u) {
    let o = p.oTerms + (bt * p.hp + hl) * 3u;
    s = s + vec3<f32>(work[o], work[o + 1u], work[o + 2u]);
  }
  part[tid] = s.x;
  part[256u + tid] = s.y;
  part[512u + tid] = s.z;
  for (var w = 128u; w > 0u; w = w / 2u) {
    workgroupBarrier();
    if (tid < w) {
      part[tid] = part[tid] + part[tid + w];
      part[256u + tid] = part[256u + tid] + part[256u + tid + w];
      part[512u + tid] = part[512u + tid] + part[512u + tid + w];
    }
  }
  if (tid == 0u) {
    let h = p.h0 + hl;
    dA_log[h] = dA_log[h] + part[0];
    dD[h] = dD[h] + part[256];
    dBias[h] = dBias[h] + part[512];
  }
}
`;

const gateWgsl = /* wgsl */ `
// bindings: 0 y [T, H·P] (the scan's output before the gate in, gy = dout·silu(z) out) | 1 dout [T, H·P] | 2 z
// | 3 dz (added into) | 4 params: the gate's backward, elementwise
struct P { T: u32, HP: u32, ldz: u32, offz: u32, lddz: u32, offdz: u32, groupsX: u32 }
@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<storage, read> dout: array<f32>;
@group(0) @binding(2) var<storage, read> z: array<f32>;
@group(0) @binding(3) var<storage, read_write> dz: array<f32>;
@group(0) @binding(4) var<uniform> p: P;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (i >= p.T * p.HP) { return; }
  let r = i / p.HP;
  let c = i % p.HP;
  let zv = z[r * p.ldz + p.offz + c];
  let sg = 1.0 / (1.0 + exp(-zv));
  let g = dout[i];
  let o = r * p.lddz + p.offdz + c;
  dz[o] = dz[o] + g * y[i] * sg * (1.0 + zv * (1.0 - sg));
  y[i] = g * zv * sg;
}
`;

const shapeLabel = (s: SsdBwdShape) => `TP${s.TP}_K${s.K}_W${s.W}_M${s.M}`;
const fwdKernel = defineKernel<SsdBwdShape>({ name: "ssd_bwd_forward", wgsl: fwdWgsl, example: { TP: 64, K: 8, W: 0, M: 1 }, label: (s) => `ssd_bwd_forward_${shapeLabel(s)}` });
const mainKernel = defineKernel<SsdBwdShape>({ name: "ssd_bwd_main", wgsl: mainWgsl, example: { TP: 64, K: 4, W: 0, M: 4 }, label: (s) => `ssd_bwd_main_${shapeLabel(s)}` });
const rowsKernel = defineKernel({ name: "ssd_bwd_rows", wgsl: () => rowsWgsl, example: null });
const dxKernel = defineKernel({ name: "ssd_bwd_dx", wgsl: () => dxWgsl, example: null });
const reduceKernel = defineKernel({ name: "ssd_bwd_reduce", wgsl: () => reduceWgsl, example: null });
const paramsKernel = defineKernel({ name: "ssd_bwd_params", wgsl: () => paramsWgsl, example: null });
const gateKernel = defineKernel({ name: "ssd_bwd_gate", wgsl: () => gateWgsl, example: null });

/** The gate's backward: y (the scan's output before the gate) becomes gy = dout·silu(z); dz += dout·y·silu'(z). */
export function ssdGateBackward(gpu: Gpu, y: Buf, dout: Buf, z: Buf, ldz: number, offz: number, dz: Buf, lddz: number, offdz: number, T: number, HP: number): void {
  const [gx, gy] = grid(Math.ceil((T * HP) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(gpu.kernel(gateKernel, null), [y, dout, z, dz], new Params().u32(T).u32(HP).u32(ldz).u32(offz).u32(lddz).u32(offdz).u32(gx), [gx, gy]);
}

export interface SsdBackwardDims {
  B: number; L: number; H: number; P: number; G: number; N: number;
  hasState: boolean; lo: number; hi: number;
}

/** bufferBytes: the most bytes the backward gives its scratch buffer (and the device's binding limit); tests lower
 *  it to force pieces of heads. W: the width of the sums over rows (see ssdBackwardShape), −1 for the device's.
 *  K: the longest chunk (a power of two, at most 8; shorter where workgroup memory is short). M: chunks between
 *  checkpoints, 0 to choose (see ssdBackwardSetup). */
export const ssdBackwardTuning = {
  bufferBytes: 2 ** 31 - 4, W: -1, K: MAX_K, M: 0,
  /** "chunked": ./backward-chunked.ts's matrix products; "sequential": this file's kernels */
  kernels: "chunked" as "chunked" | "sequential",
};

/**
 * The kernels' shape on this device: rows a workgroup; the sums' width W (the smallest subgroup the device may run,
 * at most 32, or ssdBackwardTuning.W where set: 0 for workgroup memory); the longest chunk whose states fit
 * workgroup memory beside the sums (and the M chunks' starting states of a run, where checkpoints are kept every M
 * chunks).
 */
export function ssdBackwardShape(P: number, wgBytes: number, subgroupMinSize: number, M = 1): SsdBwdShape {
  const TP = Math.min(MAX_TP, Math.ceil(P / 32) * 32);
  const most = subgroupMinSize >= 2 && (subgroupMinSize & (subgroupMinSize - 1)) === 0 ? Math.min(32, subgroupMinSize) : 0;
  let W = most;
  if (ssdBackwardTuning.W >= 0) {
    W = 0;
    if (ssdBackwardTuning.W >= 2 && most > 0) for (W = 2; W * 2 <= Math.min(ssdBackwardTuning.W, most); W *= 2);
  }
  const redFloats = (K: number) => (W > 0 ? K * (TP / W) * rv(W) : 2 * RED * (TP + 1));
  let K = Math.max(1, Math.min(MAX_K, ssdBackwardTuning.K));
  while (K > 1 && (K * NB * TP + (M > 1 ? M * NB * TP : 0) + redFloats(K) + stageFloats({ TP, K, W, M }, true)) * 4 > wgBytes) K /= 2;
  return { TP, K, W, M };
}

/**
 * Offsets (in floats) in the scratch of a piece of hp heads (all batch rows) whose backward runs in segments of S
 * positions (a multiple of K·M, or L), and its size: the checkpoints (all L positions), dS carried between
 * segments, and the per-position partials of one segment.
 */
export function ssdBackwardLayout(d: SsdBackwardDims, s: SsdBwdShape, hp: number, S: number) {
  const { B, L, P, N } = d;
  const nNB = Math.ceil(N / NB), nPB = Math.ceil(P / s.TP), nK = Math.ceil(L / s.K);
  const groups = B * hp * nPB * nNB, R = B * S * hp; // (b, t, h) of a segment
  const oCk = 0, oDS = oCk + groups * Math.ceil(nK / s.M) * NB * s.TP, oDx = oDS + groups * NB * s.TP, oDB = oDx + R * nNB * P;
  const oDC = oDB + R * nPB * N, oDa = oDC + R * nPB * N, oDdt = oDa + R * nPB * nNB, oTerms = oDdt + R * nPB * nNB;
  return { hp, S, nNB, nPB, nK, groups, oCk, oDS, oDx, oDB, oDC, oDa, oDdt, oTerms, size: oTerms + R * 3 };
}

/**
 * The layout of the most heads a piece can take with its scratch under `maxBytes` (segments of at least ~512
 * positions where they fit), then the longest segments that fit, evened out; or null if not even one head fits.
 */
export function ssdBackwardPlan(d: SsdBackwardDims, s: SsdBwdShape, maxBytes: number): ReturnType<typeof ssdBackwardLayout> | null {
  const roundK = (n: number) => Math.min(d.L, Math.ceil(n / (s.K * s.M)) * s.K * s.M); // whole runs of M chunks
  const fits = (hp: number, S: number) => ssdBackwardLayout(d, s, hp, S).size * 4 <= maxBytes;
  let S0 = roundK(512);
  if (!fits(1, S0)) S0 = roundK(s.K);
  if (!fits(1, S0)) return null;
  let lo = 1, hi = d.H; // the scratch grows with hp: the most that fits, by bisection
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (fits(mid, S0)) lo = mid;
    else hi = mid - 1;
  }
  const hp = Math.ceil(d.H / Math.ceil(d.H / lo)); // as few pieces as that, of even sizes
  let S = S0; // the longest segments that fit, in chunks
  for (let step = d.L; step >= s.K; step = Math.floor(step / 2)) {
    while (S < d.L && fits(hp, roundK(S + step))) S = roundK(S + step);
  }
  const nSeg = Math.ceil(d.L / S);
  return ssdBackwardLayout(d, s, hp, roundK(Math.ceil(d.L / nSeg)));
}

/** chunks between checkpoints to try where keeping one a chunk would split the heads into pieces */
const RUNS = [4, 8];

/**
 * The kernels' shape and the scratch's layout for this device and problem (the scratch under maxBytes, else the
 * binding limit): checkpoints every chunk where all heads fit at once, else every 4 or 8 chunks, whichever takes
 * the fewest pieces (4 on a tie); null where not even one head fits.
 */
export function ssdBackwardSetup(d: SsdBackwardDims, limits: { wgBytes: number; subgroupMinSize: number; maxBytes: number; bindingBytes: number }) {
  const plan = (M: number) => {
    const shape = ssdBackwardShape(d.P, limits.wgBytes, limits.subgroupMinSize, M);
    const l = ssdBackwardPlan(d, shape, Math.min(limits.maxBytes, limits.bindingBytes)) ?? ssdBackwardPlan(d, shape, limits.bindingBytes);
    return l ? { shape, l } : null;
  };
  if (ssdBackwardTuning.M > 0) return plan(ssdBackwardTuning.M);
  let best = plan(1);
  for (const M of RUNS) {
    if (best && best.l.hp === d.H) break;
    const run = plan(M);
    if (run && (!best || run.l.hp > best.l.hp)) best = run;
  }
  return best;
}

/** A column window: buffer, row stride, first column. */
export interface Win { buf: Buf; ld: number; off: number }

export interface SsdBackwardArgs {
  x: Win; dt: Win; Bm: Win; Cm: Win;
  consts: Buf; // [3H]: dtBias | A_log | D
  gy: Buf; // [T, H·P]: dout·silu(z), or dout without a gate
  state0: Buf | null; // [B, H, P, N]
  /** gradients, added into */
  dx: Win; dDt: Win; dB: Win; dC: Win; dA_log: Buf; dD: Buf; dDtBias: Buf;
}

/** Runs the backward for the heads h0 .. h0 + l.hp (the scratch `work` laid out as `l` says), segment by segment
 *  from the last. */
export function ssdBackward(gpu: Gpu, d: SsdBackwardDims, s: SsdBwdShape, l: ReturnType<typeof ssdBackwardLayout>, h0: number, a: SsdBackwardArgs, work: Buf): void {
  const maxDim = gpu.limits.maxComputeWorkgroupsPerDimension;
  const hi = Math.min(d.hi, 3e38);
  const params = (groupsX: number, out: Win | null, tA: number, Sn: number, oDB = l.oDB) => new Params()
    .u32(d.B).u32(d.L).u32(d.H).u32(d.P).u32(d.G).u32(d.N).u32(h0).u32(l.hp)
    .u32(l.nNB).u32(l.nPB).u32(l.nK).u32(groupsX)
    .u32(a.x.ld).u32(a.x.off).u32(a.dt.ld).u32(a.dt.off).u32(a.Bm.ld).u32(a.Bm.off).u32(a.Cm.ld).u32(a.Cm.off)
    .u32(out?.ld ?? 0).u32(out?.off ?? 0).bool(d.hasState).f32(d.lo).f32(hi)
    .u32(l.oCk).u32(l.oDx).u32(oDB).u32(l.oDC).u32(l.oDa).u32(l.oDdt).u32(l.oTerms)
    .u32(l.oDS).u32(tA / s.K).u32(Math.ceil((tA + Sn) / s.K)).u32(tA).u32(Sn);
  const [bx, by] = grid(l.groups, maxDim);
  check(by <= maxDim, `ssdScanBackward: ${l.groups} workgroups are more than a dispatch takes`);
  gpu.dispatch(gpu.kernel(fwdKernel, s), [a.x.buf, a.dt.buf, a.Bm.buf, a.consts, a.state0 ?? gpu.dummy, work], params(bx, null, 0, d.L), [bx, by]);
  const nSeg = Math.ceil(d.L / l.S);
  for (let seg = nSeg - 1; seg >= 0; seg--) {
    const tA = seg * l.S, Sn = Math.min(d.L, tA + l.S) - tA, R = d.B * Sn;
    gpu.dispatch(gpu.kernel(mainKernel, s), [a.x.buf, a.dt.buf, a.Bm.buf, a.Cm.buf, a.consts, a.gy, work], params(bx, null, tA, Sn), [bx, by]);
    const [rx, ry] = grid(Math.ceil((R * l.hp) / 64), maxDim);
    gpu.dispatch(gpu.kernel(rowsKernel, null), [a.x.buf, a.dt.buf, a.consts, a.gy, work, a.dDt.buf], params(rx, a.dDt, tA, Sn), [rx, ry]);
    const [xx, xy] = grid(Math.ceil((R * l.hp * d.P) / 64), maxDim);
    gpu.dispatch(gpu.kernel(dxKernel, null), [a.consts, a.gy, work, a.dx.buf], params(xx, a.dx, tA, Sn), [xx, xy]);
    const [gx, gy] = grid(Math.ceil((R * d.G * d.N) / 64), maxDim);
    // the same kernel for dB and dC: oDB says where its per-head sums are
    for (const [dst, src] of [[a.dB, l.oDB], [a.dC, l.oDC]] as const) {
      gpu.dispatch(gpu.kernel(reduceKernel, null), [work, dst.buf], params(gx, dst, tA, Sn, src), [gx, gy]);
    }
    gpu.dispatch(gpu.kernel(paramsKernel, null), [work, a.dA_log, a.dD, a.dDtBias], params(0, null, tA, Sn), [l.hp]);
  }
}
