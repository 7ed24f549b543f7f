/**
 * Batch decode, from x_proj's partial sums to the gated scan output (for batches past the fused kernels' 8 rows):
 * one thread per (row, channel), RW rows × CH channels a workgroup (RW · CH = 256), one barrier.
 *  0. every load goes out at once: the thread's own N states (vec4s straight from ssm: the threads of a row read
 *     consecutive channels, so a warp's four loads cover whole cache lines), its u and z; and, shared by the
 *     workgroup, its channels' dt_proj rows and scan constants (contiguous blocks, read side by side) and its
 *     rows' x_proj (dt | B | C), each the sum of the G partials of ./batch-conv.ts, into workgroup memory;
 *  1. dt = softplus(dt_proj · x_proj's dt + bias), then the N states advanced in registers
 *     (h = exp(dt·A)·h + dt·u·B) and y = (C·h + D·u) · silu(z); the states stored back as they were loaded.
 * The fused step's ./mixer-scan.ts holds 8 rows of 32 channels a workgroup and stages the states through
 * workgroup memory: with 8 threads a channel for dt_proj and its sums between them, it takes 4 barriers and more
 * registers, which leave fewer workgroups an SM at 64 rows.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params } from "../../gpu.ts";
import { type WeightStorage, weightBinding, weightReader } from "../weights.ts";
import { SOFTPLUS_WGSL } from "../wgsl-common.ts";
import { defineKernel } from "../../kernel-def.ts";

/** Rows a workgroup may take (WebGpuInternalTuning.decodeBatchScanRows); channels are 256 / rows. */
export const BATCH_SCAN_ROW_CHOICES: readonly number[] = [2, 4, 8];

/** Bytes of workgroup memory the kernel needs, for rows RW a workgroup. */
export function batchScanBytes(RW: number, N: number, R: number, J: number): number {
  const CH = 256 / RW;
  return 4 * (CH * (R + 1) + CH * packStride(N) + RW * J);
}

// a channel's scan constants (A·log2 e [N], dt bias, D) in workgroup memory, the row padded to an odd length so
// that threads of consecutive channels reading one constant hit different banks
const packStride = (N: number) => (N + 2) | 1;

/** The kernel's WGSL (exported for inspection). N % 4 == 0 (the states are read as vec4s). */
export const batchScanWgsl = (RW: number, N: number, R: number, J: number, G: number, ws: WeightStorage) => {
  const CH = 256 / RW;
  return /* wgsl */ `
// bindings: 0 Q [G, B, J] x_proj partials | 1 lp (layer constants) | 2 Wdt [E, R] | 3 xz [B, 2E]
//           4 ssm [B, E, N] in/out | 5 y [B, E] out | 6 params
// grid: (ceil(E / CH), ceil(B / RW)): workgroup (x, y) owns channels x·CH .. and rows y·RW ..
const WG = 256u;
const RW = ${RW}u;  // rows a workgroup
const CH = ${CH}u;  // channels a workgroup
const N = ${N}u;
const N4 = ${N / 4}u;
const R = ${R}u;    // dt_proj rank
const J = ${J}u;    // x_proj outputs a row: dt | B | C
const G = ${G}u;    // x_proj partials (channel groups of the conv kernel)
const RP = R + 1u;  // a padded row of dt_proj in workgroup memory
const PS = ${packStride(N)}u;
const NP = N + 2u;  // a channel's constants in lp
const LW = ${Math.ceil((CH * R) / 256)}u;  // dt_proj weights a thread loads
const LP = ${Math.ceil((CH * (N + 2)) / 256)}u; // scan constants a thread loads
const LX = ${Math.ceil((RW * J) / 256)}u;  // x_proj outputs a thread sums

struct P { B: u32, E: u32, oPack: u32 }
@group(0) @binding(0) var<storage, read> Q: array<f32>;
@group(0) @binding(1) var<storage, read> lp: array<f32>;
@group(0) @binding(2) var<storage, read> wDt: array<${weightBinding(ws)}>;
@group(0) @binding(3) var<storage, read> xz: array<f32>;
@group(0) @binding(4) var<storage, read_write> ssm: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<uniform> p: P;

var<workgroup> wd: array<f32, CH * RP>; // dt_proj rows of the channels [CH, R + 1]
var<workgroup> pk: array<f32, CH * PS>; // their constants [CH, PS]
var<workgroup> xd: array<f32, RW * J>;  // x_proj of the rows [RW, J]

${weightReader(ws, "wdt", "wDt")}

${SOFTPLUS_WGSL}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let t = lid.x;
  let E = p.E;
  let e0 = wg.x * CH;
  let b0 = wg.y * RW;
  let nc = min(CH, E - e0);   // this group's channels
  let nr = min(RW, p.B - b0); // and rows
  let c = t % CH;             // this thread's channel and row (clamped: a thread past them loads valid data, stores nothing)
  let r = t / CH;
  let e = e0 + min(c, nc - 1u);
  let b = b0 + min(r, nr - 1u);

  // 0. every load, unconditional at clamped indices so that all are in flight together
  var st: array<vec4<f32>, N4>;
  for (var k = 0u; k < N4; k++) { st[k] = ssm[(b * E + e) * N4 + k]; }
  let uv = xz[b * 2u * E + e];
  let zv = xz[b * 2u * E + E + e];
  var wl: array<f32, LW>;
  for (var k = 0u; k < LW; k++) { wl[k] = wdt(e0 * R + min(t + k * WG, nc * R - 1u)); }
  var pl: array<f32, LP>;
  for (var k = 0u; k < LP; k++) { pl[k] = lp[p.oPack + e0 * NP + min(t + k * WG, nc * NP - 1u)]; }
  var xl: array<f32, LX>;
  for (var k = 0u; k < LX; k++) {
    let i = min(t + k * WG, nr * J - 1u); // the rows' outputs are contiguous in each partial
    var s = 0.0;
    for (var g = 0u; g < G; g++) { s += Q[(g * p.B + b0) * J + i]; }
    xl[k] = s;
  }
  for (var k = 0u; k < LW; k++) {
    let i = t + k * WG;
    if (i < nc * R) { wd[(i / R) * RP + i % R] = wl[k]; }
  }
  for (var k = 0u; k < LP; k++) {
    let i = t + k * WG;
    if (i < nc * NP) { pk[(i / NP) * PS + i % NP] = pl[k]; }
  }
  for (var k = 0u; k < LX; k++) {
    let i = t + k * WG;
    if (i < nr * J) { xd[i] = xl[k]; }
  }
  workgroupBarrier();

  // 1. dt, then one step of the recurrence with the states in registers
  if (r >= nr || c >= nc) { return; }
  var s = pk[c * PS + N]; // dt bias
  for (var q = 0u; q < R; q++) { s = fma(wd[c * RP + q], xd[r * J + q], s); }
  let dt = softplus(s);
  let du = dt * uv;
  var out = 0.0;
  for (var k = 0u; k < N4; k++) {
    var h = st[k];
    for (var j = 0u; j < 4u; j++) {
      let n = 4u * k + j;
      h[j] = fma(exp2(dt * pk[c * PS + n]), h[j], du * xd[r * J + R + n]);
      out = fma(h[j], xd[r * J + R + N + n], out);
    }
    ssm[(b * E + e) * N4 + k] = h;
  }
  out = fma(pk[c * PS + N + 1u], uv, out);
  y[b * E + e] = out * zv / (1.0 + exp(-zv));
}
`;
};

export interface BatchScanArgs {
  RW: number; // rows a workgroup (BATCH_SCAN_ROW_CHOICES)
  B: number; E: number; N: number; R: number; J: number; G: number;
  Q: Buf; lp: Buf; oPack: number; wDt: Buf; wsDt: WeightStorage; xz: Buf; ssm: Buf; y: Buf;
}

/** RW rows a workgroup, N states, dt rank R, J outputs of x_proj in G partials (dt_proj's weights ws). */
const batchScanKernel = defineKernel({
  name: "decode_batchscan",
  wgsl: (s: { RW: number; N: number; R: number; J: number; G: number; ws: WeightStorage }) => batchScanWgsl(s.RW, s.N, s.R, s.J, s.G, s.ws),
  label: (s) => `decode_batchscan_${s.RW}_${s.N}_${s.R}_${s.J}_${s.G}_${s.ws}`, example: { RW: 8, N: 16, R: 48, J: 80, G: 24, ws: "f32" },
});

// Q: [G, B, J], xz: [B, 2E], ssm: [B, E, N] updated in place -> y: [B, E]
export function decodeBatchScan(gpu: Gpu, a: BatchScanArgs): void {
  if (a.N % 4 !== 0) throw new Error(`decodeBatchScan: N ${a.N} is not a multiple of 4`);
  const k = gpu.kernel(batchScanKernel, { RW: a.RW, N: a.N, R: a.R, J: a.J, G: a.G, ws: a.wsDt });
  const p = new Params().u32(a.B).u32(a.E).u32(a.oPack);
  gpu.dispatch(k, [a.Q, a.lp, a.wDt, a.xz, a.ssm, a.y], p, [Math.ceil(a.E / (256 / a.RW)), Math.ceil(a.B / a.RW)]);
}
