/**
 * Backward of Mamba-2's SSM on WebGPU in chunks of Q positions, as matrix products (the CPU's ssdBackwardF32,
 * ../../../cpu/ssd-backward.ts, is the reference). Per batch row b, chunk c and head h (group g), with dt_s after
 * the bias, softplus and clamp, a_s = dt_s·A and cs_i = Σ_{s ≤ i} a_s inside the chunk (cs_l: the chunk's last),
 * the forward is
 *   S_c = Σ_s exp(cs_l − cs_s)·dt_s·x_s ⊗ B_s                  (the chunk's own state, [P × N])
 *   H_{c+1} = exp(cs_l)·H_c + S_c                               (H_c: the state entering chunk c)
 *   y_t = exp(cs_t)·H_c·C_t + Σ_{s ≤ t} (C_t·B_s)·exp(cs_t − cs_s)·dt_s·x_s + D·x_t
 * and, with gy = dy·silu(z) (the caller's), G_{c+1} the gradient reaching H_{c+1} (zero past the last chunk):
 *   G_c = Σ_t exp(cs_t)·gy_t ⊗ C_t + exp(cs_l)·G_{c+1}          (a pass over the chunks from the last)
 *   dCB_ts = (gy_t·x_s)·exp(cs_t − cs_s)·dt_s  for s ≤ t        (the gradient of C_t·B_s, [Q × Q])
 *   U_s = exp(cs_l − cs_s)·G_{c+1}·B_s + Σ_{t ≥ s} (C_t·B_s)·exp(cs_t − cs_s)·gy_t
 *   dx_s += dt_s·U_s + D·gy_s;   ∂dt_s (where dt_s multiplies) = x_s·U_s
 *   dC_t += Σ_h exp(cs_t)·gy_tᵀ·H_c + Σ_s dCB_ts·B_s;     dB_s += Σ_h exp(cs_l − cs_s)·dt_s·x_sᵀ·G_{c+1} + Σ_t dCB_ts·C_t
 *   ∂cs_t = exp(cs_t)·gy_t·(H_c·C_t) + Σ_{s < t} dCB_ts·(C_t·B_s) − dt_t·(x_t·U'_t) + [t = l]·⟨H_{c+1}, G_{c+1}⟩
 *     where U'_t is U_t without its term s = t, (C_t·B_t)·gy_t: that term's two parts in ∂cs_t cancel, and leaving
 *     both out (rather than summing and cancelling two large numbers) keeps ∂cs, and dA, to float32's rounding
 *   da_s = Σ_{i ≥ s} ∂cs_i;  ddt_s = x_s·U_s + A·da_s;  dA += Σ_s da_s·dt_s
 * then through the clamp and softplus to dt's raw value and its bias (dA_log = dA·A, dD = Σ gy·x).
 *
 * Kernels, in order (a piece of heads at a time where the scratch would not fit one buffer; C·Bᵀ once for all):
 *   ssd_bc_prep     a workgroup per (b, c, h): dt and cs (a log-step scan in workgroup memory), and the scaled
 *                   operands x_s·exp(cs_l − cs_s)·dt_s and gy_t·exp(cs_t), which five products read with one load
 *                   each (built on every read from 3 – 4 loads and an exp, the backward took 1 – 4% longer on an
 *                   H100, run 86);
 *   ssd_bc_cb       C·Bᵀ per (b, c, g), [Q × Q] over N (tiles wholly above the diagonal skipped);
 *   ssd_bc_state    S_c per (b, c, h), [P × N] over the chunk's positions;
 *   ssd_bc_fpass    a thread per (b, h, state entry): H_c for every chunk, from the initial state;
 *   ssd_bc_local    Σ_t exp(cs_t)·gy_t ⊗ C_t per (b, c, h), into S_c's place;
 *   ssd_bc_rpass    a thread per (b, h, state entry): G_{c+1} for every chunk, into a place of its own (over its
 *                   input, S_c's place, it took 7x as long on an H100: 6.98 against 0.99 ms at B1 L65536, run 82);
 *   ssd_bc_dcb      dCB per (b, c, h), [Q × Q] over P;
 *   ssd_bc_dx       U' per (b, c, h), [Q × P] over N + Q (the two terms as one product): dx, and x·U' by rows;
 *   ssd_bc_q        exp(cs_t)·gy_t·(H_c·C_t) per (b, c, h), [Q × P] over N, summed by rows;
 *   ssd_bc_dcbsum   a thread per (b, c, g, t, s ≤ t): dCB summed over the group's heads, Σ_h dCB_ts (B and C are
 *                   the group's, so the heads' Σ_s dCB_ts·B_s is one product of the sum);
 *   ssd_bc_dc, ssd_bc_db   per (b, c, g), [Q × N] over the group's heads' P, then Q (the two terms as one product);
 *                   where few (b, c, g) would leave the GPU idle, a group's heads in parts, ssd_bc_parts adding up
 *                   their partial sums;
 *   ssd_bc_vsum     a thread per (b, c, h, t): Σ_{s < t} dCB_ts·(C_t·B_s);
 *   ssd_bc_last     a workgroup per (b, c, h): ⟨H_{c+1}, G_{c+1}⟩;
 *   ssd_bc_rows     a workgroup per (b, c, h): ∂cs, its reverse sum da, dt's gradient, the per-chunk sums of dA, dD
 *                   and the bias's gradient;
 *   ssd_bc_params   a thread per head: those sums over batch rows and chunks, into dA_log, dD, dDtBias.
 * (A backward that walked time per state entry, keeping checkpoints, ran as fast at B1 L2048 H24 but 2.2 – 5.3x
 * slower at larger shapes on an H100: run 81 in docs/benchmarks-archive.md.)
 * The products share one generator: 64 × 64 output tiles, 256 threads of 4 × 4 outputs, K staged 16 at a time
 * through workgroup memory, the next K tile's loads in flight (in registers) while the current one computes. Each
 * product names how its operands are read (functions of the row, the column and K, zero outside the chunk) and
 * what becomes of its outputs.
 * The gate's backward (ssd_bwd_gate, before all these: gy from the scan's output before the gate) is here too.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params, grid } from "../../gpu.ts";
import { type KernelDef, defineKernel } from "../../kernel-def.ts";
import { check } from "../../../../errors.ts";
import { softplusWgsl } from "./common.ts";

/** bufferBytes: the most bytes the scratch buffer may take (and the device's binding limit); tests lower it to
 *  force pieces of heads. Q: the chunk length (64 or 128; results the same but for rounding): 64 keeps dCB's scratch
 *  and the triangle's wasted work small; on an H100 128 took 1.08 – 1.25x as long (run 81). groupWorkgroups: the
 *  workgroups below which dB's and dC's products split a group's heads into parts (1: never; on an H100 at B1 L2048
 *  H24 the backward's kernels summed 1.26 ms with parts against 2.19 without, run 82). */
export const ssdBackwardTuning = { bufferBytes: 2 ** 31 - 4, Q: 64, groupWorkgroups: 1024 };

// the output tile of the products and the K step
const BM = 64, BN = 64, BK = 16;

export interface SsdBackwardDims {
  B: number; L: number; H: number; P: number; G: number; N: number;
  hasState: boolean; lo: number; hi: number;
}

/** Offsets (floats) in the scratch: C·Bᵀ for all groups, then a piece of hp heads' buffers. */
export function ssdBackwardLayout(d: SsdBackwardDims, Q: number, hp: number) {
  const nC = Math.ceil(d.L / Q), PN = d.P * d.N, nPT = Math.ceil(d.P / BN);
  const Zh = d.B * nC * hp; // (b, c, head of the piece)
  const oCB = 0, oDT = oCB + d.B * nC * d.G * Q * Q, oCS = oDT + Zh * Q, oHS = oCS + Zh * Q, oST = oHS + Zh * PN;
  const oDCB = oST + Zh * PN, oR = oDCB + Zh * Q * Q, oQY = oR + nPT * Zh * Q, oRS = oQY + nPT * Zh * Q;
  const oDL = oRS + Zh * Q, oPar = oDL + Zh, oKP = oPar + 3 * Zh;
  // dB and dC sum over a group's heads: where few (b, c, group) would leave the GPU idle, the heads go in S parts,
  // each a workgroup's, whose partial sums a last kernel adds up (the groups that meet a piece: at most ng)
  const hg = d.H / d.G, ng = Math.min(d.G, Math.ceil(hp / hg) + 1);
  const tiles = d.B * nC * ng * Math.ceil(Q / BM) * Math.ceil(d.N / BN);
  const S = Math.max(1, Math.min(hg, Math.ceil(ssdBackwardTuning.groupWorkgroups / tiles)));
  const oG = oKP + (S > 1 ? S * d.B * nC * ng * Q * d.N : 0);
  // G_{c+1} in a place of its own; then dCB summed over each group's heads in the piece; then the products' scaled
  // operands of each (b, c, head of the piece), [Q, P] each
  const oDS = oG + Zh * PN;
  const oXS = oDS + d.B * nC * ng * Q * Q, oGS = oXS + Zh * Q * d.P;
  const size = oGS + Zh * Q * d.P;
  return { Q, nC, hp, nPT, Zh, oCB, oDT, oCS, oHS, oST, oDCB, oR, oQY, oRS, oDL, oPar, S, oKP, oG, oDS, oXS, oGS, size };
}
export type SsdBackwardLayout = ReturnType<typeof ssdBackwardLayout>;

/** The most heads a piece takes with its scratch under maxBytes, in pieces of even size; null if not one fits. */
export function ssdBackwardPlan(d: SsdBackwardDims, maxBytes: number, Q = ssdBackwardTuning.Q): SsdBackwardLayout | null {
  const fits = (hp: number) => ssdBackwardLayout(d, Q, hp).size * 4 <= maxBytes;
  if (!fits(1)) return null;
  let lo = 1, hi = d.H;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (fits(mid)) lo = mid;
    else hi = mid - 1;
  }
  return ssdBackwardLayout(d, Q, Math.ceil(d.H / Math.ceil(d.H / lo)));
}

// every kernel's parameters, one struct (one Params serves them all)
const paramsStruct = /* wgsl */ `struct P {
  B: u32, L: u32, H: u32, P: u32, G: u32, N: u32, nC: u32, h0: u32,
  hp: u32, hg: u32, g0: u32, zCount: u32, groupsX: u32, tilesN: u32, tilesMN: u32, Zh: u32,
  ldx: u32, offx: u32, lddt: u32, offdt: u32, ldb: u32, offb: u32, ldc: u32, offc: u32,
  ldo: u32, offo: u32, hasState: u32, lo: f32, hi: f32, nPT: u32,
  oCB: u32, oDT: u32, oCS: u32, oHS: u32, oST: u32, oDCB: u32, oR: u32, oQY: u32, oRS: u32, oDL: u32, oPar: u32,
  S: u32, oKP: u32, oG: u32, oDS: u32, oXS: u32, oGS: u32,
}`;

// the buffers a kernel may bind, in binding order; each kernel binds those it names
const BINDINGS: Record<string, string> = {
  x: "var<storage, read> x: array<f32>;",
  dt: "var<storage, read> dt: array<f32>;",
  Bm: "var<storage, read> Bm: array<f32>;",
  Cm: "var<storage, read> Cm: array<f32>;",
  consts: "var<storage, read> consts: array<f32>;",
  gy: "var<storage, read> gy: array<f32>;",
  state0: "var<storage, read> state0: array<f32>;",
  work: "var<storage, read_write> work: array<f32>;",
  out: "var<storage, read_write> out: array<f32>;",
  out2: "var<storage, read_write> out2: array<f32>;",
  out3: "var<storage, read_write> out3: array<f32>;",
};
const ORDER = Object.keys(BINDINGS);

function header(Q: number, names: string[]): string {
  const used = ORDER.filter((n) => names.includes(n));
  return `${paramsStruct}
${used.map((n, i) => `@group(0) @binding(${i}) ${BINDINGS[n]}`).join("\n")}
@group(0) @binding(${used.length}) var<uniform> p: P;
const Q = ${Q}u;
// the (b, c, head or group) a workgroup serves: its first row of the [B·L, ·] matrices, the chunk's length
struct Z { b: u32, c: u32, u: u32, r0: u32, Qc: u32 }
fn zOf(z: u32, units: u32) -> Z {
  let u = z % units;
  let bc = z / units;
  let b = bc / p.nC;
  let c = bc % p.nC;
  return Z(b, c, u, b * p.L + c * Q, min(Q, p.L - c * Q));
}
// the groups whose heads meet the piece [h0, h0 + hp)
fn ngroups() -> u32 { return (p.h0 + p.hp - 1u) / p.hg - p.g0 + 1u; }
// group g's heads in the piece: [x, y)
fn pieceHeads(g: u32) -> vec2<u32> { return vec2<u32>(max(g * p.hg, p.h0), min((g + 1u) * p.hg, p.h0 + p.hp)); }
// a (b, c, head of the piece)'s index in the per-head scratch, and its global head
fn zi(zc: Z, hl: u32) -> u32 { return (zc.b * p.nC + zc.c) * p.hp + hl; }
fn dtAt(i: u32, s: u32) -> f32 { return work[p.oDT + i * Q + s]; }
fn csAt(i: u32, s: u32) -> f32 { return work[p.oCS + i * Q + s]; }
fn cbAt(zc: Z, g: u32, t: u32, s: u32) -> f32 { return work[p.oCB + ((zc.b * p.nC + zc.c) * p.G + g) * Q * Q + t * Q + s]; }
`;
}

interface ProductSpec {
  name: string;
  bindings: string[];
  /** "head": z runs over (b, c, head of the piece); "group": over (b, c, group touching the piece); "all": (b, c, g) */
  unit: "head" | "group" | "all";
  /** rows, columns and K of a z's product (WGSL; may use zc, the unit's values and the helpers) */
  M: string; N: string; K: string;
  /** fn aAt(zc, i, k) and fn bAt(zc, k, j) bodies, returning f32 (called inside the product's bounds only); they,
   *  put, rowOut and the helpers may read the unit's values (UNIT_VALUES), set once a workgroup */
  a: string; b: string;
  /** whether consecutive k are adjacent in memory (else consecutive rows / columns) */
  aK: boolean; bK: boolean;
  /** fn put(zc, i, j, v) body: what becomes of an output inside the bounds */
  put: string;
  /** a term of the row's sum for each output (WGSL expression of zc, row, col, v), and fn rowOut(zc, i, tileN, sum) */
  rowTerm?: string; rowOut?: string;
  /** WGSL functions the row term calls */
  helpers?: string;
  /** a workgroup-uniform condition under which the tile is all zeros and nothing reads it (rows r0t.., columns c0t..) */
  skip?: string;
}

/** A product kernel's compile-time shape: the chunk length and the head dimension P (dB's and dC's K runs over
 *  (head, p) and then Q, split per element: a constant P makes that a multiply and shift, not an integer division). */
export interface ProductShape { Q: number; P: number }

// the outputs a thread computes, T × T in workgroups of 256 (8 × 8 in workgroups of 64 took 2.3 – 3x as long on an
// H100: fewer threads to hide the loads' latency)
const T = 4;

function productWgsl(s: ProductSpec, sh: ProductShape): string {
  const { Q, P } = sh;
  const units = s.unit === "head" ? "p.hp" : s.unit === "group" ? "ngroups() * p.S" : "p.G";
  const values = s.unit === "all" ? null : UNIT_VALUES[s.unit];
  const TX = BN / T, TY = BM / T, NT = TX * TY; // threads along columns and rows, threads a workgroup
  const V = T / 4; // vec4s a thread's row or column of outputs
  // one operand's K tile starting at column kb, each thread a few values into registers (reg), then from them into
  // workgroup memory (K-major): consecutive threads take consecutive k where the operand's k is adjacent in memory
  // (kFast), else consecutive rows / columns
  const slot = (idx: string, W: number, kFast: boolean) => /* wgsl */ `let e = tid + ${NT}u * q;
      let ${idx} = ${kFast ? `e / ${BK}u` : `e % ${W}u`};
      let kk = ${kFast ? `e % ${BK}u` : `e / ${W}u`};`;
  const load = (reg: string, idx: string, W: number, base: string, bound: string, kFast: boolean, read: string) => /* wgsl */ `
    for (var q = 0u; q < ${(W * BK) / NT}u; q++) {
      ${slot(idx, W, kFast)}
      ${reg}[q] = 0.0;
      if (${base} + ${idx} < ${bound} && kb + kk < Kz) { ${reg}[q] = ${read}; }
    }`;
  const store = (arr: string, reg: string, idx: string, W: number, kFast: boolean) => /* wgsl */ `
    for (var q = 0u; q < ${(W * BK) / NT}u; q++) {
      ${slot(idx, W, kFast)}
      ${arr}[kk * ${W / 4}u + ${idx} / 4u][${idx} % 4u] = ${reg}[q];
    }`;
  const loads = /* wgsl */ `${load("ra", "m", BM, "r0t", "Mz", s.aK, "aAt(zc, r0t + m, kb + kk)")}
    ${load("rb", "n", BN, "c0t", "Nz", s.bK, "bAt(zc, kb + kk, c0t + n)")}`;
  const body = /* wgsl */ `
const HP = ${P}u; // a head's P (dB's and dC's K: the heads' P, then Q)
// x_s[p]·exp(cs_l − cs_s)·dt_s and gy_t[p]·exp(cs_t) of scratch index i0 (made by ssd_bc_prep)
fn xsAt(i0: u32, s: u32, pp: u32) -> f32 { return work[p.oXS + (i0 * Q + s) * HP + pp]; }
fn gsAt(i0: u32, t: u32, pp: u32) -> f32 { return work[p.oGS + (i0 * Q + t) * HP + pp]; }
fn aAt(zc: Z, i: u32, k: u32) -> f32 { ${s.a} }
fn bAt(zc: Z, k: u32, j: u32) -> f32 { ${s.b} }
fn put(zc: Z, i: u32, j: u32, v: f32) { ${s.put} }
${s.rowOut ? `fn rowOut(zc: Z, i: u32, tileN: u32, sum: f32) { ${s.rowOut} }` : ""}
${s.helpers ?? ""}
${values ? `// the workgroup's ${s.unit} values (UNIT_VALUES), set once before the products' loops
${values.names.map((n) => `var<private> ${n}: ${n === "csl" ? "f32" : "u32"};`).join("\n")}
${values.fns}` : ""}
// the staged tiles, K-major: As[kk][m], Bs[kk][n], read a vec4 at a time
var<workgroup> As: array<vec4<f32>, ${(BK * BM) / 4}>;
var<workgroup> Bs: array<vec4<f32>, ${(BK * BN) / 4}>;
${s.rowTerm ? `var<workgroup> red: array<f32, ${BM * TX}>;` : ""}

@compute @workgroup_size(${NT})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let wid = wg.y * p.groupsX + wg.x;
  let z = wid / p.tilesMN;
  if (z >= p.zCount) { return; }
  let zc = zOf(z, ${units});
  let tile = wid % p.tilesMN;
  let r0t = (tile / p.tilesN) * ${BM}u;
  let c0t = (tile % p.tilesN) * ${BN}u;
  ${values ? values.init : ""}
  let Mz = ${s.M};
  let Nz = ${s.N};
  let Kz = ${s.K};
  if (r0t >= Mz || c0t >= Nz${s.skip ? ` || (${s.skip})` : ""}) { return; }
  // this thread's outputs: rows ty·4 + 4·${TY}·a + i, columns tx·4 + 4·${TX}·b + j (a, b < ${V}; i, j < 4)
  let tx = tid % ${TX}u;
  let ty = tid / ${TX}u;
  var acc: array<vec4<f32>, ${T * V}>;
  // the first K tile's values in registers; each step stores them, then loads the next tile's while it computes
  var ra: array<f32, ${(BM * BK) / NT}>;
  var rb: array<f32, ${(BN * BK) / NT}>;
  {
    let kb = 0u;
    ${loads}
  }
  for (var k0 = 0u; k0 < Kz; k0 += ${BK}u) {
    ${store("As", "ra", "m", BM, s.aK)}
    ${store("Bs", "rb", "n", BN, s.bK)}
    workgroupBarrier();
    let kb = k0 + ${BK}u;
    if (kb < Kz) {
      ${loads}
    }
    for (var kk = 0u; kk < ${BK}u; kk++) {
      for (var a = 0u; a < ${V}u; a++) {
        let av = As[kk * ${BM / 4}u + ty + ${TY}u * a];
        for (var b = 0u; b < ${V}u; b++) {
          let bv = Bs[kk * ${BN / 4}u + tx + ${TX}u * b];
          for (var i = 0u; i < 4u; i++) { acc[(a * 4u + i) * ${V}u + b] += av[i] * bv; }
        }
      }
    }
    workgroupBarrier();
  }
  ${s.rowTerm ? `var rs: array<f32, ${T}>;` : ""}
  for (var a = 0u; a < ${V}u; a++) {
    for (var i = 0u; i < 4u; i++) {
      let row = r0t + (ty + ${TY}u * a) * 4u + i;
      for (var b = 0u; b < ${V}u; b++) {
        for (var j = 0u; j < 4u; j++) {
          let col = c0t + (tx + ${TX}u * b) * 4u + j;
          if (row < Mz && col < Nz) {
            let v = acc[(a * 4u + i) * ${V}u + b][j];
            put(zc, row, col, v);
            ${s.rowTerm ? `rs[a * 4u + i] += ${s.rowTerm};` : ""}
          }
        }
      }
    }
  }
  ${s.rowTerm ? `for (var a = 0u; a < ${V}u; a++) {
    for (var i = 0u; i < 4u; i++) { red[((ty + ${TY}u * a) * 4u + i) * ${TX}u + tx] = rs[a * 4u + i]; }
  }
  workgroupBarrier();
  for (var m = tid; m < ${BM}u; m += ${NT}u) {
    if (r0t + m < Mz) {
      var sum = 0.0;
      for (var j = 0u; j < ${TX}u; j++) { sum += red[m * ${TX}u + j]; }
      rowOut(zc, r0t + m, c0t / ${BN}u, sum);
    }
  }` : ""}
}
`;
  return header(Q, s.bindings) + body;
}

// ---- the products ----
// reads: x_s[p] of head h, gy_t[p] of head h, B_s[n] and C_t[n] of group g (zero past the chunk's end)
const X = "x[(zc.r0 + s) * p.ldx + p.offx + h * p.P + pp]";
const GY = "gy[(zc.r0 + t) * p.H * p.P + h * p.P + pp]";
const BS = "Bm[(zc.r0 + s) * p.ldb + p.offb + g * p.N + n]";
const CT = "Cm[(zc.r0 + t) * p.ldc + p.offc + g * p.N + n]";
// The values of a workgroup's unit, set once in main (module-scope privates) rather than in every operand's read:
//  head: the head of the piece hl, its global head h, group g, scratch index i0 and cs at the chunk's end csl;
//  group: a group's heads in the piece, gA .. gB: K runs over their P columns each (nP in all), then the chunk's Q
//  positions, in S parts of even length (a multiple of 16): this workgroup's part, K from kA to kB.
// (Private variables count as non-uniform, so a K that depends on them, as a group's does, is worked out from
// main's own uniform values: groupHeads.)
const UNIT_VALUES = {
  head: { names: ["hl", "h", "g", "i0", "csl"], fns: "", init: "hl = zc.u; h = p.h0 + hl; g = h / p.hg; i0 = zi(zc, hl); csl = csAt(i0, Q - 1u);" },
  group: {
    names: ["gl", "part", "g", "gA", "nP", "kA"],
    fns: `struct GH { gl: u32, part: u32, gA: u32, nP: u32, kA: u32, kB: u32 }
fn groupHeads(zc: Z) -> GH {
  let gl = zc.u / p.S; let part = zc.u % p.S;
  let heads = pieceHeads(p.g0 + gl); let gA = heads.x;
  let nP = (heads.y - gA) * HP;
  let per = (nP + Q + p.S * 16u - 1u) / (p.S * 16u) * 16u; // K a part: (nP + Q) / S up to a multiple of 16
  let kA = min(nP + Q, part * per);
  return GH(gl, part, gA, nP, kA, min(nP + Q, kA + per));
}`,
    init: "let gh = groupHeads(zc); gl = gh.gl; part = gh.part; g = p.g0 + gl; gA = gh.gA; nP = gh.nP; kA = gh.kA;",
  },
};
// dB's or dC's [Q, N] of (b, c, group): added into the output, or (heads in parts) the part's partial sums
const GROUP_PUT = `if (p.S == 1u) { out[(zc.r0 + i) * p.ldo + p.offo + g * p.N + j] += v; } else {
  work[p.oKP + (((zc.b * p.nC + zc.c) * ngroups() + gl) * p.S + part) * Q * p.N + i * p.N + j] = v; }`;
// the part's k is the group's kg = kA + k: below nP, head h's column kk (its p); past nP the position kg - nP, whose dCB
// is summed over the group's heads (B and C are the group's: the heads' dCB·B sum to (Σ_h dCB)·B, one product of
// K Q where there were a head's each)
const SEG = "let kg = kA + k; let h = gA + kg / HP; let kk = kg % HP; let i0 = zi(zc, h - p.h0);";
const DS = "work[p.oDS + ((zc.b * p.nC + zc.c) * ngroups() + gl) * Q * Q";
const GROUP_K = "gh.kB - gh.kA"; // from main's uniform values

const PRODUCTS: ProductSpec[] = [
  { // C·Bᵀ [t, s] over N
    name: "ssd_bc_cb", bindings: ["Bm", "Cm", "work"], unit: "all", M: "Q", N: "Q", K: "p.N", skip: "c0t > r0t + 63u",
    a: "let g = zc.u; let t = i; let n = k; if (t >= zc.Qc) { return 0.0; } return " + CT + ";",
    b: "let g = zc.u; let s = j; let n = k; if (s >= zc.Qc) { return 0.0; } return " + BS + ";",
    aK: true, bK: true,
    put: "work[p.oCB + ((zc.b * p.nC + zc.c) * p.G + zc.u) * Q * Q + i * Q + j] = v;",
  },
  { // S_c [p, n] = Σ_s exp(cs_l − cs_s)·dt_s·x_s[p]·B_s[n]
    name: "ssd_bc_state", bindings: ["Bm", "work"], unit: "head", M: "p.P", N: "p.N", K: "zc.Qc",
    a: "return xsAt(i0, k, i);",
    b: `let s = k; let n = j; return ${BS};`,
    aK: false, bK: false,
    put: `work[p.oST + i0 * p.P * p.N + i * p.N + j] = v;`,
  },
  { // Σ_t exp(cs_t)·gy_t[p]·C_t[n], the chunk's part of G_c
    name: "ssd_bc_local", bindings: ["Cm", "work"], unit: "head", M: "p.P", N: "p.N", K: "zc.Qc",
    a: "return gsAt(i0, k, i);",
    b: `let t = k; let n = j; return ${CT};`,
    aK: false, bK: false,
    put: `work[p.oST + i0 * p.P * p.N + i * p.N + j] = v;`,
  },
  { // dCB [t, s] = (gy_t·x_s)·exp(cs_t − cs_s)·dt_s for s ≤ t
    name: "ssd_bc_dcb", bindings: ["x", "gy", "work"], unit: "head", M: "zc.Qc", N: "zc.Qc", K: "p.P", skip: "c0t > r0t + 63u",
    a: `let t = i; let pp = k; return ${GY};`,
    b: `let s = j; let pp = k; return ${X};`,
    aK: true, bK: true,
    put: `let t = i; let s = j; var d = 0.0; if (s <= t) { d = v * exp(csAt(i0, t) - csAt(i0, s)) * dtAt(i0, s); }
  work[p.oDCB + i0 * Q * Q + t * Q + s] = d;`,
  },
  { // U' [s, p] over N + Q (t > s): dx_s += dt_s·(U'_s + (C_s·B_s)·gy_s) + D·gy_s; rows: x_s·U'_s
    name: "ssd_bc_dx", bindings: ["x", "Bm", "consts", "gy", "work", "out"], unit: "head", M: "zc.Qc", N: "p.P", K: "p.N + zc.Qc",
    a: `let s = i; if (k < p.N) { let n = k; return ${BS} * exp(csl - csAt(i0, s)); }
  let t = k - p.N; if (t <= s) { return 0.0; } return cbAt(zc, g, t, s) * exp(csAt(i0, t) - csAt(i0, s));`,
    b: `let pp = j; if (k < p.N) { return work[p.oG + i0 * p.P * p.N + pp * p.N + k]; }
  let t = k - p.N; return ${GY};`,
    aK: true, bK: true,
    put: `let s = i; let pp = j; let t = s;
  let o = (zc.r0 + s) * p.ldo + p.offo + h * p.P + pp;
  let gys = ${GY};
  out[o] += dtAt(i0, s) * (v + cbAt(zc, g, s, s) * gys) + consts[2u * p.H + h] * gys;`,
    rowTerm: "xAt(zc, row, col) * v",
    rowOut: `work[p.oR + (tileN * p.Zh + i0) * Q + i] = sum;`,
    helpers: `fn xAt(zc: Z, s: u32, pp: u32) -> f32 { return ${X}; }`,
  },
  { // rows of exp(cs_t)·gy_t ∘ (C_t·H_c) over p
    name: "ssd_bc_q", bindings: ["Cm", "work"], unit: "head", M: "zc.Qc", N: "p.P", K: "p.N",
    a: `let t = i; let n = k; return ${CT};`,
    b: `return work[p.oHS + i0 * p.P * p.N + j * p.N + k];`,
    aK: true, bK: true,
    put: "",
    rowTerm: "gyExp(zc, row, col) * v",
    rowOut: `work[p.oQY + (tileN * p.Zh + i0) * Q + i] = sum;`,
    helpers: "fn gyExp(zc: Z, t: u32, pp: u32) -> f32 { return gsAt(i0, t, pp); }",
  },
  { // dC [t, n] += Σ_h exp(cs_t)·gy_t·H_c[·, n] + Σ_s dCB_ts·B_s[n]
    name: "ssd_bc_dc", bindings: ["Bm", "work", "out"], unit: "group", M: "zc.Qc", N: "p.N", K: GROUP_K,
    a: `${SEG} let t = i; if (kg < nP) { return gsAt(i0, t, kk); }
  let s = kg - nP; if (s > t || s >= zc.Qc) { return 0.0; } return ${DS} + t * Q + s];`,
    b: `${SEG} let n = j; if (kg < nP) { return work[p.oHS + i0 * p.P * p.N + kk * p.N + n]; }
  let s = kg - nP; if (s >= zc.Qc) { return 0.0; } return ${BS};`,
    aK: true, bK: false,
    put: GROUP_PUT,
  },
  { // dB [s, n] += Σ_h exp(cs_l − cs_s)·dt_s·x_s·G_{c+1}[·, n] + Σ_t dCB_ts·C_t[n]
    name: "ssd_bc_db", bindings: ["Cm", "work", "out"], unit: "group", M: "zc.Qc", N: "p.N", K: GROUP_K,
    a: `${SEG} let s = i; if (kg < nP) { return xsAt(i0, s, kk); }
  let t = kg - nP; if (t < s || t >= zc.Qc) { return 0.0; } return ${DS} + t * Q + s];`,
    b: `${SEG} let n = j; if (kg < nP) { return work[p.oG + i0 * p.P * p.N + kk * p.N + n]; }
  let t = kg - nP; if (t >= zc.Qc) { return 0.0; } return ${CT};`,
    aK: true, bK: false,
    put: GROUP_PUT,
  },
];

const productKernels = new Map(PRODUCTS.map((s) => [s.name, defineKernel({
  name: s.name,
  wgsl: (shape: ProductShape) => productWgsl(s, shape),
  example: { Q: 64, P: 64 } as ProductShape,
})]));

// ---- the kernels that are not products ----
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

const gateKernel = defineKernel({ name: "ssd_bwd_gate", wgsl: () => gateWgsl, example: null });

/** The gate's backward: y (the scan's output before the gate) becomes gy = dout·silu(z); dz += dout·y·silu'(z). */
export function ssdGateBackward(gpu: Gpu, y: Buf, dout: Buf, z: Buf, ldz: number, offz: number, dz: Buf, lddz: number, offdz: number, T: number, HP: number): void {
  const [gx, gy] = grid(Math.ceil((T * HP) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(gpu.kernel(gateKernel, null), [y, dout, z, dz], new Params().u32(T).u32(HP).u32(ldz).u32(offz).u32(lddz).u32(offdz).u32(gx), [gx, gy]);
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


// the start of a kernel of a workgroup of Q threads (t) a (b, c, head of the piece): i0 its index, h its head
const perHeadMain = (Q: number) => /* wgsl */ `@compute @workgroup_size(${Q})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let i0 = wg.y * p.groupsX + wg.x;
  if (i0 >= p.Zh) { return; } // uniform: a whole workgroup
  let zc = zOf(i0, p.hp);
  let h = p.h0 + zc.u;`;

// dt and cs of a (b, c, h), and the products' scaled operands x_s·exp(cs_l − cs_s)·dt_s and gy_t·exp(cs_t)
const PREP_NAMES = ["x", "dt", "consts", "gy", "work"];
const prepKernel = defineKernel({
  name: "ssd_bc_prep",
  example: { Q: 64 },
  wgsl: (s: { Q: number }) => /* wgsl */ `${header(s.Q, PREP_NAMES)}
var<workgroup> sc: array<f32, ${s.Q}>;
var<workgroup> dts: array<f32, ${s.Q}>;
${perHeadMain(s.Q)}
  var dtv = 0.0;
  if (t < zc.Qc) {
    let raw = dt[(zc.r0 + t) * p.lddt + p.offdt + h] + consts[h];
    dtv = clamp(${softplusWgsl("raw")}, p.lo, p.hi);
  }
  let A = -exp(consts[p.H + h]);
  sc[t] = dtv * A;
  // inclusive scan (positions past the chunk add nothing: their cs is the chunk's last)
  for (var d = 1u; d < Q; d *= 2u) {
    workgroupBarrier();
    var v = sc[t];
    if (t >= d) { v += sc[t - d]; }
    workgroupBarrier();
    sc[t] = v;
  }
  work[p.oDT + i0 * Q + t] = dtv;
  work[p.oCS + i0 * Q + t] = sc[t];
  // the scaled operands, a row of P at a time: five products read them where each read would make them
  dts[t] = dtv;
  workgroupBarrier();
  let csl = sc[Q - 1u];
  for (var e = t; e < Q * p.P; e += Q) {
    let s = e / p.P;
    let pp = e % p.P;
    var xv = 0.0;
    var gv = 0.0;
    if (s < zc.Qc) {
      xv = x[(zc.r0 + s) * p.ldx + p.offx + h * p.P + pp] * exp(csl - sc[s]) * dts[s];
      gv = gy[(zc.r0 + s) * p.H * p.P + h * p.P + pp] * exp(sc[s]);
    }
    work[p.oXS + (i0 * Q + s) * p.P + pp] = xv;
    work[p.oGS + (i0 * Q + s) * p.P + pp] = gv;
  }
}
`,
});

// the passes over chunks: a thread per (b, head of the piece, state entry)
const passWgsl = (Q: number, reverse: boolean) => /* wgsl */ `${header(Q, reverse ? ["work"] : ["state0", "work"])}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let id = gid.y * nw.x * 64u + gid.x;
  let PN = p.P * p.N;
  if (id >= p.B * p.hp * PN) { return; }
  let e = id % PN;
  let hl = (id / PN) % p.hp;
  let b = id / (PN * p.hp);
${reverse ? `  // G_{c+1} (into a place of its own), from the last chunk: G_c = (the chunk's part) + exp(cs_l)·G_{c+1}
  var G = 0.0;
  for (var c = p.nC; c > 0u; c--) {
    let i0 = ((b * p.nC + c - 1u) * p.hp + hl);
    let local = work[p.oST + i0 * PN + e];
    work[p.oG + i0 * PN + e] = G;
    G = local + exp(work[p.oCS + i0 * Q + Q - 1u]) * G;
  }` : `  // H_c for every chunk: H_{c+1} = exp(cs_l)·H_c + S_c
  var S = 0.0;
  if (p.hasState != 0u) { S = state0[(b * p.H + p.h0 + hl) * PN + e]; }
  for (var c = 0u; c < p.nC; c++) {
    let i0 = ((b * p.nC + c) * p.hp + hl);
    work[p.oHS + i0 * PN + e] = S;
    S = exp(work[p.oCS + i0 * Q + Q - 1u]) * S + work[p.oST + i0 * PN + e];
  }`}
}
`;
const fpassKernel = defineKernel({ name: "ssd_bc_fpass", example: { Q: 64 }, wgsl: (s: { Q: number }) => passWgsl(s.Q, false) });
const rpassKernel = defineKernel({ name: "ssd_bc_rpass", example: { Q: 64 }, wgsl: (s: { Q: number }) => passWgsl(s.Q, true) });

// Σ_s dCB_ts·(C_t·B_s) by rows: a thread per (b, c, head, t)
const vsumKernel = defineKernel({
  name: "ssd_bc_vsum",
  example: { Q: 64 },
  wgsl: (s: { Q: number }) => /* wgsl */ `${header(s.Q, ["work"])}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let id = gid.y * nw.x * 64u + gid.x;
  if (id >= p.Zh * Q) { return; }
  let t = id % Q;
  let i0 = id / Q;
  let zc = zOf(i0, p.hp);
  let g = (p.h0 + zc.u) / p.hg;
  var sum = 0.0;
  if (t < zc.Qc) {
    for (var s = 0u; s < t; s++) { sum += work[p.oDCB + i0 * Q * Q + t * Q + s] * cbAt(zc, g, t, s); }
  }
  work[p.oRS + i0 * Q + t] = sum;
}
`,
});

// ⟨H_{c+1}, G_{c+1}⟩: a workgroup per (b, c, head) (zero for the last chunk: nothing reaches past it)
const lastKernel = defineKernel({
  name: "ssd_bc_last",
  example: { Q: 64 },
  wgsl: (s: { Q: number }) => /* wgsl */ `${header(s.Q, ["work"])}
var<workgroup> red: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let i0 = wg.y * p.groupsX + wg.x;
  if (i0 >= p.Zh) { return; }
  let zc = zOf(i0, p.hp);
  let PN = p.P * p.N;
  var sum = 0.0;
  if (zc.c + 1u < p.nC) {
    for (var e = tid; e < PN; e += 256u) { sum += work[p.oHS + (i0 + p.hp) * PN + e] * work[p.oG + i0 * PN + e]; }
  }
  red[tid] = sum;
  for (var d = 128u; d > 0u; d /= 2u) {
    workgroupBarrier();
    if (tid < d) { red[tid] += red[tid + d]; }
  }
  if (tid == 0u) { work[p.oDL + i0] = red[0]; }
}
`,
});

// ∂cs, da, dt's gradient and the per-chunk sums: a workgroup of Q threads per (b, c, head)
const rowsKernel = defineKernel({
  name: "ssd_bc_rows",
  example: { Q: 64 },
  wgsl: (s: { Q: number }) => /* wgsl */ `${header(s.Q, ["x", "dt", "consts", "gy", "work", "out"])}
var<workgroup> sc: array<f32, ${s.Q}>;
var<workgroup> red: array<vec3<f32>, ${s.Q}>;
${perHeadMain(s.Q)}
  let A = -exp(consts[p.H + h]);
  let dtv = work[p.oDT + i0 * Q + t];
  var r = 0.0;
  var dcs = 0.0;
  if (t < zc.Qc) {
    var q = 0.0;
    for (var pt = 0u; pt < p.nPT; pt++) {
      r += work[p.oR + (pt * p.Zh + i0) * Q + t];
      q += work[p.oQY + (pt * p.Zh + i0) * Q + t];
    }
    dcs = q + work[p.oRS + i0 * Q + t] - dtv * r;
    if (t + 1u == zc.Qc) { dcs += work[p.oDL + i0]; }
  }
  var xg = 0.0;
  if (t < zc.Qc) {
    for (var pp = 0u; pp < p.P; pp++) {
      xg += x[(zc.r0 + t) * p.ldx + p.offx + h * p.P + pp] * gy[(zc.r0 + t) * p.H * p.P + h * p.P + pp];
    }
    // the diagonal's term of x_t·U_t, which ∂cs_t leaves out (it cancels there)
    r += cbAt(zc, (p.h0 + zc.u) / p.hg, t, t) * xg;
  }
  // da_t = Σ_{i ≥ t} ∂cs_i (a reverse inclusive scan)
  sc[t] = dcs;
  for (var d = 1u; d < Q; d *= 2u) {
    workgroupBarrier();
    var v = sc[t];
    if (t + d < Q) { v += sc[t + d]; }
    workgroupBarrier();
    sc[t] = v;
  }
  var terms = vec3<f32>(0.0);
  if (t < zc.Qc) {
    let da = sc[t];
    let ddt = r + A * da;
    let raw = dt[(zc.r0 + t) * p.lddt + p.offdt + h] + consts[h];
    let sp = ${softplusWgsl("raw")};
    var draw = 0.0;
    if (sp >= p.lo && sp <= p.hi) { draw = ddt * select(1.0 / (1.0 + exp(-raw)), 1.0, raw > 20.0); }
    out[(zc.r0 + t) * p.ldo + p.offo + h] += draw;
    terms = vec3<f32>(da * dtv, xg, draw);
  }
  red[t] = terms;
  for (var d = Q / 2u; d > 0u; d /= 2u) {
    workgroupBarrier();
    if (t < d) { red[t] += red[t + d]; }
  }
  if (t == 0u) {
    work[p.oPar + 3u * i0] = red[0].x;
    work[p.oPar + 3u * i0 + 1u] = red[0].y;
    work[p.oPar + 3u * i0 + 2u] = red[0].z;
  }
}
`,
});

// the per-chunk sums over batch rows and chunks: a thread per head of the piece
const paramsKernel = defineKernel({
  name: "ssd_bc_params",
  example: { Q: 64 },
  wgsl: (s: { Q: number }) => /* wgsl */ `${header(s.Q, ["consts", "work", "out", "out2", "out3"])}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let hl = gid.x;
  if (hl >= p.hp) { return; }
  let h = p.h0 + hl;
  var sums = vec3<f32>(0.0);
  for (var bc = 0u; bc < p.B * p.nC; bc++) {
    let i0 = bc * p.hp + hl;
    sums += vec3<f32>(work[p.oPar + 3u * i0], work[p.oPar + 3u * i0 + 1u], work[p.oPar + 3u * i0 + 2u]);
  }
  out[h] += sums.x * -exp(consts[p.H + h]); // dA_log = dA·A
  out2[h] += sums.y;
  out3[h] += sums.z;
}
`,
});

// dCB summed over each group's heads in the piece (for dB's and dC's products): a thread per ((b, c, group), t, s),
// s <= t (nothing reads the rest)
const dcbSumKernel = defineKernel({
  name: "ssd_bc_dcbsum",
  example: { Q: 64 },
  wgsl: (s: { Q: number }) => /* wgsl */ `${header(s.Q, ["work"])}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let id = gid.y * nw.x * 64u + gid.x;
  if (id >= p.B * p.nC * ngroups() * Q * Q) { return; }
  let zg = id / (Q * Q);
  let t = (id % (Q * Q)) / Q;
  let s = id % Q;
  if (s > t) { return; }
  let zc = zOf(zg, ngroups());
  let heads = pieceHeads(p.g0 + zc.u);
  var sum = 0.0;
  for (var h = heads.x; h < heads.y; h++) { sum += work[p.oDCB + zi(zc, h - p.h0) * Q * Q + t * Q + s]; }
  work[p.oDS + zg * Q * Q + t * Q + s] = sum;
}
`,
});

// dB's or dC's parts added up into the output: a thread per ((b, c, group), t, n)
const partsKernel = defineKernel({
  name: "ssd_bc_parts",
  example: { Q: 64 },
  wgsl: (s: { Q: number }) => /* wgsl */ `${header(s.Q, ["work", "out"])}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let id = gid.y * nw.x * 64u + gid.x;
  let QN = Q * p.N;
  if (id >= p.B * p.nC * ngroups() * QN) { return; }
  let zg = id / QN;
  let t = (id % QN) / p.N;
  let n = id % p.N;
  let zc = zOf(zg, ngroups());
  if (t >= zc.Qc) { return; }
  var sum = 0.0;
  for (var part = 0u; part < p.S; part++) { sum += work[p.oKP + (zg * p.S + part) * QN + t * p.N + n]; }
  let o = (zc.r0 + t) * p.ldo + p.offo + (p.g0 + zc.u) * p.N + n;
  out[o] += sum;
}
`,
});

/** Runs the chunked backward for the heads h0 .. h0 + l.hp (all of them when one piece; C·Bᵀ is computed when
 *  h0 is 0 and kept for the pieces after). */
export function ssdBackward(gpu: Gpu, d: SsdBackwardDims, l: SsdBackwardLayout, h0: number, a: SsdBackwardArgs, work: Buf): void {
  const maxDim = gpu.limits.maxComputeWorkgroupsPerDimension;
  const { Q, nC, hp, Zh } = l;
  const hg = d.H / d.G, g0 = Math.floor(h0 / hg), ng = Math.floor((h0 + hp - 1) / hg) - g0 + 1;
  const shape = { Q };
  const params = (zCount: number, groupsX: number, tilesN: number, tilesMN: number, o: { ld: number; off: number } | null) => new Params()
    .u32(d.B).u32(d.L).u32(d.H).u32(d.P).u32(d.G).u32(d.N).u32(nC).u32(h0)
    .u32(hp).u32(hg).u32(g0).u32(zCount).u32(groupsX).u32(tilesN).u32(tilesMN).u32(Zh)
    .u32(a.x.ld).u32(a.x.off).u32(a.dt.ld).u32(a.dt.off).u32(a.Bm.ld).u32(a.Bm.off).u32(a.Cm.ld).u32(a.Cm.off)
    .u32(o?.ld ?? 0).u32(o?.off ?? 0).bool(d.hasState).f32(d.lo).f32(Math.min(d.hi, 3e38)).u32(l.nPT)
    .u32(l.oCB).u32(l.oDT).u32(l.oCS).u32(l.oHS).u32(l.oST).u32(l.oDCB).u32(l.oR).u32(l.oQY).u32(l.oRS).u32(l.oDL).u32(l.oPar)
    .u32(l.S).u32(l.oKP).u32(l.oG).u32(l.oDS).u32(l.oXS).u32(l.oGS);
  const buffers: Record<string, Buf> = {
    x: a.x.buf, dt: a.dt.buf, Bm: a.Bm.buf, Cm: a.Cm.buf, consts: a.consts, gy: a.gy, state0: a.state0 ?? gpu.dummy, work,
  };
  const bind = (names: string[], outs: Buf[]) => {
    const used = ORDER.filter((n) => names.includes(n));
    let o = 0;
    return used.map((n) => (n.startsWith("out") ? outs[o++]! : buffers[n]!));
  };
  // a product over zCount z's of at most M × N outputs
  const product = (name: string, zCount: number, M: number, N: number, out: { buf: Buf; ld: number; off: number } | null) => {
    const spec = PRODUCTS.find((s) => s.name === name)!;
    const tilesN = Math.ceil(N / BN), tilesMN = Math.ceil(M / BM) * tilesN;
    const [gx, gy] = grid(zCount * tilesMN, maxDim);
    check(gy <= maxDim, `ssdScanBackward: ${zCount * tilesMN} workgroups are more than a dispatch takes`);
    gpu.dispatch(gpu.kernel(productKernels.get(name)!, { Q, P: d.P }), bind(spec.bindings, out ? [out.buf] : []), params(zCount, gx, tilesN, tilesMN, out), [gx, gy]);
  };
  const perZ = (kernel: KernelDef<{ Q: number }>, names: string[], outs: Buf[], o: { ld: number; off: number } | null) => {
    const [gx, gy] = grid(Zh, maxDim);
    gpu.dispatch(gpu.kernel(kernel, shape), bind(names, outs), params(Zh, gx, 1, 1, o), [gx, gy]);
  };
  const perThread = (kernel: KernelDef<{ Q: number }>, names: string[], count: number) => {
    const [gx, gy] = grid(Math.ceil(count / 64), maxDim);
    gpu.dispatch(gpu.kernel(kernel, shape), bind(names, []), params(Zh, gx, 1, 1, null), [gx, gy]);
  };
  const PN = d.P * d.N;
  if (h0 === 0) product("ssd_bc_cb", d.B * nC * d.G, Q, Q, null);
  perZ(prepKernel, PREP_NAMES, [], null);
  product("ssd_bc_state", Zh, d.P, d.N, null);
  perThread(fpassKernel, ["state0", "work"], d.B * hp * PN);
  product("ssd_bc_local", Zh, d.P, d.N, null);
  perThread(rpassKernel, ["work"], d.B * hp * PN);
  product("ssd_bc_dcb", Zh, Q, Q, null);
  product("ssd_bc_dx", Zh, Q, d.P, a.dx);
  product("ssd_bc_q", Zh, Q, d.P, null);
  perThread(dcbSumKernel, ["work"], d.B * nC * ng * Q * Q);
  for (const [name, out] of [["ssd_bc_dc", a.dC], ["ssd_bc_db", a.dB]] as const) {
    product(name, d.B * nC * ng * l.S, Q, d.N, out);
    if (l.S > 1) {
      const [gx, gy] = grid(Math.ceil((d.B * nC * ng * Q * d.N) / 64), maxDim);
      gpu.dispatch(gpu.kernel(partsKernel, shape), bind(["work", "out"], [out.buf]), params(Zh, gx, 1, 1, out), [gx, gy]);
    }
  }
  perThread(vsumKernel, ["work"], Zh * Q);
  perZ(lastKernel, ["work"], [], null);
  perZ(rowsKernel, ["x", "dt", "consts", "gy", "work", "out"], [a.dDt.buf], a.dDt);
  gpu.dispatch(gpu.kernel(paramsKernel, shape), bind(["consts", "work", "out", "out2", "out3"], [a.dA_log, a.dD, a.dDtBias]),
    params(Zh, 1, 1, 1, null), [Math.ceil(hp / 64)]);
}
