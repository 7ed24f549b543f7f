/**
 * The two products of a Linear layer's backward as one tiled kernel, C (+)= A · B with C [M, N]:
 *   dx += dy · w     A = dy [T, Nout] (contiguous along the reduction), B = w [Nout, Kin]
 *   dw += dyᵀ · x    A = dyᵀ, read from dy [T, Nout] (contiguous along M), B = x [T, Kin]
 * B is always contiguous along N; A is read as A(m, k) = a[m · lda + offa + k] ("k-major") or
 * a[k · lda + offa + m] ("m-major"); both may be column windows, and so may C (dx into part of a wider gradient).
 * The tiling is the forward matmul's (16 × 16 threads, BM × BN tile, TM × TN outputs per thread as 4-wide groups,
 * K tiles of BK (8 or 16, by tile size) through workgroup memory, next tile's loads issued before the current tile's
 * arithmetic).
 * Where the strides, offsets and extents allow (bwdVec4Fits), every load takes 4 contiguous values at once (A along
 * its contiguous axis, B along N) and C is updated 4 columns at once: on the forward's kernel this was worth a fifth.
 * A long reduction with few output tiles (dw: K = T) is split over grid z: each split writes its partial product
 * to part[z, M, N] and reduce-groups.ts adds the splits in order (deterministic, no atomics); a single split adds
 * straight into C.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params } from "../../gpu.ts";
import { wholeLoads } from "../matmul.ts";
import { defineKernel } from "../../kernel-def.ts";

export interface BwdTile {
  BM: number; // rows of C per workgroup (16 · TM)
  BN: number; // columns of C per workgroup (16 · TN)
  TM: number; // 4 or 8
  TN: number; // 4 or 8
  BK: number; // reduction columns per shared tile: 8 or 16
}

// K tiles by tile size, from one micro-batch of a 130m training step (4 x 2048) on one H200, per-kernel GPU time:
// the 128 x 128 products took 141.9 ms with K tiles of 8 against 151.7 with 16; the 64 x 64 ones 33.6 ms with 8
// against 28.8 with 16 (BENCHMARKS.md, training).
export const BWD_TILE_LARGE: BwdTile = { BM: 128, BN: 128, TM: 8, TN: 8, BK: 8 };
export const BWD_TILE_SMALL: BwdTile = { BM: 64, BN: 64, TM: 4, TN: 4, BK: 16 };

const wgsl = (c: BwdTile, aKMajor: boolean, v4: boolean) => /* wgsl */ `
// bindings: 0 a | 1 b | 2 c (C window, or the split partials) in/out | 3 params
// grid: (ceil(N / BN), ceil(M / BM), splits)
const BM = ${c.BM}u;
const BN = ${c.BN}u;
const TM = ${c.TM}u;
const TN = ${c.TN}u;
const BK = ${c.BK}u;
const GM = TM / 4u;
const GN = TN / 4u;
const SA = BM / 4u + 1u;
const SB = BN / 4u + 1u;
const LA = BM * BK / 256u${v4 ? " / 4u" : ""};
const LB = BN * BK / 256u${v4 ? " / 4u" : ""};

struct P {
  M: u32, N: u32, K: u32,
  lda: u32, offa: u32, ldb: u32, offb: u32, ldc: u32, offc: u32,
  kPer: u32,       // reduction length per split
  zStride: u32,    // words between the partials of consecutive splits (0 with one split)
  accumulate: u32, // 1: C += product; 0: C = product (split partials)
}
@group(0) @binding(0) var<storage, read> a: array<${v4 ? "vec4<f32>" : "f32"}>;
@group(0) @binding(1) var<storage, read> b: array<${v4 ? "vec4<f32>" : "f32"}>;
@group(0) @binding(2) var<storage, read_write> c: array<${v4 ? "vec4<f32>" : "f32"}>;
@group(0) @binding(3) var<uniform> p: P;

var<workgroup> As: array<vec4<f32>, BK * SA>; // As[k][m]
var<workgroup> Bs: array<vec4<f32>, BK * SB>; // Bs[k][n]
${v4 ? v4Helpers(aKMajor) : scalarHelpers(aKMajor)}

@compute @workgroup_size(16, 16)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let tx = lid.x;
  let ty = lid.y;
  let tid = ty * 16u + tx;
  let row0 = wg.y * BM;
  let col0 = wg.x * BN;
  let kBegin = wg.z * p.kPer;
  let kEnd = min(p.K, kBegin + p.kPer);
  var acc: array<vec4<f32>, TM * GN>;
  var ra: array<${v4 ? "vec4<f32>" : "f32"}, LA>;
  var rb: array<${v4 ? "vec4<f32>" : "f32"}, LB>;
  let tiles = (kEnd - kBegin + BK - 1u) / BK;

  for (var j = 0u; j < LA; j++) { ra[j] = tileA(tid + 256u * j, row0, kBegin, kEnd); }
  for (var j = 0u; j < LB; j++) { rb[j] = tileB(tid + 256u * j, col0, kBegin, kEnd); }

  for (var t = 0u; t < tiles; t++) {
    for (var j = 0u; j < LA; j++) { stageA(tid + 256u * j, ra[j]); }
    for (var j = 0u; j < LB; j++) { stageB(tid + 256u * j, rb[j]); }
    workgroupBarrier();
    if (t + 1u < tiles) {
      let k0 = kBegin + (t + 1u) * BK;
      for (var j = 0u; j < LA; j++) { ra[j] = tileA(tid + 256u * j, row0, k0, kEnd); }
      for (var j = 0u; j < LB; j++) { rb[j] = tileB(tid + 256u * j, col0, k0, kEnd); }
    }
    for (var k = 0u; k < BK; k++) {
      var av: array<vec4<f32>, GM>;
      var bv: array<vec4<f32>, GN>;
      for (var g = 0u; g < GM; g++) { av[g] = As[k * SA + g * 16u + ty]; }
      for (var h = 0u; h < GN; h++) { bv[h] = Bs[k * SB + h * 16u + tx]; }
      for (var g = 0u; g < GM; g++) {
        for (var q = 0u; q < 4u; q++) {
          let s = av[g][q];
          for (var h = 0u; h < GN; h++) {
            acc[(g * 4u + q) * GN + h] = fma(vec4<f32>(s), bv[h], acc[(g * 4u + q) * GN + h]);
          }
        }
      }
    }
    workgroupBarrier();
  }

  let zo = wg.z * p.zStride;
  for (var g = 0u; g < GM; g++) {
    for (var q = 0u; q < 4u; q++) {
      let m = row0 + (g * 16u + ty) * 4u + q;
      if (m >= p.M) { continue; }
      for (var h = 0u; h < GN; h++) {
        let n4 = col0 + (h * 16u + tx) * 4u;
        let v = acc[(g * 4u + q) * GN + h];${v4 ? `
        if (n4 < p.N) {
          let o = (zo + m * p.ldc + p.offc + n4) / 4u;
          if (p.accumulate != 0u) { c[o] = c[o] + v; } else { c[o] = v; }
        }` : `
        for (var j = 0u; j < 4u; j++) {
          let n = n4 + j;
          if (n < p.N) {
            let o = zo + m * p.ldc + p.offc + n;
            if (p.accumulate != 0u) { c[o] = c[o] + v[j]; } else { c[o] = v[j]; }
          }
        }`}
      }
    }
  }
}
`;

/** One value a load: element e of a tile, consecutive threads walking the contiguous axis. */
const scalarHelpers = (aKMajor: boolean) => /* wgsl */ `
// element e of a BM × BK tile of A as (m, k)
fn aCoord(e: u32) -> vec2<u32> {
  ${aKMajor ? "return vec2<u32>(e / BK, e % BK);" : "return vec2<u32>(e % BM, e / BM);"}
}
fn tileA(e: u32, row0: u32, k0: u32, kEnd: u32) -> f32 {
  let mk = aCoord(e);
  let m = row0 + mk.x;
  let k = k0 + mk.y;
  if (m >= p.M || k >= kEnd) { return 0.0; }
  ${aKMajor ? "return a[m * p.lda + p.offa + k];" : "return a[k * p.lda + p.offa + m];"}
}
fn stageA(e: u32, v: f32) {
  let mk = aCoord(e);
  As[mk.y * SA + mk.x / 4u][mk.x % 4u] = v;
}
fn tileB(e: u32, col0: u32, k0: u32, kEnd: u32) -> f32 {
  let n = col0 + e % BN;
  let k = k0 + e / BN;
  if (n >= p.N || k >= kEnd) { return 0.0; }
  return b[k * p.ldb + p.offb + n];
}
fn stageB(e: u32, v: f32) {
  let n = e % BN;
  Bs[(e / BN) * SB + n / 4u][n % 4u] = v;
}`;

/** 4 values a load (bwdVec4Fits): A k-major as 4 columns of k of one row (stored transposed, as 4 values), A
 *  m-major and B as 4 columns of one row of k (stored whole). */
const v4Helpers = (aKMajor: boolean) => /* wgsl */ `
fn tileA(e: u32, row0: u32, k0: u32, kEnd: u32) -> vec4<f32> {${aKMajor ? `
  let m = row0 + e / (BK / 4u);
  let k = k0 + (e % (BK / 4u)) * 4u;
  if (m >= p.M || k >= kEnd) { return vec4<f32>(0.0); }
  return a[(m * p.lda + p.offa + k) / 4u];` : `
  let m = row0 + (e % (BM / 4u)) * 4u;
  let k = k0 + e / (BM / 4u);
  if (m >= p.M || k >= kEnd) { return vec4<f32>(0.0); }
  return a[(k * p.lda + p.offa + m) / 4u];`}
}
fn stageA(e: u32, v: vec4<f32>) {${aKMajor ? `
  let m = e / (BK / 4u);
  let k = (e % (BK / 4u)) * 4u;
  for (var q = 0u; q < 4u; q++) { As[(k + q) * SA + m / 4u][m % 4u] = v[q]; }` : `
  As[(e / (BM / 4u)) * SA + e % (BM / 4u)] = v;`}
}
fn tileB(e: u32, col0: u32, k0: u32, kEnd: u32) -> vec4<f32> {
  let n = col0 + (e % (BN / 4u)) * 4u;
  let k = k0 + e / (BN / 4u);
  if (n >= p.N || k >= kEnd) { return vec4<f32>(0.0); }
  return b[(k * p.ldb + p.offb + n) / 4u];
}
fn stageB(e: u32, v: vec4<f32>) {
  Bs[(e / (BN / 4u)) * SB + e % (BN / 4u)] = v;
}`;

/** Whether a product may take the vec4 path: every stride and offset, K (A k-major) or M (m-major) and N multiples
 *  of 4, so that no group of 4 straddles a row, a part's end (kPer is a multiple of 16) or an extent; and each tile a
 *  whole number of vec4 loads for the 256 threads. */
export function bwdVec4Fits(c: BwdTile, m: BwdMatmulArgs): boolean {
  const four = (...v: number[]) => v.every((x) => x % 4 === 0);
  return four(m.a.ld, m.a.off, m.b.ld, m.b.off, m.c.ld, m.c.off, m.N, m.aKMajor ? m.K : m.M) && wholeLoads(c, 256, 4);
}

/** One operand as the kernel reads it: buffer, row stride, first column. */
export interface Operand { buf: Buf; ld: number; off: number }

export interface BwdMatmulArgs {
  M: number; N: number; K: number;
  a: Operand; aKMajor: boolean;
  b: Operand;
  c: Operand; // C window, added into
}

/** How a product is split along its reduction: splits · kPer >= K, kPer a multiple of 16. */
export function splitK(M: number, N: number, K: number, tile: BwdTile): { splits: number; kPer: number } {
  const tiles = Math.ceil(M / tile.BM) * Math.ceil(N / tile.BN);
  let splits = 1;
  if (tiles < 256 && K >= 1024) splits = Math.min(Math.ceil(512 / tiles), Math.floor(K / 512), 64);
  const kPer = Math.ceil(K / splits / 16) * 16;
  return { splits: Math.ceil(K / kPer), kPer };
}

/** 128 × 128 tiles where they make at least 128 workgroups, else 64 × 64. */
export function pickTile(M: number, N: number): BwdTile {
  return Math.ceil(M / 128) * Math.ceil(N / 128) >= 128 ? BWD_TILE_LARGE : BWD_TILE_SMALL;
}

const bwdMatmulKernel = defineKernel({
  name: "bwd_matmul", wgsl: (s: { tile: BwdTile; aKMajor: boolean; v4: boolean }) => wgsl(s.tile, s.aKMajor, s.v4),
  label: (s) => `bwd_matmul_${s.tile.BM}x${s.tile.BN}_k${s.tile.BK}_${s.aKMajor ? "k" : "m"}${s.v4 ? "_v4" : ""}`,
  example: { tile: BWD_TILE_LARGE, aKMajor: true, v4: true },
});

/**
 * C += A · B. With split.splits > 1, `part` (splits · M · N floats) receives the partial products and the caller
 * adds them into C (reduce-groups.ts); otherwise part is unused.
 */
export function matmulBackwardTiled(gpu: Gpu, m: BwdMatmulArgs, tile: BwdTile, split: { splits: number; kPer: number }, part: Buf | null,
  vec4 = true): void {
  const v4 = vec4 && bwdVec4Fits(tile, m);
  const k = gpu.kernel(bwdMatmulKernel, { tile, aKMajor: m.aKMajor, v4 });
  const direct = split.splits === 1;
  const out = direct ? m.c : { buf: part!, ld: m.N, off: 0 };
  const p = new Params().u32(m.M).u32(m.N).u32(m.K).u32(m.a.ld).u32(m.a.off).u32(m.b.ld).u32(m.b.off)
    .u32(out.ld).u32(out.off).u32(split.kPer).u32(direct ? 0 : m.M * m.N).bool(direct);
  gpu.dispatch(k, [m.a.buf, m.b.buf, out.buf], p, [Math.ceil(m.N / tile.BN), Math.ceil(m.M / tile.BM), split.splits]);
}
