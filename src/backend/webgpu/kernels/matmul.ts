/**
 * Tiled matrix product y = x · wᵀ + bias (PyTorch Linear layout, both operands contiguous along K).
 * x may be a column window of a wider matrix (row stride ldx, first column offx); w may be f32 or packed f16/bf16.
 * A workgroup of 16 × 16 threads computes a BM × BN tile of y; each thread TM × TN outputs kept in registers,
 * as 4-wide groups spread over the tile (rows (g·16 + ty)·4 + c) so that its reads of the shared tiles are vec4
 * loads that the threads of a warp share or spread over banks. K advances BK at a time through workgroup memory,
 * the next tile's global loads issued before the current tile's arithmetic. Where K, the row stride and the column
 * offset of x are multiples of 4, the tiles are loaded from global memory as vec4 (4 consecutive k of a row: a
 * quarter of the load instructions), else one value at a time.
 * When few tiles would leave most of the GPU idle along a long K (decode batches, x_proj and out_proj), K is split
 * over workgroups (grid z) that write partial products, summed with the bias by ./matmul-reduce.ts.
 */
import type { Gpu, Kernel } from "../gpu.ts";
import { Params } from "../gpu.ts";
import type { Buf } from "../gpu.ts";
import { type WeightStorage, weight4Binding, weight4Reader, weightBinding, weightReader } from "./weights.ts";

export interface TileConfig {
  BM: number; // rows of y per workgroup (16 · TM)
  BN: number; // columns of y per workgroup (16 · TN)
  TM: number; // rows per thread: 4 or 8
  TN: number; // columns per thread: 4 or 8
  BK?: number; // K per workgroup-memory tile: 16 (default) or 32
}

export const TILE_LARGE: TileConfig = { BM: 128, BN: 128, TM: 8, TN: 8, BK: 16 };
export const TILE_SMALL: TileConfig = { BM: 64, BN: 64, TM: 4, TN: 4, BK: 16 };

/** Global loads of a tile: one value at a time, or vec4 of 4 consecutive k (K, ldx and offx multiples of 4). */
const stageWgsl = (vec: boolean) => vec ? /* wgsl */ `
// stage tile k0 in registers: vec4 e = tid + 256 j is (row e / BK4, k 4 · (e % BK4)); BK4 threads read a row's tile
fn stageA(tid: u32, row0: u32, k0: u32, kEnd: u32, ra: ptr<function, array<vec4<f32>, LA4>>) {
  for (var j = 0u; j < LA4; j++) {
    let e = tid + 256u * j;
    let r = row0 + e / BK4;
    let k = k0 + 4u * (e % BK4);
    var v = vec4<f32>();
    if (r < p.T && k < kEnd) { v = x4[(r * p.ldx + p.offx + k) / 4u]; }
    (*ra)[j] = v;
  }
}
fn stageB(tid: u32, col0: u32, k0: u32, kEnd: u32, rb: ptr<function, array<vec4<f32>, LB4>>) {
  for (var j = 0u; j < LB4; j++) {
    let e = tid + 256u * j;
    let n = col0 + e / BK4;
    let k = k0 + 4u * (e % BK4);
    var v = vec4<f32>();
    if (n < p.N && k < kEnd) { v = weight4((n * p.K + k) / 4u); }
    (*rb)[j] = v;
  }
}
fn storeA(tid: u32, ra: ptr<function, array<vec4<f32>, LA4>>) {
  for (var j = 0u; j < LA4; j++) {
    let e = tid + 256u * j;
    let m = e / BK4;
    let k = 4u * (e % BK4);
    for (var c = 0u; c < 4u; c++) { As[(k + c) * SA + m / 4u][m % 4u] = (*ra)[j][c]; }
  }
}
fn storeB(tid: u32, rb: ptr<function, array<vec4<f32>, LB4>>) {
  for (var j = 0u; j < LB4; j++) {
    let e = tid + 256u * j;
    let n = e / BK4;
    let k = 4u * (e % BK4);
    for (var c = 0u; c < 4u; c++) { Bs[(k + c) * SB + n / 4u][n % 4u] = (*rb)[j][c]; }
  }
}
` : /* wgsl */ `
// stage tile k0 in registers: element e = tid + 256 j is (row e / BK, k e % BK); consecutive threads read
// consecutive k of one row
fn stageA(tid: u32, row0: u32, k0: u32, kEnd: u32, ra: ptr<function, array<f32, LA>>) {
  for (var j = 0u; j < LA; j++) {
    let e = tid + 256u * j;
    let r = row0 + e / BK;
    let k = k0 + e % BK;
    var v = 0.0;
    if (r < p.T && k < kEnd) { v = x[r * p.ldx + p.offx + k]; }
    (*ra)[j] = v;
  }
}
fn stageB(tid: u32, col0: u32, k0: u32, kEnd: u32, rb: ptr<function, array<f32, LB>>) {
  for (var j = 0u; j < LB; j++) {
    let e = tid + 256u * j;
    let n = col0 + e / BK;
    let k = k0 + e % BK;
    var v = 0.0;
    if (n < p.N && k < kEnd) { v = weight(n * p.K + k); }
    (*rb)[j] = v;
  }
}
fn storeA(tid: u32, ra: ptr<function, array<f32, LA>>) {
  for (var j = 0u; j < LA; j++) {
    let e = tid + 256u * j;
    let m = e / BK;
    As[(e % BK) * SA + m / 4u][m % 4u] = (*ra)[j];
  }
}
fn storeB(tid: u32, rb: ptr<function, array<f32, LB>>) {
  for (var j = 0u; j < LB; j++) {
    let e = tid + 256u * j;
    let n = e / BK;
    Bs[(e % BK) * SB + n / 4u][n % 4u] = (*rb)[j];
  }
}
`;

const wgsl = (c: TileConfig, ws: WeightStorage, vec: boolean, pad: number) => /* wgsl */ `
// bindings: 0 x [rows, ldx] f32 | 1 w [N, K] | 2 bias [N] | 3 y [splits, T, N] | 4 params
// grid: (N / BN, T / BM, splits); split z covers K columns [z·kLen, (z + 1)·kLen)
const BM = ${c.BM}u;
const BN = ${c.BN}u;
const TM = ${c.TM}u;
const TN = ${c.TN}u;
const BK = ${c.BK ?? 16}u;
const BK4 = BK / 4u;
const GM = TM / 4u;          // 4-row groups per thread
const GN = TN / 4u;          // 4-column groups per thread
const SA = BM / 4u + ${pad}u;     // row stride of As in vec4 (+1 against bank conflicts on the transposed stores,
const SB = BN / 4u + ${pad}u;     // where workgroup memory has room)
const LA = BM * BK / 256u;   // x values each thread stages per K tile
const LB = BN * BK / 256u;   // w values each thread stages per K tile
const LA4 = LA / 4u;         // the same in vec4
const LB4 = LB / 4u;

struct P { T: u32, K: u32, N: u32, ldx: u32, offx: u32, hasBias: u32, kLen: u32 }
@group(0) @binding(0) var<storage, read> ${vec ? "x4: array<vec4<f32>>" : "x: array<f32>"};
@group(0) @binding(1) var<storage, read> w: array<${vec ? weight4Binding(ws) : weightBinding(ws)}>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: P;

var<workgroup> As: array<vec4<f32>, BK * SA>; // As[k][m]: the x tile, transposed
var<workgroup> Bs: array<vec4<f32>, BK * SB>; // Bs[k][n]: the w tile, transposed

${vec ? weight4Reader(ws) : weightReader(ws)}
${stageWgsl(vec)}
@compute @workgroup_size(16, 16)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let tx = lid.x;
  let ty = lid.y;
  let tid = ty * 16u + tx;
  let row0 = wg.y * BM;
  let col0 = wg.x * BN;
  let kBegin = wg.z * p.kLen;
  let kEnd = min(p.K, kBegin + p.kLen);
  var acc: array<vec4<f32>, TM * GN>;
  var ra: array<${vec ? "vec4<f32>, LA4" : "f32, LA"}>;
  var rb: array<${vec ? "vec4<f32>, LB4" : "f32, LB"}>;
  let tiles = (kEnd - kBegin + BK - 1u) / BK;

  stageA(tid, row0, kBegin, kEnd, &ra);
  stageB(tid, col0, kBegin, kEnd, &rb);
  for (var t = 0u; t < tiles; t++) {
    storeA(tid, &ra);
    storeB(tid, &rb);
    workgroupBarrier();
    if (t + 1u < tiles) {
      let k0 = kBegin + (t + 1u) * BK;
      stageA(tid, row0, k0, kEnd, &ra);
      stageB(tid, col0, k0, kEnd, &rb);
    }
    for (var k = 0u; k < BK; k++) {
      var a: array<vec4<f32>, GM>;
      var b: array<vec4<f32>, GN>;
      for (var g = 0u; g < GM; g++) { a[g] = As[k * SA + g * 16u + ty]; }
      for (var h = 0u; h < GN; h++) { b[h] = Bs[k * SB + h * 16u + tx]; }
      for (var g = 0u; g < GM; g++) {
        for (var c = 0u; c < 4u; c++) {
          let av = a[g][c];
          for (var h = 0u; h < GN; h++) {
            acc[(g * 4u + c) * GN + h] = fma(vec4<f32>(av), b[h], acc[(g * 4u + c) * GN + h]);
          }
        }
      }
    }
    workgroupBarrier();
  }

  let out0 = wg.z * p.T * p.N;
  for (var g = 0u; g < GM; g++) {
    for (var c = 0u; c < 4u; c++) {
      let m = row0 + (g * 16u + ty) * 4u + c;
      if (m >= p.T) { continue; }
      for (var h = 0u; h < GN; h++) {
        let n4 = col0 + (h * 16u + tx) * 4u;
        let v = acc[(g * 4u + c) * GN + h];
        for (var j = 0u; j < 4u; j++) {
          let n = n4 + j;
          if (n < p.N) {
            var s = v[j];
            if (p.hasBias != 0u) { s += bias[n]; }
            y[out0 + m * p.N + n] = s;
          }
        }
      }
    }
  }
}
`;

export interface MatmulArgs {
  x: Buf; ldx: number; offx: number; rows: number; K: number;
  w: Buf; ws: WeightStorage; N: number;
  bias: Buf | null;
  y: Buf;
}

/** Workgroup memory of a tile config: the x and w tiles, rows padded by `pad` vec4. */
export function tileBytes(c: TileConfig, pad: number): number {
  return (c.BK ?? 16) * (c.BM / 4 + pad + c.BN / 4 + pad) * 16;
}

/** Whether the vec4 loads apply: K, the row stride and the first column of x multiples of 4. */
export function vec4Loads(a: { K: number; ldx: number; offx: number }): boolean {
  return a.K % 4 === 0 && a.ldx % 4 === 0 && a.offx % 4 === 0;
}

/** K splits that fill the GPU when the output has few tiles: at least 2 K tiles (32 columns) a split. */
export function kSplits(T: number, N: number, K: number, cfg: TileConfig): number {
  const tiles = Math.ceil(T / cfg.BM) * Math.ceil(N / cfg.BN);
  const kTiles = Math.ceil(K / 16);
  if (tiles >= 132 || kTiles < 4) return 1;
  return Math.max(1, Math.min(Math.ceil(264 / tiles), Math.floor(kTiles / 2)));
}

/** How K is cut for about `splits` parts: kLen columns each (a multiple of the K tile), `count` parts. */
export function splitPlan(K: number, splits: number): { kLen: number; count: number } {
  const kLen = Math.ceil(Math.ceil(K / splits) / 16) * 16;
  return { kLen, count: Math.ceil(K / kLen) };
}

// x: [T, K] window, w: [N, K], bias: [N] -> y: [T, N]; with splits > 1, y: [splits, T, N] partials without bias
export function matmulTiled(gpu: Gpu, a: MatmulArgs, cfg: TileConfig, plan = { kLen: Math.max(16, a.K), count: 1 }, allowVec4 = true): void {
  const vec = allowVec4 && vec4Loads(a);
  const pad = tileBytes(cfg, 1) <= gpu.limits.maxComputeWorkgroupStorageSize ? 1 : 0;
  const k: Kernel = gpu.kernel(`matmul_${cfg.BM}x${cfg.BN}x${cfg.BK ?? 16}p${pad}_${a.ws}${vec ? "_v4" : ""}`, () => wgsl(cfg, a.ws, vec, pad));
  const p = new Params().u32(a.rows).u32(a.K).u32(a.N).u32(a.ldx).u32(a.offx).bool(!!a.bias && plan.count === 1).u32(plan.kLen);
  gpu.dispatch(k, [a.x, a.w, a.bias ?? gpu.dummy, a.y], p, [Math.ceil(a.N / cfg.BN), Math.ceil(a.rows / cfg.BM), plan.count]);
}
