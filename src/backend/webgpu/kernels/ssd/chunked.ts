/**
 * Mamba-2's SSM in chunks of Q positions (state space duality), as the CPU's ssdChunkedF32 (../../../cpu/ssd.ts),
 * per head h with the B, C of its group g = h / (H / G), dt_i = clamp(softplus(dt_i + dtBias)) and
 * cs_i = Σ_{k ≤ i} dt_k·A inside the chunk. Four kernels; the products are register-tiled as ../matmul.ts's: a
 * workgroup of Q / 8 × 8·SL threads computes a Q × PB·SL tile, each thread 8 × 8 outputs (PB 64) kept in
 * registers; K advances BK at a time through workgroup memory, read as vec4s, the next tile's global loads issued
 * before the current tile's arithmetic, 4 floats at a time where the windows allow. The columns are SL = 2 slots of
 * PB = 64: (head, block of 64 values of p) pairs of one group, so the operand the heads of a group share (B, or C) is
 * staged once for both. These are the defaults of chunkTuning, which also runs Q 64, SL 1, BK 16 and PB 32 (8 × 4
 * outputs a thread); on an H200 (GPU clock) the defaults took 0.145 ms at B1 L2048 H24, 0.822 at B8 L2048 H24,
 * 2.869 at B1 L65536 H24 and 2.325 at B8 L2048 H80 (P 64, N 128; about 25 TFLOP/s at the large shapes).
 *  1. ssd_chunk_cb, a workgroup per (group, chunk, batch row): C_i·B_j (read for j ≤ i), once per group rather than
 *     per head ([Q × N] · [N × Q]);
 *  2. ssd_chunk_state, a workgroup per (pair of slots, run of R chunks, batch row) and block of Q state entries;
 *     for each chunk of the run in order: dt and cs of the chunk for each slot's head (a log-step scan in workgroup
 *     memory, written for the other kernels with delta, the decay from the run's start to the chunk's), then with
 *     the state from zero at the run's start in the registers: written out as the state entering the chunk (past
 *     the run's first), decayed by exp(cs_last), and the chunk's own state added
 *       Sᵀ[n, p] += Σ_j B_j[n] · exp(cs_last − cs_j)·dt_j·x_j[p]      ([N × Q] · [Q × P]);
 *     at the run's end, the run's own state;
 *  3. ssd_state_pass, a thread per (b, h, n, p): over the runs in order, H_{r+1} = decay_r·H_r + T_r, the run's own
 *     state T_r replaced in place by H_r, the state entering the run (H_0: the given state, or zeros); the final
 *     state is written back. Runs of R chunks leave it R times fewer states to move; R (1 to 8) is as long as
 *     leaves ssd_chunk_state enough workgroups (runLength);
 *  4. ssd_chunk_scan, a workgroup per (pair of slots, chunk, batch row): the state entering the chunk
 *     h_c = (entering from the run's start) + exp(delta)·H_r, staged as the products need it, and the output
 *       Y = diag(exp(cs)) · (C · h_c)  +  ((C·Bᵀ) ∘ exp(cs_i − cs_j)·dt_j ∘ [j ≤ i]) · X  +  D·X
 *     (·silu(z) when gated) as two products into the same registers: [Q × N]·[N × P], the rows scaled by exp(cs_i),
 *     then [Q × Q]·[Q × P] (each slot its own decays), where a thread skips the tiles of j past its rows (causal:
 *     a warp's rows are 16 consecutive i).
 * Without a state to write back, the last chunk's own state is not computed (nothing reads it), and the first
 * chunk's output has no part from the state.
 * The chunk length Q is the kernels' own (chunkTuning.Q): the result is the same for any chunk length (only the
 * rounding differs), so the model's chunk_size (256 in real checkpoints) does not set it. Q = 128 (the kernels
 * also run with 64) balances the work within a chunk (it grows with Q) against the chunk states' traffic (it
 * shrinks with Q).
 * Scratch: states B·(nC + nRuns)·H·N·P floats, dt and cs B·nC·H·(2Q + 1), C·Bᵀ B·nC·G·Q·Q.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params, grid } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type SsdScanKernelArgs, flagFieldsWgsl, softplusWgsl, windowFieldsWgsl, windowParams } from "./common.ts";


export interface ChunkShape {
  N: number;
  P: number;
  /** the windows, P and N multiples of 4: global loads and stores of 4 floats at once */
  v4: boolean;
  /** the chunk length, 64 or 128 */
  Q: number;
  /** slots (head, block of PB values of p) a workgroup, 1 or 2: workgroups of Q·SL threads (8·SL × Q / 8) */
  SL: number;
  /** positions or state entries of a K tile, 8 or 16 */
  BK: number;
  /** values of p a slot covers, 64 or 32: a thread's 8 rows × PB / 8 columns of outputs (8 × 8 or 8 × 4) */
  PB: number;
}

/** a thread's groups of 4 columns 32 apart (2, or 1 when slots are 32 wide) */
const groups = (s: ChunkShape) => s.PB / 32;

/** floats of dtcs a (chunk, head): dt [Q], cs [Q], the decay from the run's start */
const dtcsStride = (Q: number) => 2 * Q + 1;

/** A storage binding of floats, as vec4s when v4 (4-aligned loads `name[i / 4u]`), with a scalar reader name1(i). */
function floats(binding: number, name: string, v4: boolean, rw = false): string {
  return `@group(0) @binding(${binding}) var<storage, ${rw ? "read_write" : "read"}> ${name}: array<${v4 ? "vec4<f32>" : "f32"}>;
fn ${name}1(i: u32) -> f32 { return ${v4 ? `${name}[i / 4u][i % 4u]` : `${name}[i]`}; }`;
}

// the parameters of the chunk kernels, the sizes, the staged tiles of the products, and dt and cs of the two slots
const header = (s: ChunkShape) => /* wgsl */ `
struct P {
  B: u32, L: u32, H: u32, G: u32, nC: u32,
  R: u32, runOff: u32, // chunks a run; the first float of the runs' states in the states buffer
  ${windowFieldsWgsl}
  ${flagFieldsWgsl}
}
const N = ${s.N}u;
const HP = ${s.P}u; // head dim P
const NPB = ${Math.ceil(s.P / s.PB)}u; // blocks of PB values of p a head
const Q = ${s.Q}u;
const DS = ${dtcsStride(s.Q)}u; // floats of dtcs a (chunk, head): dt [Q], cs [Q], the decay from the run's start
const NT = ${s.Q * s.SL}u;
const SL = ${s.SL}u;
const BK = ${s.BK}u;
const PB = ${s.PB}u;
var<workgroup> As: array<vec4<f32>, ${s.BK * ((s.SL * s.Q) / 4 + 1)}>; // As[k][m], m < Q or (per slot) Q·SL, rows padded
var<workgroup> Bs: array<vec4<f32>, ${s.BK * ((s.SL * s.PB) / 4 + 1)}>; // Bs[k][n], n < PB·SL
var<workgroup> dts: array<f32, ${s.SL * s.Q}>; // [slot, i]
var<workgroup> cs: array<f32, ${s.SL * s.Q}>;

// The workgroup's slots (head, block of p) of group g: slots s0 = SL·pair (and s0 + 1 when SL is 2) of the group's
// HG·NPB; a second may be past the last (has1 false).
struct Slots { h0: u32, h1: u32, pb0: u32, pb1: u32, has1: bool }
fn slots(g: u32, pair: u32) -> Slots {
  let HG = p.H / p.G;
  let s0 = SL * pair;
  let s1 = s0 + 1u;
  let has1 = SL == 2u && s1 < HG * NPB;
  return Slots(g * HG + s0 / NPB, select(g * HG + s0 / NPB, g * HG + s1 / NPB, has1), s0 % NPB, s1 % NPB, has1);
}
// workgroups of slots a group
fn pairs() -> u32 { return ((p.H / p.G) * NPB + SL - 1u) / SL; }
`;

/** One operand of a product, staged into `tile` ([k][m]) K tile by K tile. kMajor: consecutive m are consecutive in
 *  memory (threads take consecutive m of one k), else consecutive k. `scalar` sets v (f32, preset 0) to element
 *  (k, m) (k absolute, m in the tile); `vec4` sets v (vec4, preset 0) to elements m .. m + 3 of k (kMajor) or
 *  k .. k + 3 of m, the one used when the shape's v4. */
interface Operand {
  tile: "As" | "Bs";
  reg: "ra" | "rb";
  rows: number; // m of the tile: Q, 64·SL (B), or Q·SL for each slot's A
  kMajor: boolean;
  scalar: string;
  vec4: string;
}

/** the operand's values (vec4s when v4) a K tile */
const tileValues = (o: Operand, s: ChunkShape) => (o.rows * s.BK) / (s.v4 ? 4 : 1);
/** per thread, per K tile: the operand's values (vec4s when v4), at least one (some threads idle when fewer) */
const perThread = (o: Operand, s: ChunkShape) => Math.ceil(tileValues(o, s) / (s.Q * s.SL));
/** WGSL: the condition that element e exists (only where the tile has fewer values than the threads take) */
const exists = (o: Operand, s: ChunkShape) => tileValues(o, s) % (s.Q * s.SL) === 0 ? "true" : `e < ${tileValues(o, s)}u`;

/** WGSL: element e's (k, m) for the operand's layout (4 values an element when v4) */
function coords(o: Operand, s: ChunkShape): [string, string] {
  if (o.kMajor) return s.v4 ? [`e / ${o.rows / 4}u`, `(e % ${o.rows / 4}u) * 4u`] : [`e / ${o.rows}u`, `e % ${o.rows}u`];
  return s.v4 ? [`(e % ${s.BK / 4}u) * 4u`, `e / ${s.BK / 4}u`] : [`e % BK`, `e / BK`];
}

/** WGSL: the operand's values of the K tile starting at kt into its registers */
function loadOperand(o: Operand, kt: string, s: ChunkShape): string {
  const v4 = s.v4, [k, m] = coords(o, s);
  return /* wgsl */ `
    for (var l = 0u; l < ${perThread(o, s)}u; l++) {
      let e = tid + NT * l;
      let k = ${kt} + ${k};
      let m = ${m};
      var v = ${v4 ? "vec4<f32>(0.0)" : "0.0"};
      if (${exists(o, s)}) {
      ${v4 ? o.vec4 : o.scalar}
      }
      ${o.reg}[l] = v;
    }`;
}

/** WGSL: the registers into the tile (4 values of one m at once, or transposed into 4 rows k) */
function storeOperand(o: Operand, s: ChunkShape): string {
  const v4 = s.v4, [k, m] = coords(o, s);
  const stride = `${o.rows / 4 + 1}u`;
  const store = !v4 ? `${o.tile}[k * ${stride} + m / 4u][m % 4u] = ${o.reg}[l];`
    : o.kMajor ? `${o.tile}[k * ${stride} + m / 4u] = ${o.reg}[l];`
    : `for (var c = 0u; c < 4u; c++) { ${o.tile}[(k + c) * ${stride} + m / 4u][m % 4u] = ${o.reg}[l][c]; }`;
  return /* wgsl */ `
    for (var l = 0u; l < ${perThread(o, s)}u; l++) {
      let e = tid + NT * l;
      let k = ${k};
      let m = ${m};
      if (${exists(o, s)}) { ${store} }
    }`;
}

/** WGSL: acc += A[0 .. kLen) · B over K tiles of BK. The thread's outputs: rows ty·8 + r of A from vec4 aOff on
 *  (its slot's rows when A holds two slots), columns sl·64 + hc·32 + lx·4 + c of B (acc[2r + hc]); tiles where
 *  `skip` holds for this thread (k0 names the tile's first k) are staged but not multiplied. */
function product(A: Operand, B: Operand, kLen: string, s: ChunkShape, skip = "false", aOff = "0u"): string {
  const type = s.v4 ? "vec4<f32>" : "f32";
  const SA = `${A.rows / 4 + 1}u`, SB = `${B.rows / 4 + 1}u`;
  return /* wgsl */ `
  {
    var ra: array<${type}, ${perThread(A, s)}>;
    var rb: array<${type}, ${perThread(B, s)}>;
    let tiles = (${kLen} + BK - 1u) / BK;
    let ao = ${aOff} + ty * 2u;
    let bo = sl * ${s.PB / 4}u + lx;
    ${loadOperand(A, "0u", s)}
    ${loadOperand(B, "0u", s)}
    for (var t = 0u; t < tiles; t++) {
      let k0 = t * BK;
      workgroupBarrier(); // the previous tile's products are done
      ${storeOperand(A, s)}
      ${storeOperand(B, s)}
      workgroupBarrier();
      if (t + 1u < tiles) {
        ${loadOperand(A, "k0 + BK", s)}
        ${loadOperand(B, "k0 + BK", s)}
      }
      if (!(${skip})) {
        for (var kk = 0u; kk < BK; kk++) {
          let a0 = As[kk * ${SA} + ao];
          let a1 = As[kk * ${SA} + ao + 1u];
          ${groups(s) === 2 ? `let b0 = Bs[kk * ${SB} + bo];
          let b1 = Bs[kk * ${SB} + bo + 8u];
          for (var c = 0u; c < 4u; c++) {
            acc[2u * c] = fma(vec4<f32>(a0[c]), b0, acc[2u * c]);
            acc[2u * c + 1u] = fma(vec4<f32>(a0[c]), b1, acc[2u * c + 1u]);
            acc[8u + 2u * c] = fma(vec4<f32>(a1[c]), b0, acc[8u + 2u * c]);
            acc[9u + 2u * c] = fma(vec4<f32>(a1[c]), b1, acc[9u + 2u * c]);
          }` : `let b0 = Bs[kk * ${SB} + bo];
          for (var c = 0u; c < 4u; c++) {
            acc[c] = fma(vec4<f32>(a0[c]), b0, acc[c]);
            acc[4u + c] = fma(vec4<f32>(a1[c]), b0, acc[4u + c]);
          }`}
        }
      }
    }
  }`;
}

// the start of a product kernel: thread (ty, tx) of 16 × 8·SL, its slot sl (columns 64·sl ..) and column lx in it,
// its accumulators
const threadStart = (s: ChunkShape) => /* wgsl */ `
  let tx = tid % (8u * SL);
  let ty = tid / (8u * SL);
  let sl = tx / 8u;
  let lx = tx % 8u;
  var acc: array<vec4<f32>, ${8 * groups(s)}>; // [row r, group hc]: acc[${groups(s)}·r + hc]
  for (var r = 0u; r < ${8 * groups(s)}u; r++) { acc[r] = vec4<f32>(0.0); }`;

/** WGSL: for each of the thread's outputs (row `i` = ty·8 + r, column `col` = hc·32 + lx·4 of its slot's 64, value(s)
 *  `a` = a vec4 of 4 columns), `body4` when v4, else `body1` per column cj = col + j (a = acc[..][j]). */
function eachOutput(s: ChunkShape, body4: string, body1: string): string {
  const G = groups(s);
  return /* wgsl */ `
  for (var r = 0u; r < 8u; r++) {
    let i = ty * 8u + r;
    for (var hc = 0u; hc < ${G}u; hc++) {
      let col = hc * 32u + lx * 4u;
      ${s.v4 ? `let a = acc[${G}u * r + hc];
      ${body4}` : `for (var j = 0u; j < 4u; j++) {
        let a = acc[${G}u * r + hc][j];
        let cj = col + j;
        ${body1}
      }`}
    }
  }`;
}

/** WGSL: for element m of a B tile over the two slots: its slot's head `hs`, the value of p `ps`, and whether the
 *  slot exists (`okm`) */
const slotOfM = /* wgsl */ `
      let hs = select(S.h0, S.h1, m >= PB);
      let ps = select(S.pb0, S.pb1, m >= PB) * PB + m % PB;
      let okm = m < PB || S.has1;`;

// the thread's own slot: its head, first value of p, and whether it exists
const mySlot = /* wgsl */ `
  let myH = select(S.h0, S.h1, sl == 1u);
  let myP0 = select(S.pb0, S.pb1, sl == 1u) * PB;
  let mine = sl == 0u || S.has1;`;

/** workgroups of ssd_chunk_cb a (group, chunk): blocks of 64·SL values of i */
const cbBlocks = (s: { Q: number; SL: number; PB: number }) => Math.max(1, s.Q / (s.SL * s.PB));

const cbWgsl = (s: ChunkShape) => /* wgsl */ `
// bindings: 0 Bm | 1 Cm | 2 cb [B, nC, G, Q (j), Q (i)] | 3 params
// grid: (G · ${cbBlocks(s)} blocks of i, nC, B)
${header(s)}
${floats(0, "Bm", s.v4)}
${floats(1, "Cm", s.v4)}
@group(0) @binding(2) var<storage, read_write> cb: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> p: P;

@compute @workgroup_size(${s.Q * s.SL})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let c = wg.y;
  let b = wg.z;
  let q = min(Q, p.L - c * Q);
  let row0 = b * p.L + c * Q;
${threadStart(s)}
  // C·Bᵀ of group g: cb[j, i] = Σ_n B_j[n] · C_i[n]; a thread whose rows j are all past its columns i skips
  // (its outputs are never read)
  let g = wg.x / ${cbBlocks(s)}u;
  let i0 = (wg.x % ${cbBlocks(s)}u) * ${s.SL * s.PB}u;
  ${product(
    { tile: "As", reg: "ra", rows: s.Q, kMajor: false,
      scalar: "if (m < q && k < N) { v = Bm1((row0 + m) * p.ldb + p.offb + g * N + k); }",
      vec4: "if (m < q && k < N) { v = Bm[((row0 + m) * p.ldb + p.offb + g * N + k) / 4u]; }" },
    { tile: "Bs", reg: "rb", rows: s.SL * s.PB, kMajor: false,
      scalar: "if (i0 + m < q && k < N) { v = Cm1((row0 + i0 + m) * p.ldc + p.offc + g * N + k); }",
      vec4: "if (i0 + m < q && k < N) { v = Cm[((row0 + i0 + m) * p.ldc + p.offc + g * N + k) / 4u]; }" },
    "N", s, `ty * 8u > i0 + sl * PB + lx * 4u + ${(groups(s) - 1) * 32 + 3}u`)}
  let base = ((b * p.nC + c) * p.G + g) * Q * Q;
  for (var r = 0u; r < 8u; r++) {
    let j = ty * 8u + r;
    for (var hc = 0u; hc < ${groups(s)}u; hc++) {
      let i = i0 + sl * PB + hc * 32u + lx * 4u;
      if (i < Q) { cb[(base + j * Q + i) / 4u] = acc[${groups(s)}u * r + hc]; } // (a tile may be wider than the chunk)
    }
  }
}
`;

/** WGSL: the thread's outputs (acc) into a [.., N, P] buffer `buf` at the state of head myH whose first float is
 *  `base`, rows n0 + i */
const storeState = (s: ChunkShape, buf: string) => eachOutput(s,
  `if (n0 + i < N && myP0 + col < HP) { ${buf}[(base + (n0 + i) * HP + myP0 + col) / 4u] = a; }`,
  `if (n0 + i < N && myP0 + cj < HP) { ${buf}[base + (n0 + i) * HP + myP0 + cj] = a; }`);

const stateWgsl = (s: ChunkShape) => {
  const nNB = Math.ceil(s.N / s.Q);
  return /* wgsl */ `
// bindings: 0 x | 1 dt | 2 Bm | 3 dtBias [H] | 4 A_log [H] | 5 states: [B, nC, H, N, P], then from runOff the runs'
//           [B, nRuns, H, N, P] | 6 dtcs [B, nC, H, DS] | 7 params
// grid: (G · pairs of slots · ${nNB} blocks of n, runs of R chunks, B)
${header(s)}
${floats(0, "x", s.v4)}
@group(0) @binding(1) var<storage, read> dt: array<f32>;
${floats(2, "Bm", s.v4)}
@group(0) @binding(3) var<storage, read> dtBias: array<f32>;
@group(0) @binding(4) var<storage, read> A_log: array<f32>;
${floats(5, "states", s.v4, true)}
@group(0) @binding(6) var<storage, read_write> dtcs: array<f32>;
@group(0) @binding(7) var<uniform> p: P;
var<workgroup> w: array<f32, ${s.SL * s.Q}>; // [slot, j]: exp(cs_last − cs_j)·dt_j

@compute @workgroup_size(${s.Q * s.SL})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let run = wg.y;
  let b = wg.z;
${threadStart(s)}
  let g = wg.x / (pairs() * ${nNB}u);
  let pair = (wg.x / ${nNB}u) % pairs();
  let nb = wg.x % ${nNB}u;
  let n0 = nb * Q;
  let S = slots(g, pair);
${mySlot}
  // for dt and cs, thread tid takes position i of slot si
  let si = tid / Q;
  let i = tid % Q;
  let hh = select(S.h0, S.h1, si == 1u);
  let ok = si == 0u || S.has1;
  let A = -exp(A_log[hh]);
  let bias = dtBias[hh];
  let writer = ok && nb == 0u && select(S.pb0, S.pb1, si == 1u) == 0u;
  var delta = 0.0; // the decay from the run's start to the chunk's: Σ cs_last of the run's chunks before it
  let c0 = run * p.R;
  let c1 = min(p.nC, c0 + p.R);
  for (var c = c0; c < c1; c++) {
    let t0 = c * Q;
    let q = min(Q, p.L - t0);
    let row0 = b * p.L + t0;
    // dt (zero past the chunk's end or for a missing slot) and its cumulative dt·A: a log-step inclusive scan;
    // past the end cs stays cs_last
    var d = 0.0;
    if (ok && i < q) {
      let v = dt[(row0 + i) * p.lddt + p.offdt + hh] + bias;
      d = clamp(${softplusWgsl("v")}, p.lo, p.hi);
    }
    workgroupBarrier(); // the previous chunk's reads of dts, cs and w are done
    dts[tid] = d;
    cs[tid] = d * A;
    for (var s = 1u; s < Q; s = s * 2u) {
      workgroupBarrier();
      var add = 0.0;
      if (i >= s) { add = cs[tid - s]; }
      workgroupBarrier();
      cs[tid] = cs[tid] + add;
    }
    workgroupBarrier();
    let last = cs[si * Q + Q - 1u];
    w[tid] = exp(last - cs[tid]) * dts[tid];
    if (writer) {
      let dbase = ((b * p.nC + c) * p.H + hh) * DS;
      dtcs[dbase + i] = dts[tid];
      dtcs[dbase + Q + i] = cs[tid];
      if (i == 0u) { dtcs[dbase + 2u * Q] = delta; }
    }
    delta += last;
    workgroupBarrier();
    // acc holds the state entering chunk c, from zero at the run's start: written for ssd_chunk_scan (past the
    // run's first chunk), then decayed over the chunk, and the chunk's own state added:
    //   Sᵀ[n, p] += Σ_j B_j[n] · w_j·x_j[p], both slots at once (the same B)
    if (c > c0 && mine) {
      let base = ((b * p.nC + c) * p.H + myH) * N * HP;
      ${storeState(s, "states")}
    }
    let decay = exp(cs[sl * Q + Q - 1u]);
    for (var r = 0u; r < ${8 * groups(s)}u; r++) { acc[r] = acc[r] * decay; }
    // (the last chunk's own state only makes the final state: without one to write, it is never read)
    if (p.hasState != 0u || c + 1u < p.nC) {
    ${product(
      { tile: "As", reg: "ra", rows: s.Q, kMajor: true,
        scalar: "if (k < q && n0 + m < N) { v = Bm1((row0 + k) * p.ldb + p.offb + g * N + n0 + m); }",
        vec4: "if (k < q && n0 + m < N) { v = Bm[((row0 + k) * p.ldb + p.offb + g * N + n0 + m) / 4u]; }" },
      { tile: "Bs", reg: "rb", rows: s.SL * s.PB, kMajor: true,
        scalar: `${slotOfM}
        if (k < q && ps < HP && okm) { v = w[(m / PB) * Q + k] * x1((row0 + k) * p.ldx + p.offx + hs * HP + ps); }`,
        vec4: `${slotOfM}
        if (k < q && ps < HP && okm) { v = w[(m / PB) * Q + k] * x[((row0 + k) * p.ldx + p.offx + hs * HP + ps) / 4u]; }` },
      "q", s)}
    }
  }
  // the run's own state (from zero at its start), for ssd_state_pass
  if (mine) {
    let base = p.runOff + ((b * ((p.nC + p.R - 1u) / p.R) + run) * p.H + myH) * N * HP;
    ${storeState(s, "states")}
  }
}
`;
};

const passWgsl = (s: ChunkShape) => /* wgsl */ `
// bindings: 0 dtcs [B, nC, H, DS] | 1 states, from runOff the runs' [B, nRuns, H, N, P] (their own states in,
//           their entering states out) | 2 state [B, H, P, N] | 3 params
struct P { B: u32, H: u32, nC: u32, R: u32, runOff: u32, hasState: u32, groupsX: u32 }
const N = ${s.N}u;
const HP = ${s.P}u;
const Q = ${s.Q}u;
const DS = ${dtcsStride(s.Q)}u;
@group(0) @binding(0) var<storage, read> dtcs: array<f32>;
@group(0) @binding(1) var<storage, read_write> runs: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<f32>;
@group(0) @binding(3) var<uniform> p: P;

// the decay over run r: to its last chunk's start (delta), and over that chunk (cs_last)
fn runDecay(b: u32, h: u32, r: u32) -> f32 {
  let cl = min(p.nC, (r + 1u) * p.R) - 1u;
  let d = ((b * p.nC + cl) * p.H + h) * DS;
  return exp(dtcs[d + 2u * Q] + dtcs[d + 2u * Q - 1u]);
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  let NP = N * HP;
  if (i >= p.B * p.H * NP) { return; }
  let k = i % NP;
  let h = (i / NP) % p.H;
  let b = i / (NP * p.H);
  let user = ((b * p.H + h) * HP + k % HP) * N + k / HP; // [B, H, P, N]
  var s = 0.0;
  if (p.hasState != 0u) { s = state[user]; }
  let nRuns = (p.nC + p.R - 1u) / p.R;
  let rstride = p.H * NP;
  let o0 = p.runOff + (b * nRuns * p.H + h) * NP + k;
  var r = 0u;
  // four runs' loads issued before their dependent updates
  for (; r + 4u <= nRuns; r += 4u) {
    let o = o0 + r * rstride;
    let s0 = runs[o];
    let s1 = runs[o + rstride];
    let s2 = runs[o + 2u * rstride];
    let s3 = runs[o + 3u * rstride];
    let a0 = runDecay(b, h, r);
    let a1 = runDecay(b, h, r + 1u);
    let a2 = runDecay(b, h, r + 2u);
    let a3 = runDecay(b, h, r + 3u);
    runs[o] = s;
    s = fma(a0, s, s0);
    runs[o + rstride] = s;
    s = fma(a1, s, s1);
    runs[o + 2u * rstride] = s;
    s = fma(a2, s, s2);
    runs[o + 3u * rstride] = s;
    s = fma(a3, s, s3);
  }
  for (; r < nRuns; r++) {
    let o = o0 + r * rstride;
    let own = runs[o];
    runs[o] = s;
    s = fma(runDecay(b, h, r), s, own);
  }
  if (p.hasState != 0u) { state[user] = s; }
}
`;

const scanWgsl = (s: ChunkShape) => /* wgsl */ `
// bindings: 0 x | 1 Cm | 2 z | 3 D [H] | 4 states: [B, nC, H, N, P] entering each chunk from its run's start, then
//           from runOff [B, nRuns, H, N, P] entering each run | 5 dtcs [B, nC, H, DS] | 6 cb [B, nC, G, Q, Q]
//           7 y [B·L, H·P] | 8 params
// grid: (G · pairs of slots, nC, B)
${header(s)}
${floats(0, "x", s.v4)}
${floats(1, "Cm", s.v4)}
${floats(2, "z", s.v4)}
@group(0) @binding(3) var<storage, read> D: array<f32>;
${floats(4, "states", s.v4)}
@group(0) @binding(5) var<storage, read> dtcs: array<f32>;
${floats(6, "cb", true)}
${floats(7, "y", s.v4, true)}
@group(0) @binding(8) var<uniform> p: P;

@compute @workgroup_size(${s.Q * s.SL})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let g = wg.x / pairs();
  let S = slots(g, wg.x % pairs());
  let c = wg.y;
  let b = wg.z;
  let q = min(Q, p.L - c * Q);
  let row0 = b * p.L + c * Q;
  {
    // dt and cs of both slots (zero for a missing one)
    let si = tid / Q;
    var d = 0.0;
    var e = 0.0;
    if (si == 0u || S.has1) {
      let dbase = ((b * p.nC + c) * p.H + select(S.h0, S.h1, si == 1u)) * DS;
      d = dtcs[dbase + tid % Q];
      e = dtcs[dbase + Q + tid % Q];
    }
    dts[tid] = d;
    cs[tid] = e;
  }
  workgroupBarrier();
${threadStart(s)}
${mySlot}
  // from the entering state: acc[i, p] = Σ_n C_i[n] · h_c[n, p] (both slots at once: the same C), then times
  // exp(cs_i). h_c = the state entering the chunk from its run's start (none for the run's first chunk) + the
  // state entering the run decayed to the chunk's start (by exp(delta), delta per slot)
  let sstride = N * HP;
  let sb0 = ((b * p.nC + c) * p.H) * sstride;
  let run = c / p.R;
  let first = c == run * p.R;
  let rb0 = p.runOff + ((b * ((p.nC + p.R - 1u) / p.R) + run) * p.H) * sstride;
  let e0 = exp(dtcs[((b * p.nC + c) * p.H + S.h0) * DS + 2u * Q]);
  let e1 = exp(dtcs[((b * p.nC + c) * p.H + S.h1) * DS + 2u * Q]);
  // (zero entering the first chunk without a given state)
  if (c > 0u || p.hasState != 0u) {
  ${product(
    { tile: "As", reg: "ra", rows: s.Q, kMajor: false,
      scalar: "if (m < q && k < N) { v = Cm1((row0 + m) * p.ldc + p.offc + g * N + k); }",
      vec4: "if (m < q && k < N) { v = Cm[((row0 + m) * p.ldc + p.offc + g * N + k) / 4u]; }" },
    { tile: "Bs", reg: "rb", rows: s.SL * s.PB, kMajor: true,
      scalar: `${slotOfM}
      if (k < N && ps < HP && okm) {
        v = select(e0, e1, m >= PB) * states1(rb0 + hs * sstride + k * HP + ps);
        if (!first) { v += states1(sb0 + hs * sstride + k * HP + ps); }
      }`,
      vec4: `${slotOfM}
      if (k < N && ps < HP && okm) {
        v = select(e0, e1, m >= PB) * states[(rb0 + hs * sstride + k * HP + ps) / 4u];
        if (!first) { v += states[(sb0 + hs * sstride + k * HP + ps) / 4u]; }
      }` },
    "N", s)}
  for (var r = 0u; r < 8u; r++) {
    let into = exp(cs[sl * Q + ty * 8u + r]);
    for (var hc = 0u; hc < ${groups(s)}u; hc++) { acc[${groups(s)}u * r + hc] = acc[${groups(s)}u * r + hc] * into; }
  }
  }
  // within the chunk: acc[i, p] += Σ_{j ≤ i} (C_i·B_j)·exp(cs_i − cs_j)·dt_j · x_j[p]. A holds both slots' decays
  // (rows 128·slot + i); a thread skips the tiles of j past its rows
  let cbase = ((b * p.nC + c) * p.G + g) * Q * Q;
  ${product(
    { tile: "As", reg: "ra", rows: s.SL * s.Q, kMajor: true,
      scalar: `let mi = m % Q;
      let so = (m / Q) * Q;
      if (k <= mi && mi < q) { v = cb1(cbase + k * Q + mi) * exp(cs[so + mi] - cs[so + k]) * dts[so + k]; }`,
      vec4: `let mi = m % Q;
      let so = (m / Q) * Q;
      if (k <= mi + 3u && mi < q) {
        let raw = cb[(cbase + k * Q + mi) / 4u];
        let ck = cs[so + k];
        let dk = dts[so + k];
        for (var c = 0u; c < 4u; c++) {
          if (k <= mi + c && mi + c < q) { v[c] = raw[c] * exp(cs[so + mi + c] - ck) * dk; }
        }
      }` },
    { tile: "Bs", reg: "rb", rows: s.SL * s.PB, kMajor: true,
      scalar: `${slotOfM}
      if (k < q && ps < HP && okm) { v = x1((row0 + k) * p.ldx + p.offx + hs * HP + ps); }`,
      vec4: `${slotOfM}
      if (k < q && ps < HP && okm) { v = x[((row0 + k) * p.ldx + p.offx + hs * HP + ps) / 4u]; }` },
    "q", s, "k0 > ty * 8u + 7u", `sl * ${s.Q / 4}u`)}
  // the skip connection and the gate
  let Dh = D[myH];
  let E = p.H * HP;
  if (mine) {
    ${eachOutput(s, `if (i < q && myP0 + col < HP) {
        let row = row0 + i;
        var out = a + Dh * x[(row * p.ldx + p.offx + myH * HP + myP0 + col) / 4u];
        if (p.hasZ != 0u) {
          let zv = z[(row * p.ldz + p.offz + myH * HP + myP0 + col) / 4u];
          out = out * zv / (1.0 + exp(-zv));
        }
        y[(row * E + myH * HP + myP0 + col) / 4u] = out;
      }`, `if (i < q && myP0 + cj < HP) {
          let row = row0 + i;
          var out = a + Dh * x1(row * p.ldx + p.offx + myH * HP + myP0 + cj);
          if (p.hasZ != 0u) {
            let zv = z1(row * p.ldz + p.offz + myH * HP + myP0 + cj);
            out = out * zv / (1.0 + exp(-zv));
          }
          y[row * E + myH * HP + myP0 + cj] = out;
        }`)}
  }
}
`;

const example: ChunkShape = { N: 16, P: 8, v4: true, Q: 128, SL: 2, BK: 8, PB: 64 };
const cbKernel = defineKernel({ name: "ssd_chunk_cb", wgsl: cbWgsl, example });
const stateKernel = defineKernel({ name: "ssd_chunk_state", wgsl: stateWgsl, example });
const passKernel = defineKernel({ name: "ssd_state_pass", wgsl: passWgsl, example });
const scanKernel = defineKernel({ name: "ssd_chunk_scan", wgsl: scanWgsl, example });

/** Workgroup memory of the chunk kernels (the most of them: ssd_chunk_state's) in bytes. */
const workgroupBytes = (s: ChunkShape) => 16 * s.BK * ((s.SL * s.Q) / 4 + 1 + (s.SL * s.PB) / 4 + 1) + 3 * 4 * s.SL * s.Q;

/** Whether every window, P and N allow the kernels' loads and stores of 4 floats at once. */
function vec4Fits(a: Omit<SsdScanKernelArgs, "consts">): boolean {
  const m4 = (...v: number[]) => v.every((u) => u % 4 === 0);
  return m4(a.P, a.N, a.ldx, a.offx, a.ldb, a.offb, a.ldc, a.offc) && (!a.z || m4(a.ldz, a.offz));
}

/** The kernels' configuration, changeable by tests and benchmarks: the chunk length Q (128 or 64), slots a
 *  workgroup SL (2 or 1), the K tile BK (8, or 16 where the device's workgroup memory holds its tiles: BK 8 is
 *  taken otherwise), the values of p a slot PB (64: 8 × 8 outputs a thread, or 32: 8 × 4, fewer registers), and the
 *  run length's rule: the workgroups of ssd_chunk_state that keep a large GPU busy
 *  (about three rounds of two an SM on 132 SMs, so that the last round's idle share stays small). */
export const chunkTuning = { stateGroups: 768, Q: 128, SL: 2, BK: 8, PB: 64 };

/** Chunks a run: the most of 1, 2, 4, 8 that leaves ssd_chunk_state chunkTuning.stateGroups workgroups (longer runs
 *  leave the state pass less to move, fewer workgroups a GPU less busy). */
export function runLength(units: number, nC: number): number {
  let R = 1;
  while (R < 8 && units * Math.ceil(nC / (2 * R)) >= chunkTuning.stateGroups) R *= 2;
  return R;
}

/** The chunked scan's arguments: the sequential scan's, with the per-head constants as three buffers [H]. */
export interface SsdChunkedArgs extends Omit<SsdScanKernelArgs, "consts"> {
  dtBias: Buf; A_log: Buf; D: Buf;
}

export function ssdScanChunked(gpu: Gpu, a: SsdChunkedArgs): void {
  const { Q, SL } = chunkTuning;
  const wide: ChunkShape = { N: a.N, P: a.P, v4: vec4Fits(a), Q, SL, BK: chunkTuning.BK, PB: chunkTuning.PB };
  const shape = workgroupBytes(wide) <= gpu.limits.maxComputeWorkgroupStorageSize ? wide : { ...wide, BK: 8 };
  const nC = Math.ceil(a.L / Q);
  // pairs of slots (head, block of PB values of p) a group, and blocks of Q state entries
  const pairs = Math.ceil(((a.H / a.G) * Math.ceil(a.P / shape.PB)) / SL), nNB = Math.ceil(a.N / Q);
  const R = runLength(a.G * pairs * nNB * a.B, nC), nRuns = Math.ceil(nC / R);
  const stateFloats = a.B * a.H * a.N * a.P;
  const runOff = nC * stateFloats;
  const states = gpu.alloc((nC + nRuns) * stateFloats * 4, "the chunk states");
  const dtcs = gpu.alloc(a.B * nC * a.H * dtcsStride(Q) * 4, "the chunks' dt and cumulative decay");
  const cb = gpu.alloc(a.B * nC * a.G * Q * Q * 4, "the chunks' C·Bᵀ");
  const p = windowParams(new Params().u32(a.B).u32(a.L).u32(a.H).u32(a.G).u32(nC).u32(R).u32(runOff), a);
  // C·Bᵀ, then the chunk states (the two touch no common output, so need not wait for each other)
  gpu.dispatch(gpu.kernel(cbKernel, shape), [a.Bm, a.Cm, cb], p, [a.G * cbBlocks(shape), nC, a.B]);
  gpu.dispatch(gpu.kernel(stateKernel, shape), [a.x, a.dt, a.Bm, a.dtBias, a.A_log, states, dtcs], p, [a.G * pairs * nNB, nRuns, a.B]);
  const [gx, gy] = grid(Math.ceil(stateFloats / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(gpu.kernel(passKernel, shape), [dtcs, states, a.state ?? gpu.dummyOut],
    new Params().u32(a.B).u32(a.H).u32(nC).u32(R).u32(runOff).bool(!!a.state).u32(gx), [gx, gy]);
  gpu.dispatch(gpu.kernel(scanKernel, shape), [a.x, a.Cm, a.z ?? gpu.dummy, a.D, states, dtcs, cb, a.y], p, [a.G * pairs, nC, a.B]);
  for (const buf of [states, dtcs, cb]) gpu.release(buf);
}
