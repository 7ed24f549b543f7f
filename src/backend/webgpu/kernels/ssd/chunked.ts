/**
 * Mamba-2's SSM in chunks of Q positions (state space duality), three kernels as the CPU's ssdChunkedF32
 * (../../../cpu/ssd.ts), per head h with the B, C of its group g = h / (H / G) and cs_i = Σ_{k ≤ i} dt_k·A inside
 * the chunk:
 *  1. ssd_chunk_state, a workgroup per (chunk, head, batch row): the chunk's own state from zero
 *       S[p, n] = Σ_j exp(cs_last − cs_j)·dt_j·x_j[p]·B_j[n],   and its total decay cs_last
 *     (a product over tiles of TS positions, x and B of the tile in workgroup memory);
 *  2. ssd_state_pass, a thread per (b, h, p, n): over the chunks in order, h_{c+1} = exp(cs_last_c)·h_c + S_c;
 *     S_c is replaced in place by h_c, the state entering chunk c (h_0: the given state, or zeros); the final
 *     state is written back;
 *  3. ssd_chunk_scan, a workgroup per (chunk, head, batch row), a thread per (i, block of PT values of p):
 *       y[i, p] = Σ_{j ≤ i} (C_i·B_j)·exp(cs_i − cs_j)·dt_j·x_j[p] + exp(cs_i)·(h_c[p, :]·C_i) + D·x_i[p]
 *     (·silu(z) when gated), the first sum as a product over tiles of TJ positions j (C_i·B_j computed once a
 *     workgroup, x_j shared, in workgroup memory). dt and cs of the chunk sit in workgroup memory, computed by each
 *     workgroup.
 * Chunk states take B·⌈L/Q⌉·H·P·N floats.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params, grid } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type SsdScanKernelArgs, flagFieldsWgsl, scanInputsWgsl, softplusWgsl, windowFieldsWgsl, windowParams } from "./common.ts";

/** p values a thread of the chunk scan handles */
const PT = 8;

export interface ChunkShape {
  N: number;
  P: number;
  Q: number;
}

// the parameters every kernel reads, and the per-chunk dt / cs in workgroup memory
const common = (s: ChunkShape) => /* wgsl */ `
struct P {
  B: u32, L: u32, H: u32, P: u32, G: u32, nC: u32,
  ${windowFieldsWgsl}
  ${flagFieldsWgsl}
}
const N = ${s.N}u;
const Q = ${s.Q}u;
var<workgroup> dts: array<f32, ${s.Q}>;
var<workgroup> cs: array<f32, ${s.Q}>;

// dt and the inclusive cumulative dt·A of chunk c, head h, row b into workgroup memory; returns the chunk's length
fn chunkDt(b: u32, c: u32, h: u32, tid: u32) -> u32 {
  let t0 = c * Q;
  let q = min(Q, p.L - t0);
  if (tid < q) {
    let v = dt[(b * p.L + t0 + tid) * p.lddt + p.offdt + h] + consts[h];
    let sp = ${softplusWgsl("v")};
    dts[tid] = clamp(sp, p.lo, p.hi);
  }
  workgroupBarrier();
  if (tid == 0u) {
    let A = -exp(consts[p.H + h]);
    var acc = 0.0;
    for (var i = 0u; i < q; i++) { acc = acc + dts[i] * A; cs[i] = acc; }
  }
  workgroupBarrier();
  return q;
}
`;

// the entry of ssd_chunk_state and ssd_chunk_scan: a workgroup per (chunk c, head h, batch row b); q positions
const chunkMainWgsl = /* wgsl */ `@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let c = wg.x;
  let h = wg.y;
  let b = wg.z;
  let q = chunkDt(b, c, h, tid);`;

/** positions of a tile of the chunk-state product (x and B of those positions sit in workgroup memory) */
const TS = 8;

const stateWgsl = (s: ChunkShape) => {
  const perThread = Math.ceil((s.P * s.N) / 256); // state values [p, n] a thread owns
  return /* wgsl */ `
// bindings: 0 x | 1 dt | 2 Bm | 3 consts [3H] | 4 states [B, nC, H, P, N] | 5 totals [B, nC, H] | 6 params
// S = Σ_j w_j · x_j ⊗ B_j over tiles of TS positions (x_j, B_j of the tile in workgroup memory); each thread keeps
// the sums of its values of S in registers across the tiles.
${common(s)}
const TS = ${TS}u;
const PMAX = ${s.P}u;
const VPT = ${perThread}u;
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dt: array<f32>;
@group(0) @binding(2) var<storage, read> Bm: array<f32>;
@group(0) @binding(3) var<storage, read> consts: array<f32>;
@group(0) @binding(4) var<storage, read_write> states: array<f32>;
@group(0) @binding(5) var<storage, read_write> totals: array<f32>;
@group(0) @binding(6) var<uniform> p: P;
var<workgroup> w: array<f32, ${s.Q}>;
var<workgroup> xs: array<f32, ${TS * s.P}>; // [TS, P]
var<workgroup> bs: array<f32, ${TS * s.N}>; // [TS, N]

${chunkMainWgsl}
  let last = cs[q - 1u];
  if (tid < q) { w[tid] = exp(last - cs[tid]) * dts[tid]; }
  if (tid == 0u) { totals[(b * p.nC + c) * p.H + h] = last; }
  let g = h / (p.H / p.G);
  let row0 = b * p.L + c * Q;
  var acc: array<f32, ${perThread}>;
  for (var v = 0u; v < VPT; v++) { acc[v] = 0.0; }
  for (var j0 = 0u; j0 < q; j0 += TS) {
    let tj = min(TS, q - j0);
    workgroupBarrier(); // w is written (first tile); the last tile's reads are done
    for (var e = tid; e < TS * PMAX; e += 256u) {
      let jj = e / PMAX;
      if (jj < tj) { xs[e] = w[j0 + jj] * x[(row0 + j0 + jj) * p.ldx + p.offx + h * p.P + e % PMAX]; }
    }
    for (var e = tid; e < TS * N; e += 256u) {
      let jj = e / N;
      if (jj < tj) { bs[e] = Bm[(row0 + j0 + jj) * p.ldb + p.offb + g * N + e % N]; }
    }
    workgroupBarrier();
    for (var v = 0u; v < VPT; v++) {
      let k = tid + v * 256u;
      if (k < p.P * N) {
        let pp = k / N;
        let n = k % N;
        for (var jj = 0u; jj < tj; jj++) { acc[v] = fma(xs[jj * PMAX + pp], bs[jj * N + n], acc[v]); }
      }
    }
  }
  let base = ((b * p.nC + c) * p.H + h) * p.P * N;
  for (var v = 0u; v < VPT; v++) {
    let k = tid + v * 256u;
    if (k < p.P * N) { states[base + k] = acc[v]; }
  }
}
`;
};

const passWgsl = (s: ChunkShape) => /* wgsl */ `
// bindings: 0 totals [B, nC, H] | 1 states [B, nC, H, P, N] (chunk states in, entering states out) | 2 state [B, H, P, N] | 3 params
struct P { B: u32, H: u32, P: u32, nC: u32, hasState: u32, groupsX: u32 }
const N = ${s.N}u;
@group(0) @binding(0) var<storage, read> totals: array<f32>;
@group(0) @binding(1) var<storage, read_write> states: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<f32>;
@group(0) @binding(3) var<uniform> p: P;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 64u + gid.x;
  let PN = p.P * N;
  if (i >= p.B * p.H * PN) { return; }
  let k = i % PN;
  let h = (i / PN) % p.H;
  let b = i / (PN * p.H);
  var s = select(0.0, state[i], p.hasState != 0u);
  for (var c = 0u; c < p.nC; c++) {
    let o = ((b * p.nC + c) * p.H + h) * PN + k;
    let chunk = states[o];
    states[o] = s;
    s = exp(totals[(b * p.nC + c) * p.H + h]) * s + chunk;
  }
  if (p.hasState != 0u) { state[i] = s; }
}
`;

/** positions j of a tile of the within-chunk product (C·Bᵀ and x of those positions sit in workgroup memory) */
const TJ = 16;

const scanWgsl = (s: ChunkShape) => {
  const blocks = Math.ceil(s.P / PT);
  const perThread = Math.ceil((s.Q * blocks) / 256); // (i, block of p) units a thread owns
  return /* wgsl */ `
// bindings: 0 x | 1 dt | 2 Bm | 3 Cm | 4 z | 5 consts [3H] | 6 states (entering) | 7 y [B·L, H·P] | 8 params
// The within-chunk product Y = ((C·Bᵀ) ∘ decay ∘ dt) · X runs over tiles of TJ positions j: the workgroup puts
// C_i·B_j (every i of the chunk, the tile's j) and x_j in workgroup memory, then each thread adds the tile's share
// to its units (i, block of PT values of p), whose sums stay in registers across the tiles.
${common(s)}
const PT = ${PT}u;
const TJ = ${TJ}u;
const PMAX = ${s.P}u;
const BLOCKS = ${blocks}u;
const UPT = ${perThread}u;
${scanInputsWgsl}
@group(0) @binding(6) var<storage, read> states: array<f32>;
@group(0) @binding(7) var<storage, read_write> y: array<f32>;
@group(0) @binding(8) var<uniform> p: P;
var<workgroup> cb: array<f32, ${s.Q * TJ}>; // [Q, TJ]: C_i · B_j
var<workgroup> xt: array<f32, ${TJ * s.P}>; // [TJ, P]: x_j

${chunkMainWgsl}
  let g = h / (p.H / p.G);
  let row0 = b * p.L + c * Q;
  var acc: array<array<f32, ${PT}>, ${perThread}>;
  for (var u = 0u; u < UPT; u++) { for (var k = 0u; k < PT; k++) { acc[u][k] = 0.0; } }
  for (var j0 = 0u; j0 < q; j0 += TJ) {
    let tj = min(TJ, q - j0);
    // the tile: C_i · B_j for every i >= j0 of the chunk, and x_j
    for (var e = tid; e < Q * TJ; e += 256u) {
      let i = e / TJ;
      let jj = e % TJ;
      if (i < q && jj < tj && j0 + jj <= i) {
        let co = (row0 + i) * p.ldc + p.offc + g * N;
        let bo = (row0 + j0 + jj) * p.ldb + p.offb + g * N;
        var v = 0.0;
        for (var n = 0u; n < N; n++) { v = fma(Cm[co + n], Bm[bo + n], v); }
        cb[e] = v;
      }
    }
    for (var e = tid; e < TJ * PMAX; e += 256u) {
      let jj = e / PMAX;
      if (jj < tj) { xt[e] = x[(row0 + j0 + jj) * p.ldx + p.offx + h * p.P + e % PMAX]; }
    }
    workgroupBarrier();
    for (var u = 0u; u < UPT; u++) {
      let unit = tid + u * 256u;
      let i = unit / BLOCKS;
      let p0 = (unit % BLOCKS) * PT;
      if (i < q && i >= j0) {
        let jEnd = min(tj, i - j0 + 1u);
        for (var jj = 0u; jj < jEnd; jj++) {
          let j = j0 + jj;
          let wij = cb[i * TJ + jj] * exp(cs[i] - cs[j]) * dts[j];
          for (var k = 0u; k < PT; k++) {
            if (p0 + k < PMAX) { acc[u][k] = fma(wij, xt[jj * PMAX + p0 + k], acc[u][k]); }
          }
        }
      }
    }
    workgroupBarrier();
  }
  // from the state entering the chunk, the skip connection and the gate
  let hin = ((b * p.nC + c) * p.H + h) * p.P * N;
  let Dh = consts[2u * p.H + h];
  let HP = p.H * p.P;
  for (var u = 0u; u < UPT; u++) {
    let unit = tid + u * 256u;
    let i = unit / BLOCKS;
    let p0 = (unit % BLOCKS) * PT;
    if (i >= q) { continue; }
    let rowI = row0 + i;
    let co = rowI * p.ldc + p.offc + g * N;
    let into = exp(cs[i]);
    for (var k = 0u; k < PT; k++) {
      let pp = p0 + k;
      if (pp >= p.P) { break; }
      var off = 0.0;
      for (var n = 0u; n < N; n++) { off = fma(states[hin + pp * N + n], Cm[co + n], off); }
      let xv = x[rowI * p.ldx + p.offx + h * p.P + pp];
      var out = acc[u][k] + into * off + Dh * xv;
      if (p.hasZ != 0u) {
        let zv = z[rowI * p.ldz + p.offz + h * p.P + pp];
        out = out * zv / (1.0 + exp(-zv));
      }
      y[rowI * HP + h * p.P + pp] = out;
    }
  }
}
`;
};

const stateKernel = defineKernel({ name: "ssd_chunk_state", wgsl: stateWgsl, example: { N: 16, P: 8, Q: 64 } });
const passKernel = defineKernel({ name: "ssd_state_pass", wgsl: passWgsl, example: { N: 16, P: 8, Q: 64 } });
const scanKernel = defineKernel({ name: "ssd_chunk_scan", wgsl: scanWgsl, example: { N: 16, P: 8, Q: 64 } });

export interface SsdChunkedArgs extends SsdScanKernelArgs {
  Q: number; // the chunk length
}

/** Whether the chunk kernels' workgroup memory (dt, cs, tiles of C·Bᵀ, x, B) fits WebGPU's 16 KiB. */
export function chunkedFits(P: number, N: number, Q: number): boolean {
  const scan = 4 * (2 * Q + Q * TJ + TJ * P), state = 4 * (3 * Q + TS * P + TS * N);
  return Math.max(scan, state) <= 16384 && Q <= 256;
}

/** Floats of the chunk states the chunked scan needs (a scratch buffer of the caller's). */
export function chunkStateFloats(B: number, L: number, H: number, P: number, N: number, Q: number): number {
  return B * Math.ceil(L / Q) * H * P * N;
}

export function ssdScanChunked(gpu: Gpu, a: SsdChunkedArgs, states: Buf, totals: Buf): void {
  const shape: ChunkShape = { N: a.N, P: a.P, Q: a.Q };
  const nC = Math.ceil(a.L / a.Q);
  const p = windowParams(new Params().u32(a.B).u32(a.L).u32(a.H).u32(a.P).u32(a.G).u32(nC), a);
  gpu.dispatch(gpu.kernel(stateKernel, shape), [a.x, a.dt, a.Bm, a.consts, states, totals], p, [nC, a.H, a.B]);
  const [gx, gy] = grid(Math.ceil((a.B * a.H * a.P * a.N) / 64), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(gpu.kernel(passKernel, shape), [totals, states, a.state ?? gpu.dummyOut],
    new Params().u32(a.B).u32(a.H).u32(a.P).u32(nC).bool(!!a.state).u32(gx), [gx, gy]);
  gpu.dispatch(gpu.kernel(scanKernel, shape), [a.x, a.dt, a.Bm, a.Cm, a.z ?? gpu.dummy, a.consts, states, a.y], p, [nC, a.H, a.B]);
}
