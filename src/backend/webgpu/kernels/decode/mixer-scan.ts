/**
 * Fused decode, kernel 2 of 3 per layer: from kernel 1's partial x_proj to the gated scan output, one dispatch.
 * A workgroup owns CH channels of up to 8 rows (all B rows of the fused step; a block of rows of the batch step
 * where decodeBatchScanRows is 0 or the state size is not a multiple of 4, else ./batch-scan.ts runs there).
 * Decode kernels are short, so what costs is waiting on memory: every phase spreads its loads over all threads and
 * issues them in fixed-size batches rather than one after another.
 *  0. issue every load that needs nothing from another phase (the states, the channels' constants, the first
 *     dt_proj weights, u and z), so that they are in flight while steps 1 and 2 wait on theirs;
 *  1. sum kernel 1's G partials into dt | B | C of each row (workgroup memory);
 *  2. dt_proj for the CH channels, 8 threads a channel over R, then softplus(· + bias);
 *  3. one thread per (b, e): advance the N states in place (h = exp(delta·A)·h + delta·u·B) and write
 *     y = (C·h + D·u) · silu(z).
 * With `stride` (kernel 1's fixed-point variant) step 1 reads kernel 1's totals of x_proj (./fixed.ts) instead of
 * summing its G partials.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { type ParamType, type WgslParts, paramBlock, standaloneWgsl } from "../compose.ts";
import { type WeightStorage, weightBinding, weightReader } from "../weights.ts";
import { DECODE_MAX_B } from "./mixer-in.ts";
import { SOFTPLUS_WGSL } from "../wgsl-common.ts";
import { FIXED_READ_WGSL } from "./fixed.ts";
import { defineKernel } from "../../kernel-def.ts";

/** B · (R + 2N) values of x_proj that fit workgroup memory. */
export const DECODE_MAX_BJ = 2048;
const CH = 32; // channels per workgroup

/** Bytes of workgroup memory the kernel needs for state size N (the decode steps check it against the device). */
export function mixerScanBytes(N: number): number {
  return 4 * (Math.max(DECODE_MAX_BJ + 256 * DECODE_MAX_B, DECODE_MAX_B * CH * (N + 1)) + DECODE_MAX_BJ + DECODE_MAX_B * CH + CH * (N + 2));
}

/** The shape of one compiled kernel 2: RB rows a workgroup (min(B, 8)), SL states a thread. */
export interface MixerScanShape {
  N: number; J: number; RB: number; SL: number; ws: WeightStorage;
  /** one partial: the batch step's x_proj, summed already */
  summed: boolean;
  /** kernel 1's fixed-point totals, this many words apart (0: partials) */
  stride: number;
}

const MIXER_SCAN_PARAMS: [string, ParamType][] = [["B", "u32"], ["E", "u32"], ["R", "u32"], ["G", "u32"], ["oPack", "u32"], ["oXq", "u32"]];

/**
 * Kernel 2 as parts (../compose.ts): the phase function `mixerScan(t, gx, gy)` does the work of group (gx, gy).
 * `shared` (the one-dispatch layer, ./layer.ts): x_proj's totals and xz are read, y written, with atomics, so that
 * they pass between workgroups of one dispatch through the device's cache. `afterLoads` is WGSL run after the
 * loads that need nothing computed (the states, the channels' constants, the first dt_proj weights) and before
 * the first that needs kernel 1's results (there the one-dispatch layer waits for kernel 1's items).
 */
export function mixerScanParts(s: MixerScanShape, shared = false, afterLoads = ""): WgslParts {
  const { N, J, RB, SL, ws, summed, stride } = s;
  if (shared && !stride) throw new Error("mixerScanParts: the shared variant reads fixed-point totals");
  const RED0 = Math.max(256, RB * J);
  const consts: [string, string][] = [
    ["WG", "256u"],
    ["SCH", `${CH}u`], // channels per workgroup
    ["N", `${N}u`],
    ["MAXB", `${DECODE_MAX_B}u`],
    ["SRB", `${RB}u`], // rows per workgroup
    ["SBATCH", "8u"], // loads issued together
    ["J", `${J}u`], // x_proj outputs a row: dt | B | C
    ["KO", `${Math.ceil(Math.min(RB * J, DECODE_MAX_BJ) / 256)}u`], // outputs a thread sums in step 1 when they are many
    // one scratch array for what each phase alone uses: step 1's slices of the partial sums [RED0], step 2's
    // dt_proj partial sums [WG · SRB] from RED0, step 3's states [SRB, SCH, N + 1] (a padded row per channel)
    ["RED0", `${RED0}u`],
    ["NP", `${N + 1}u`],
    ["SL", `${SL}u`], // states a thread loads: ceil(rows · SCH · N / WG) for the dispatch's rows (at most 8)
    ["PKT", `${Math.ceil(CH * (N + 2) / 256)}u`], // the channels' constants a thread loads
  ];
  const bindings: [string, string][] = [
    stride ? ["xacc", shared ? "var<storage, read_write> xacc: array<atomic<u32>>" : "var<storage, read> xacc: array<vec4<u32>>"]
      : ["Q", "var<storage, read> Q: array<f32>"], // x_proj: kernel 1's totals (from vec4 oXq), or its partials [G, B, J]
    ["lp", "var<storage, read> lp: array<f32>"], // the layer's constants
    ["wDt", `var<storage, read> wDt: array<${weightBinding(ws)}>`], // [E, R]
    ["xz", `var<storage, read_write> xz: array<${shared ? "atomic<u32>" : "f32"}>`], // [B, 2E]
    ["ssm", "var<storage, read_write> ssm: array<f32>"], // [B, E, N] in/out
    ["y", `var<storage, read_write> y: array<${shared ? "atomic<u32>" : "f32"}>`], // [B, E] out
  ];
  const decls = /* wgsl */ `
var<workgroup> scr: array<f32, ${Math.max(RED0 + 256 * RB, RB * CH * (N + 1))}>;
var<workgroup> xd: array<f32, ${RB * J}>;       // x_proj output [B, J]: dt | B | C
var<workgroup> dts: array<f32, ${RB * CH}>;  // delta [B, SCH]
var<workgroup> pks: array<f32, ${CH * (N + 2)}>; // the channels' A·log2(e) [N], dt bias, D
${shared ? `fn xqLoad(i: u32) -> vec4<u32> {
  return vec4<u32>(atomicLoad(&xacc[4u * i]), atomicLoad(&xacc[4u * i + 1u]), atomicLoad(&xacc[4u * i + 2u]), 0u);
}
fn xzLoad(i: u32) -> f32 { return bitcast<f32>(atomicLoad(&xz[i])); }
fn yStore(i: u32, v: f32) { atomicStore(&y[i], bitcast<u32>(v)); }` : `${stride ? "fn xqLoad(i: u32) -> vec4<u32> { return xacc[i]; }" : ""}
fn xzLoad(i: u32) -> f32 { return xz[i]; }
fn yStore(i: u32, v: f32) { y[i] = v; }`}

${weightReader(ws, "wdt", "wDt")}
${stride ? FIXED_READ_WGSL : ""}

${SOFTPLUS_WGSL}

// state i of a group's [rows, its channels · N] in ssm [B, E, N], and in step 3's scr [MAXB, SCH, N + 1]
fn stateAt(i: u32, b0: u32, e0: u32, rowLen: u32) -> u32 { return ((b0 + i / rowLen) * p.E + e0) * N + i % rowLen; }
fn stagedAt(i: u32, rowLen: u32) -> u32 { return ((i / rowLen) * SCH + (i % rowLen) / N) * NP + i % N; }

`;
  const fn = /* wgsl */ `
// group (gx, gy): channels gx·SCH .., rows gy·MAXB ..
fn mixerScan(t: u32, gx: u32, gy: u32) {
  let b0 = gy * MAXB;
  let B = min(MAXB, p.B - b0); // this group's rows
  let BJ = B * J;
  let q0 = b0 * J;             // its rows' first x_proj value in a partial [B, J]
  let E = p.E;
  let e0 = gx * SCH;

  let nc = min(SCH, E - e0); // this group's channels
  let rowLen = nc * N;       // states of a row of this group
  let n3 = B * rowLen;
  let npk = nc * (N + 2u);   // the channels' constants

  // 0. Loads that need nothing from another phase go out first, all at once, so that they are in flight while
  //    steps 1 and 2 wait on their own (each phase behind a barrier would otherwise add a round trip to memory):
  //    this thread's share of the states (i = t + k·WG for k < SL: MAXB·SCH = WG, so SL ≤ N), of the channels'
  //    constants, step 2's first weights, and the u and z of its (row, channel) in step 3. All unconditional, at
  //    clamped indices, the excess unused; SL is a constant for the dispatch's rows (a guard on each load measured
  //    slower on the H200, 39.5 against 25.0 us at 64 rows of 130m, and so did one branch between 2 and N loads, 27.8).
  var st: array<f32, SL>;
  for (var k = 0u; k < SL; k++) { st[k] = ssm[stateAt(min(t + k * WG, n3 - 1u), b0, e0, rowLen)]; }
  var pv: array<f32, PKT>;
  for (var k = 0u; k < PKT; k++) { pv[k] = lp[p.oPack + e0 * (N + 2u) + min(t + k * WG, npk - 1u)]; }
  let c = t / 8u; // step 2: 8 threads a channel, each over every 8th of its R weights
  let rs = t % 8u;
  let e = e0 + c;
  var wv: array<f32, SBATCH>;
  for (var k = 0u; k < SBATCH; k++) { wv[k] = wdt(min(e, E - 1u) * p.R + min(rs + 8u * k, p.R - 1u)); }
${afterLoads}  let b3 = t / SCH; // step 3: a thread per (row, channel)
  let c3 = t % SCH;
  let xo = (b0 + min(b3, B - 1u)) * 2u * E + e0 + min(c3, nc - 1u);
  let uv = xzLoad(xo);
  let zv = xzLoad(xo + E);

  // 1. x_proj = the sum of G partials. Up to WG outputs (a row or a few): S slices of threads share an output,
  //    SBATCH loads at a time. More: a thread sums KO outputs, KO · SBATCH loads in flight at once, so that a block of
  //    8 rows takes ceil(G / SBATCH) round trips to memory rather than KO times as many (scan at 64 rows of 130m:
  //    32.9 → 25.0 us a dispatch on the H200, with step 0).
${stride ? `  let S = 1u; // kernel 1's totals (a non-finite partial poisoned them: NaN, as a float sum would be)
  let poisoned = xqLoad(p.oXq + p.B * J * ${stride / 4}u).x != 0u;
  for (var i = t; i < BJ; i += WG) { scr[i] = select(fromFixed(xqLoad(p.oXq + (q0 + i) * ${stride / 4}u)), fixedNan(), poisoned); }
` : summed ? `  let S = 1u; // one partial: the batch step's x_proj, summed already by matmul_reduce
  for (var i = t; i < BJ; i += WG) { scr[i] = Q[q0 + i]; }
` : `  let S = max(1u, WG / BJ);
  if (BJ <= WG) {
    let slice = t % S;
    for (var i = t / S; i < BJ; i += WG / S) {
      var s = 0.0;
      for (var g0 = slice; g0 < p.G; g0 += SBATCH * S) {
        // unconditional loads (the group clamped, the excess unused) so that all SBATCH are in flight together:
        // behind a bounds check each waits for the one before
        var v: array<f32, SBATCH>;
        for (var k = 0u; k < SBATCH; k++) { v[k] = Q[min(g0 + k * S, p.G - 1u) * p.B * J + q0 + i]; }
        for (var k = 0u; k < SBATCH; k++) { if (g0 + k * S < p.G) { s += v[k]; } }
      }
      scr[slice * BJ + i] = s;
    }
  } else {
    var acc1: array<f32, KO>;
    for (var g0 = 0u; g0 < p.G; g0 += SBATCH) {
      var v: array<f32, KO * SBATCH>; // loaded unconditionally (outputs and groups clamped, the excess unused)
      for (var k = 0u; k < KO; k++) {
        let i = min(t + k * WG, BJ - 1u);
        for (var g = 0u; g < SBATCH; g++) { v[k * SBATCH + g] = Q[min(g0 + g, p.G - 1u) * p.B * J + q0 + i]; }
      }
      for (var k = 0u; k < KO; k++) {
        for (var g = 0u; g < SBATCH; g++) { if (g0 + g < p.G) { acc1[k] += v[k * SBATCH + g]; } }
      }
    }
    for (var k = 0u; k < KO; k++) { if (t + k * WG < BJ) { scr[t + k * WG] = acc1[k]; } }
  }
`}  for (var k = 0u; k < PKT; k++) { if (t + k * WG < npk) { pks[t + k * WG] = pv[k]; } }
  workgroupBarrier();
  for (var i = t; i < BJ; i += WG) {
    var s = 0.0;
    for (var k = 0u; k < S; k++) { s += scr[k * BJ + i]; }
    xd[i] = s;
  }
  workgroupBarrier();

  // 2. dt_proj, the first SBATCH weights of each thread loaded in step 0
  var acc: array<f32, SRB>;
  if (e < E) {
    for (var r0 = rs; r0 < p.R; r0 += 8u * SBATCH) {
      if (r0 != rs) { // loaded unconditionally (clamped), all in flight together, as in step 1
        for (var k = 0u; k < SBATCH; k++) { wv[k] = wdt(e * p.R + min(r0 + 8u * k, p.R - 1u)); }
      }
      for (var k = 0u; k < SBATCH; k++) {
        let r = r0 + 8u * k;
        if (r < p.R) {
          // bounded by the constant SRB, so that acc stays in registers (a loop to B indexes it at run time)
          for (var b = 0u; b < SRB; b++) { if (b < B) { acc[b] = fma(wv[k], xd[b * J + r], acc[b]); } }
        }
      }
    }
  }
  for (var b = 0u; b < SRB; b++) { scr[RED0 + t * SRB + b] = acc[b]; }
  workgroupBarrier();
  if (rs == 0u && e < E) {
    for (var b = 0u; b < B; b++) {
      var s = pks[c * (N + 2u) + N]; // dt bias
      for (var k = 0u; k < 8u; k++) { s += scr[RED0 + (t + k) * SRB + b]; }
      dts[b * SCH + c] = softplus(s);
    }
  }
  workgroupBarrier();

  // 3. one step of the recurrence per (b, channel), N states in registers. The states of this group's rows and
  //    channels (N·SCH contiguous values a row) pass through workgroup memory, so that global loads and stores are
  //    side by side: a thread per channel reading its own N states directly would touch a cache line per thread
  //    per load. Step 0 loaded them; scr is free now.
  for (var k = 0u; k < SL; k++) {
    let i = t + k * WG;
    if (i < n3) { scr[stagedAt(i, rowLen)] = st[k]; }
  }
  workgroupBarrier();
  if (b3 < B && c3 < nc) {
    let pk = c3 * (N + 2u);
    let dt = dts[b3 * SCH + c3];
    let du = dt * uv;
    let s0 = (b3 * SCH + c3) * NP;
    var out = 0.0;
    for (var n = 0u; n < N; n++) {
      let hn = fma(exp2(dt * pks[pk + n]), scr[s0 + n], du * xd[b3 * J + p.R + n]);
      scr[s0 + n] = hn;
      out = fma(hn, xd[b3 * J + p.R + N + n], out);
    }
    out = fma(pks[pk + N + 1u], uv, out);
    yStore((b0 + b3) * E + e0 + c3, out * zv / (1.0 + exp(-zv)));
  }
  workgroupBarrier();
  for (var i = t; i < n3; i += WG) {
    ssm[stateAt(i, b0, e0, rowLen)] = scr[stagedAt(i, rowLen)];
  }
}
`;
  return { consts, params: MIXER_SCAN_PARAMS, bindings, decls, fn };
}

/** The standalone kernel's WGSL (exported for inspection). */
export const mixerScanWgsl = (s: MixerScanShape) => standaloneWgsl(mixerScanParts(s), "256", "mixerScan(lid.x, wg.x, wg.y)");

export interface MixerScanArgs {
  B: number; E: number; N: number; R: number; J: number; G: number;
  Q: Buf; lp: Buf; oPack: number; wDt: Buf; wsDt: WeightStorage; xz: Buf; ssm: Buf; y: Buf;
  // kernel 1's fixed-point variant: Q is then its totals of x_proj, this layer's region from word oX (a multiple of
  // 4), totals `stride` words apart
  acc?: { oX: number; stride: number };
}

/** The compiled shape of kernel 2 for these arguments. */
export function mixerScanShape(a: MixerScanArgs): MixerScanShape {
  const RB = Math.min(a.B, DECODE_MAX_B);
  // one partial (the batch step's x_proj summed by matmul_reduce): a pipeline without step 1's sums, whose
  // registers would otherwise be held for the branch not taken
  return { N: a.N, J: a.J, RB, SL: Math.ceil((RB * CH * a.N) / 256), ws: a.wsDt, summed: a.G === 1, stride: a.acc?.stride ?? 0 };
}

/** Kernel 2's parameter values, by name. */
export function mixerScanParams(a: MixerScanArgs): Record<string, number> {
  return { B: a.B, E: a.E, R: a.R, G: a.G, oPack: a.oPack, oXq: (a.acc?.oX ?? 0) / 4 };
}

/** Kernel 2's workgroups along x (channel groups). */
export const mixerScanGroups = (E: number) => Math.ceil(E / CH);

const mixerScanKernel = defineKernel({
  name: "decode_scan",
  wgsl: mixerScanWgsl,
  label: (s) => `decode_scan_${s.N}_${s.J}_r${s.RB}_${s.ws}${s.stride ? `_acc${s.stride}` : s.summed ? "_summed" : ""}`,
  example: { N: 16, J: 80, RB: 1, SL: 2, ws: "f32", summed: false, stride: 0 },
});

export function decodeMixerScan(gpu: Gpu, a: MixerScanArgs): void {
  const s = mixerScanShape(a);
  const k = gpu.kernel(mixerScanKernel, s);
  gpu.dispatch(k, [a.Q, a.lp, a.wDt, a.xz, a.ssm, a.y], paramBlock(MIXER_SCAN_PARAMS, mixerScanParams(a)),
    [mixerScanGroups(a.E), Math.ceil(a.B / DECODE_MAX_B)]);
}
