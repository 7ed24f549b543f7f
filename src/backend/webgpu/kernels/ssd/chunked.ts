/**
 * Mamba-2's SSM in chunks of Q positions (state space duality), as the CPU's ssdChunkedF32 (../../../cpu/ssd.ts),
 * per head h with the B, C of its group g = h / (H / G), dt_i = clamp(softplus(dt_i + dtBias)) and
 * cs_i = Σ_{k ≤ i} dt_k·A inside the chunk. Four kernels, the three products of them register-tiled matrix products
 * (a workgroup of 256 threads computes a BM × BN = 128 × 64 tile, each thread 8 × 4 outputs kept in registers;
 * K advances BK at a time through workgroup memory, the next tile's global loads issued before the current tile's
 * arithmetic, as ../matmul.ts does):
 *  1. ssd_chunk_state, a workgroup per (head, chunk, batch row) and block of the state: dt and cs of the chunk (a
 *     log-step scan in workgroup memory, written for the other kernels), then the chunk's own state from zero
 *       Sᵀ[n, p] = Σ_j B_j[n] · exp(cs_last − cs_j)·dt_j·x_j[p]      ([N × Q] · [Q × P])
 *  2. ssd_chunk_cb, a workgroup per (group, chunk, batch row) and half of the chunk: C_i·B_j for j ≤ i, once per
 *     group rather than per head ([Q × N] · [N × Q]);
 *  3. ssd_state_pass, a thread per (b, h, n, p): over the chunks in order, h_{c+1} = exp(cs_last,c)·h_c + S_c;
 *     S_c is replaced in place by h_c, the state entering chunk c (h_0: the given state, or zeros); the final
 *     state is written back;
 *  4. ssd_chunk_scan, a workgroup per (head, chunk, batch row) and block of p: the output
 *       Y = diag(exp(cs)) · (C · h_c)  +  ((C·Bᵀ) ∘ exp(cs_i − cs_j)·dt_j ∘ [j ≤ i]) · X  +  D·X
 *     (·silu(z) when gated) as two products into the same registers: [Q × N]·[N × P], the rows scaled by exp(cs_i),
 *     then [Q × Q]·[Q × P], where a thread skips the tiles of j past its rows (causal).
 * The chunk length Q is the kernels' own (SSD_CHUNK): the result is the same for any chunk length (only the
 * rounding differs), so the model's chunk_size (256 in real checkpoints) does not set it. 128 balances the work
 * within a chunk (it grows with Q) against the chunk states' traffic (it shrinks with Q).
 * Scratch (the caller's): chunk states B·nC·H·N·P floats, dt and cs B·nC·H·2Q, C·Bᵀ B·nC·G·Q·Q.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params, grid } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type SsdScanKernelArgs, flagFieldsWgsl, softplusWgsl, windowFieldsWgsl, windowParams } from "./common.ts";

/** the chunk length of the kernels (see above) */
export const SSD_CHUNK = 128;
const Q = SSD_CHUNK;
/** a workgroup's tile of outputs: BM rows (16 rows of threads × 8) by BN columns (16 columns of threads × 4) */
const BM = 128, BN = 64, BK = 16, NT = 256;

export interface ChunkShape {
  N: number;
  P: number;
}

// the parameters of the chunk kernels, the sizes, and the staged tiles of the products
const header = (s: ChunkShape) => /* wgsl */ `
struct P {
  B: u32, L: u32, H: u32, G: u32, nC: u32,
  ${windowFieldsWgsl}
  ${flagFieldsWgsl}
}
const N = ${s.N}u;
const HP = ${s.P}u; // head dim P
const Q = ${Q}u;
const NT = ${NT}u;
const BM = ${BM}u;
const BN = ${BN}u;
const BK = ${BK}u;
// rows padded by one vec4: the transposed stores of threads with different k spread over banks
const SA = BM / 4u + 1u;
const SB = BN / 4u + 1u;
const LA = BM * BK / NT; // values of the A tile a thread stages
const LB = BN * BK / NT; // values of the B tile a thread stages
var<workgroup> As: array<vec4<f32>, ${BK * (BM / 4 + 1)}>; // As[k][m]
var<workgroup> Bs: array<vec4<f32>, ${BK * (BN / 4 + 1)}>; // Bs[k][n]
var<workgroup> dts: array<f32, ${Q}>;
var<workgroup> cs: array<f32, ${Q}>;
`;

/** One operand of a product: element (k, m) of its staged tile (k absolute, m in the tile) when `cond` holds, else 0.
 *  kMajor: consecutive m are consecutive in memory (threads take consecutive m of one k); otherwise consecutive k. */
interface Operand {
  tile: "As" | "Bs";
  reg: "ra" | "rb";
  rows: number; // BM or BN
  kMajor: boolean;
  cond: string;
  value: string;
}

/** WGSL: the operand's values of the K tile starting at kt into its registers (`k`, `m` name the element). */
function loadOperand(o: Operand, kt: string): string {
  const count = (o.rows * BK) / NT;
  const [k, m] = o.kMajor ? [`e / ${o.rows}u`, `e % ${o.rows}u`] : [`e % BK`, `e / BK`];
  return /* wgsl */ `
    for (var l = 0u; l < ${count}u; l++) {
      let e = tid + NT * l;
      let k = ${kt} + ${k};
      let m = ${m};
      var v = 0.0;
      if (${o.cond}) { v = ${o.value}; }
      ${o.reg}[l] = v;
    }`;
}

function storeOperand(o: Operand): string {
  const count = (o.rows * BK) / NT;
  const [k, m] = o.kMajor ? [`e / ${o.rows}u`, `e % ${o.rows}u`] : [`e % BK`, `e / BK`];
  const stride = o.rows / 4 + 1;
  return /* wgsl */ `
    for (var l = 0u; l < ${count}u; l++) {
      let e = tid + NT * l;
      let k = ${k};
      let m = ${m};
      ${o.tile}[k * ${stride}u + m / 4u][m % 4u] = ${o.reg}[l];
    }`;
}

/** WGSL: acc (rows ty·8 + r, columns tx·4 + 0..3 of the tile) += A[k0 .. k0 + kLen) · B over K tiles of BK; the
 *  tiles where `skip(k0)` holds for this thread are staged but not multiplied. */
function product(A: Operand, B: Operand, kLen: string, skip = "false"): string {
  return /* wgsl */ `
  {
    let tiles = (${kLen} + BK - 1u) / BK;
    ${loadOperand(A, "0u")}
    ${loadOperand(B, "0u")}
    for (var t = 0u; t < tiles; t++) {
      let k0 = t * BK;
      workgroupBarrier(); // the previous tile's products are done
      ${storeOperand(A)}
      ${storeOperand(B)}
      workgroupBarrier();
      if (t + 1u < tiles) {
        ${loadOperand(A, "k0 + BK")}
        ${loadOperand(B, "k0 + BK")}
      }
      if (!(${skip})) {
        for (var kk = 0u; kk < BK; kk++) {
          let a0 = As[kk * SA + ty * 2u];
          let a1 = As[kk * SA + ty * 2u + 1u];
          let bv = Bs[kk * SB + tx];
          acc[0] = fma(vec4<f32>(a0.x), bv, acc[0]);
          acc[1] = fma(vec4<f32>(a0.y), bv, acc[1]);
          acc[2] = fma(vec4<f32>(a0.z), bv, acc[2]);
          acc[3] = fma(vec4<f32>(a0.w), bv, acc[3]);
          acc[4] = fma(vec4<f32>(a1.x), bv, acc[4]);
          acc[5] = fma(vec4<f32>(a1.y), bv, acc[5]);
          acc[6] = fma(vec4<f32>(a1.z), bv, acc[6]);
          acc[7] = fma(vec4<f32>(a1.w), bv, acc[7]);
        }
      }
    }
  }`;
}

// the start of a product kernel: thread (ty, tx) of 16 × 16, its accumulators and staging registers
const threadStart = /* wgsl */ `
  let tx = tid % 16u;
  let ty = tid / 16u;
  var acc: array<vec4<f32>, 8>;
  for (var r = 0u; r < 8u; r++) { acc[r] = vec4<f32>(0.0); }
  var ra: array<f32, LA>;
  var rb: array<f32, LB>;`;

const stateWgsl = (s: ChunkShape) => {
  const nNB = Math.ceil(s.N / BM), nPB = Math.ceil(s.P / BN);
  return /* wgsl */ `
// bindings: 0 x | 1 dt | 2 Bm | 3 consts [3H] | 4 states [B, nC, H, N, P] | 5 dtcs [B, nC, H, 2, Q] | 6 params
// grid: (H · ${nNB} blocks of n · ${nPB} blocks of p, nC, B)
${header(s)}
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dt: array<f32>;
@group(0) @binding(2) var<storage, read> Bm: array<f32>;
@group(0) @binding(3) var<storage, read> consts: array<f32>;
@group(0) @binding(4) var<storage, read_write> states: array<f32>;
@group(0) @binding(5) var<storage, read_write> dtcs: array<f32>;
@group(0) @binding(6) var<uniform> p: P;
var<workgroup> w: array<f32, ${Q}>;

@compute @workgroup_size(${NT})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let h = wg.x / ${nNB * nPB}u;
  let nb = (wg.x / ${nPB}u) % ${nNB}u;
  let pb = wg.x % ${nPB}u;
  let c = wg.y;
  let b = wg.z;
  let g = h / (p.H / p.G);
  let t0 = c * Q;
  let q = min(Q, p.L - t0);
  let row0 = b * p.L + t0;
  // dt (zero past the chunk's end) and its cumulative dt·A: a log-step inclusive scan; past the end cs stays cs_last
  let A = -exp(consts[p.H + h]);
  if (tid < Q) {
    var d = 0.0;
    if (tid < q) {
      let v = dt[(row0 + tid) * p.lddt + p.offdt + h] + consts[h];
      d = clamp(${softplusWgsl("v")}, p.lo, p.hi);
    }
    dts[tid] = d;
    cs[tid] = d * A;
  }
  for (var s = 1u; s < Q; s = s * 2u) {
    workgroupBarrier();
    var add = 0.0;
    if (tid < Q && tid >= s) { add = cs[tid - s]; }
    workgroupBarrier();
    if (tid < Q) { cs[tid] = cs[tid] + add; }
  }
  workgroupBarrier();
  let dbase = ((b * p.nC + c) * p.H + h) * 2u * Q;
  if (tid < Q) {
    w[tid] = exp(cs[Q - 1u] - cs[tid]) * dts[tid];
    if (nb == 0u && pb == 0u) {
      dtcs[dbase + tid] = dts[tid];
      dtcs[dbase + Q + tid] = cs[tid];
    }
  }
  workgroupBarrier();
${threadStart}
  let n0 = nb * BM;
  let p0 = pb * BN;
  // Sᵀ[n, p] = Σ_j B_j[n] · w_j·x_j[p]
  ${product(
    { tile: "As", reg: "ra", rows: BM, kMajor: true, cond: "k < q && n0 + m < N", value: "Bm[(row0 + k) * p.ldb + p.offb + g * N + n0 + m]" },
    { tile: "Bs", reg: "rb", rows: BN, kMajor: true, cond: "k < q && p0 + m < HP", value: "w[k] * x[(row0 + k) * p.ldx + p.offx + h * HP + p0 + m]" },
    "q")}
  let sbase = ((b * p.nC + c) * p.H + h) * N * HP;
  for (var r = 0u; r < 8u; r++) {
    let n = n0 + ty * 8u + r;
    if (n >= N) { break; }
    for (var cc = 0u; cc < 4u; cc++) {
      let pp = p0 + tx * 4u + cc;
      if (pp < HP) { states[sbase + n * HP + pp] = acc[r][cc]; }
    }
  }
}
`;
};

const cbWgsl = (s: ChunkShape) => /* wgsl */ `
// bindings: 0 Bm | 1 Cm | 2 cb [B, nC, G, Q (j), Q (i)] | 3 params
// grid: (G · ${Q / BN} blocks of i, nC, B); rows j ≤ i only (the rest is never read)
${header(s)}
@group(0) @binding(0) var<storage, read> Bm: array<f32>;
@group(0) @binding(1) var<storage, read> Cm: array<f32>;
@group(0) @binding(2) var<storage, read_write> cb: array<f32>;
@group(0) @binding(3) var<uniform> p: P;

@compute @workgroup_size(${NT})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let g = wg.x / ${Q / BN}u;
  let i0 = (wg.x % ${Q / BN}u) * BN;
  let c = wg.y;
  let b = wg.z;
  let q = min(Q, p.L - c * Q);
  let row0 = b * p.L + c * Q;
${threadStart}
  // cb[j, i] = Σ_n B_j[n] · C_i[n]; rows j past the block's last i are not needed
  ${product(
    { tile: "As", reg: "ra", rows: BM, kMajor: false, cond: "m < q && k < N", value: "Bm[(row0 + m) * p.ldb + p.offb + g * N + k]" },
    { tile: "Bs", reg: "rb", rows: BN, kMajor: false, cond: "i0 + m < q && k < N", value: "Cm[(row0 + i0 + m) * p.ldc + p.offc + g * N + k]" },
    "N", "ty * 8u > i0 + BN - 1u")}
  let base = ((b * p.nC + c) * p.G + g) * Q * Q;
  for (var r = 0u; r < 8u; r++) {
    let j = ty * 8u + r;
    cb[base + j * Q + i0 + tx * 4u] = acc[r][0];
    cb[base + j * Q + i0 + tx * 4u + 1u] = acc[r][1];
    cb[base + j * Q + i0 + tx * 4u + 2u] = acc[r][2];
    cb[base + j * Q + i0 + tx * 4u + 3u] = acc[r][3];
  }
}
`;

const passWgsl = (s: ChunkShape) => /* wgsl */ `
// bindings: 0 dtcs [B, nC, H, 2, Q] | 1 states [B, nC, H, N, P] (chunk states in, entering states out)
//           2 state [B, H, P, N] | 3 params
struct P { B: u32, H: u32, nC: u32, hasState: u32, groupsX: u32 }
const N = ${s.N}u;
const HP = ${s.P}u;
const Q = ${Q}u;
@group(0) @binding(0) var<storage, read> dtcs: array<f32>;
@group(0) @binding(1) var<storage, read_write> states: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<f32>;
@group(0) @binding(3) var<uniform> p: P;

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
  let cstride = p.H * NP;
  let o0 = (b * p.nC * p.H + h) * NP + k;
  let d0 = (b * p.nC * p.H + h) * 2u * Q + 2u * Q - 1u; // cs at the chunk's end (cs stays cs_last past it)
  let dstride = p.H * 2u * Q;
  var c = 0u;
  // four chunks' loads issued before their dependent updates
  for (; c + 4u <= p.nC; c += 4u) {
    let o = o0 + c * cstride;
    let d = d0 + c * dstride;
    let s0 = states[o];
    let s1 = states[o + cstride];
    let s2 = states[o + 2u * cstride];
    let s3 = states[o + 3u * cstride];
    let a0 = exp(dtcs[d]);
    let a1 = exp(dtcs[d + dstride]);
    let a2 = exp(dtcs[d + 2u * dstride]);
    let a3 = exp(dtcs[d + 3u * dstride]);
    states[o] = s;
    s = fma(a0, s, s0);
    states[o + cstride] = s;
    s = fma(a1, s, s1);
    states[o + 2u * cstride] = s;
    s = fma(a2, s, s2);
    states[o + 3u * cstride] = s;
    s = fma(a3, s, s3);
  }
  for (; c < p.nC; c++) {
    let o = o0 + c * cstride;
    let chunk = states[o];
    states[o] = s;
    s = fma(exp(dtcs[d0 + c * dstride]), s, chunk);
  }
  if (p.hasState != 0u) { state[user] = s; }
}
`;

const scanWgsl = (s: ChunkShape) => {
  const nPB = Math.ceil(s.P / BN);
  return /* wgsl */ `
// bindings: 0 x | 1 Cm | 2 z | 3 consts [3H] | 4 states (entering) [B, nC, H, N, P] | 5 dtcs [B, nC, H, 2, Q]
//           6 cb [B, nC, G, Q, Q] | 7 y [B·L, H·P] | 8 params
// grid: (H · ${nPB} blocks of p, nC, B)
${header(s)}
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> Cm: array<f32>;
@group(0) @binding(2) var<storage, read> z: array<f32>;
@group(0) @binding(3) var<storage, read> consts: array<f32>;
@group(0) @binding(4) var<storage, read> states: array<f32>;
@group(0) @binding(5) var<storage, read> dtcs: array<f32>;
@group(0) @binding(6) var<storage, read> cb: array<f32>;
@group(0) @binding(7) var<storage, read_write> y: array<f32>;
@group(0) @binding(8) var<uniform> p: P;

@compute @workgroup_size(${NT})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let h = wg.x / ${nPB}u;
  let p0 = (wg.x % ${nPB}u) * BN;
  let c = wg.y;
  let b = wg.z;
  let g = h / (p.H / p.G);
  let q = min(Q, p.L - c * Q);
  let row0 = b * p.L + c * Q;
  let dbase = ((b * p.nC + c) * p.H + h) * 2u * Q;
  if (tid < Q) {
    dts[tid] = dtcs[dbase + tid];
    cs[tid] = dtcs[dbase + Q + tid];
  }
${threadStart}
  // from the entering state: acc[i, p] = Σ_n C_i[n] · h_c[n, p], then times exp(cs_i)
  let sbase = ((b * p.nC + c) * p.H + h) * N * HP;
  ${product(
    { tile: "As", reg: "ra", rows: BM, kMajor: false, cond: "m < q && k < N", value: "Cm[(row0 + m) * p.ldc + p.offc + g * N + k]" },
    { tile: "Bs", reg: "rb", rows: BN, kMajor: true, cond: "k < N && p0 + m < HP", value: "states[sbase + k * HP + p0 + m]" },
    "N")}
  for (var r = 0u; r < 8u; r++) { acc[r] = acc[r] * exp(cs[ty * 8u + r]); }
  // within the chunk: acc[i, p] += Σ_{j ≤ i} (C_i·B_j)·exp(cs_i − cs_j)·dt_j · x_j[p]
  let cbase = ((b * p.nC + c) * p.G + g) * Q * Q;
  ${product(
    { tile: "As", reg: "ra", rows: BM, kMajor: true, cond: "k <= m && m < q", value: "cb[cbase + k * Q + m] * exp(cs[m] - cs[k]) * dts[k]" },
    { tile: "Bs", reg: "rb", rows: BN, kMajor: true, cond: "k < q && p0 + m < HP", value: "x[(row0 + k) * p.ldx + p.offx + h * HP + p0 + m]" },
    "q", "k0 > ty * 8u + 7u")}
  let Dh = consts[2u * p.H + h];
  let E = p.H * HP;
  for (var r = 0u; r < 8u; r++) {
    let i = ty * 8u + r;
    if (i >= q) { break; }
    let row = row0 + i;
    for (var cc = 0u; cc < 4u; cc++) {
      let pp = p0 + tx * 4u + cc;
      if (pp >= HP) { break; }
      var out = acc[r][cc] + Dh * x[row * p.ldx + p.offx + h * HP + pp];
      if (p.hasZ != 0u) {
        let zv = z[row * p.ldz + p.offz + h * HP + pp];
        out = out * zv / (1.0 + exp(-zv));
      }
      y[row * E + h * HP + pp] = out;
    }
  }
}
`;
};

const example: ChunkShape = { N: 16, P: 8 };
const stateKernel = defineKernel({ name: "ssd_chunk_state", wgsl: stateWgsl, example });
const cbKernel = defineKernel({ name: "ssd_chunk_cb", wgsl: cbWgsl, example });
const passKernel = defineKernel({ name: "ssd_state_pass", wgsl: passWgsl, example });
const scanKernel = defineKernel({ name: "ssd_chunk_scan", wgsl: scanWgsl, example });

/** Bytes of the scratch buffers the chunked scan needs (the caller's): chunk states, dt and cs, C·Bᵀ. */
export function chunkScratch(B: number, L: number, H: number, P: number, G: number, N: number) {
  const nC = Math.ceil(L / Q);
  return { states: B * nC * H * N * P * 4, dtcs: B * nC * H * 2 * Q * 4, cb: B * nC * G * Q * Q * 4 };
}

export function ssdScanChunked(gpu: Gpu, a: SsdScanKernelArgs, states: Buf, dtcs: Buf, cb: Buf): void {
  const shape: ChunkShape = { N: a.N, P: a.P };
  const nC = Math.ceil(a.L / Q);
  const p = windowParams(new Params().u32(a.B).u32(a.L).u32(a.H).u32(a.G).u32(nC), a);
  const nNB = Math.ceil(a.N / BM), nPB = Math.ceil(a.P / BN);
  gpu.dispatch(gpu.kernel(stateKernel, shape), [a.x, a.dt, a.Bm, a.consts, states, dtcs], p, [a.H * nNB * nPB, nC, a.B]);
  gpu.dispatch(gpu.kernel(cbKernel, shape), [a.Bm, a.Cm, cb], p, [a.G * (Q / BN), nC, a.B]);
  const [gx, gy] = grid(Math.ceil((a.B * a.H * a.P * a.N) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(gpu.kernel(passKernel, shape), [dtcs, states, a.state ?? gpu.dummyOut],
    new Params().u32(a.B).u32(a.H).u32(nC).bool(!!a.state).u32(gx), [gx, gy]);
  gpu.dispatch(gpu.kernel(scanKernel, shape), [a.x, a.Cm, a.z ?? gpu.dummy, a.consts, states, dtcs, cb, a.y], p, [a.H * nPB, nC, a.B]);
}
