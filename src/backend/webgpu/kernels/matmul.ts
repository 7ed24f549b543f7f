/**
 * Tiled matrix product y = x · wᵀ + bias (PyTorch Linear layout, both operands contiguous along K).
 * x may be a column window of a wider matrix (row stride ldx, first column offx); w may be f32 or packed f16/bf16.
 * A workgroup of 16 × RT threads (RT = BM / TM: 16, or 8 for the 64-row tiles of 8 rows a thread) computes a BM × BN
 * tile of y; each thread TM × TN outputs kept in registers,
 * as 4-wide groups spread over the tile (rows (g·RT + ty)·4 + c) so that its reads of the shared tiles are vec4
 * loads that the threads of a warp share or spread over banks. K advances BK at a time through workgroup memory,
 * the next tile's global loads issued before the current tile's arithmetic. Where the shapes allow (vec4Fits) those
 * loads take 4 K columns at once and the outputs are stored 4 columns at once: a quarter of the load instructions
 * and of their bounds checks.
 * When few tiles would leave most of the GPU idle along a long K (decode batches, x_proj and out_proj), K is split
 * over workgroups (grid z) that write partial products, summed with the bias by ./matmul-reduce.ts.
 * The same template stages halves where a tile's `stage` is "f16" (device feature shader-f16; the kernel and its
 * tiles are in ./matmul-f16.ts): x rounded to f16 as it is staged, w stored f16, each widened exactly to f32 as it
 * is read back from the tile, so products and sums stay f32; half the workgroup memory and shared-memory traffic.
 */
import type { Gpu, Kernel } from "../gpu.ts";
import { Params } from "../gpu.ts";
import type { Buf } from "../gpu.ts";
import { type WeightStorage, weight4Binding, weight4Reader, weightBinding, weightReader } from "./weights.ts";
import { MambaError } from "../../../errors.ts";
import { defineKernel } from "../kernel-def.ts";

export interface TileConfig {
  BM: number; // rows of y per workgroup (16 · TM, or 8 · TM: a workgroup of 8 × 16 threads instead of 16 × 16)
  BN: number; // columns of y per workgroup (16 · TN)
  TM: number; // rows per thread: 8
  TN: number; // columns per thread: 4 or 8
  BK: number; // K columns per tile: 8 or 16
  vec4: boolean; // global loads of 4 K columns at once (and 4-column stores) where the call's shapes allow (vec4Fits)
}

// K tiles of 8 with one buffer: on the H200 35.6 – 37.6 TFLOP/s at the forward's shapes, against 30.0 – 31.6 with
// K tiles of 16, 28.8 – 30.3 with 32, and 28.0 – 29.5 (16) or 33.0 – 33.6 (8) with two buffers (BENCHMARKS.md)
export const TILE_LARGE: TileConfig = { BM: 128, BN: 128, TM: 8, TN: 8, BK: 8, vec4: true };
// 64-row tiles of 16 × 8 threads, 8 × 4 outputs each: on the H100 a decode batch's head (64 × 768 by 50280) took 164 –
// 167 us against 216 – 219 with 16 × 16 threads of 4 × 4, the batch step's in_proj (8 K parts) 28 – 29 against 31 – 34
export const TILE_SMALL: TileConfig = { BM: 64, BN: 64, TM: 8, TN: 4, BK: 8, vec4: true };
// at most 64 rows with an output wide enough for GROUP_TARGET tiles of 128 columns (the head of a decode batch):
// 128 columns a tile share each loaded value of x over twice the columns; on the H100 a batch of 64's head on 130m
// took 128 against 147 us with 64 × 64 tiles (BENCHMARKS.md)
export const TILE_WIDE: TileConfig = { ...TILE_SMALL, TN: 8, BN: 128 };
// the batch decode step's matmuls have few rows and short K splits: K tiles of 16 ran its step at 64 rows of 130m in
// 2118 against 2222 us with 8, in one process; 64 × 128 tiles were no faster (BENCHMARKS.md)
export const TILE_BATCH: TileConfig = { ...TILE_SMALL, BK: 16 };

/** What the shared tiles hold: f32 values, or halves (x rounded to f16 as it is staged, w stored f16). */
export type TileStage = "f32" | "f16";

/** The tile shapes each stage takes: rows of outputs a thread (TM), rows of threads (BM / TM), K tiles (BK). */
const STAGE_TILES: Record<TileStage, { TM: number[]; rows: number[]; BK: number[] }> = {
  f32: { TM: [8], rows: [8, 16], BK: [8, 16] },
  f16: { TM: [4, 8], rows: [16], BK: [16] },
};

const either = (v: number[]) => v.join(" or ");

/** What makes a tile config one the kernel cannot run, or null: 16 columns of threads by BM / TM rows (8 or 16; f16
 *  tiles: 16), 8 rows (f16 tiles: 4 or 8) and 4 or 8 columns of outputs a thread, K tiles of 8 or 16 (f16 tiles: 16),
 *  and the staged tiles a whole number of loads a thread. */
export function tileProblem(c: TileConfig, stage: TileStage = "f32"): string | null {
  const rows = c.BM / c.TM, threads = 16 * rows, ok = STAGE_TILES[stage];
  if (!ok.TM.includes(c.TM) || ![4, 8].includes(c.TN)) return `TM must be ${either(ok.TM)} and TN 4 or 8, got ${c.TM} and ${c.TN}`;
  if (!ok.rows.includes(rows)) return `BM must be ${either(ok.rows)} times TM, got ${c.BM} with TM ${c.TM}`;
  if (c.BN !== 16 * c.TN) return `BN must be 16 times TN, got ${c.BN} with TN ${c.TN}`;
  if (!ok.BK.includes(c.BK)) return `BK must be ${either(ok.BK)}, got ${c.BK}`;
  if (!wholeLoads(c, threads, 1)) return `a ${c.BM} x ${c.BN} tile with K tiles of ${c.BK} is not a whole number of loads for ${threads} threads`;
  return null;
}

/** Whether `threads` stage a BM × BK and a BN × BK tile in a whole number of loads each, `width` values a load. */
export function wholeLoads(c: { BM: number; BN: number; BK: number }, threads: number, width: number): boolean {
  return (c.BM * c.BK / width) % threads === 0 && (c.BN * c.BK / width) % threads === 0;
}

/** Workgroup memory of a tile config in bytes: two tiles of BK rows of vec4s (of f32, or of f16), each row padded by
 *  one (see the WGSL). */
export const tileBytes = (c: TileConfig, stage: TileStage = "f32") => (stage === "f16" ? 8 : 16) * c.BK * (c.BM / 4 + c.BN / 4 + 2);

/** A tile config's kernel name. */
export const tileName = (c: TileConfig) => `${c.BM}x${c.BN}${c.BM === 16 * c.TM ? "" : `t${c.TM}`}_k${c.BK}`;

/** Whether a call may take the kernel's vec4 path: K, N, the window's stride and offset multiples of 4 (so a 4-column
 *  group never straddles a row or a part's end: parts are multiples of 16), and each tile a whole number of vec4
 *  loads a thread. */
export function vec4Fits(c: TileConfig, a: { K: number; N: number; ldx: number; offx: number }): boolean {
  return c.vec4 && a.K % 4 === 0 && a.N % 4 === 0 && a.ldx % 4 === 0 && a.offx % 4 === 0 && wholeLoads(c, 16 * (c.BM / c.TM), 4);
}

/** The WGSL a stage's tiles and registers are written with: the element type, its zero, x's conversion (scalar and
 *  vec4) as it is staged, and the widening of a vec4 read back from a tile to f32 (all identities for f32). */
interface StageWgsl { type: string; zero: string; x: (e: string) => string; x4: (e: string) => string; widen: (e: string) => string }

const STAGE_WGSL: Record<TileStage, StageWgsl> = {
  f32: { type: "f32", zero: "0.0", x: (e) => e, x4: (e) => e, widen: (e) => e },
  f16: { type: "f16", zero: "0.0h", x: (e) => `f16(${e})`, x4: (e) => `vec4<f16>(${e})`, widen: (e) => `vec4<f32>(${e})` },
};

/** WGSL of `weight(i)` / `weight4(i)` returning f16 weights (packed two a u32) as halves, bits unchanged. */
const halfWeightReader = (v4: boolean) => v4
  ? "fn weight4(i: u32) -> vec4<f16> { let v = w[i]; return vec4<f16>(bitcast<vec2<f16>>(v.x), bitcast<vec2<f16>>(v.y)); }"
  : "fn weight(i: u32) -> f16 { return bitcast<vec2<f16>>(w[i >> 1u])[i & 1u]; }";

/** WGSL that stores the staged registers ra, rb into the shared tiles: scalars, or with v4 groups of 4 K columns
 *  of one row (or column of w), each written as 4 scalars of the transposed tile. */
const stageWgsl = (v4: boolean) => v4 ? /* wgsl */ `
    for (var j = 0u; j < LA; j++) {
      let e = tid + NT * j;
      let m = e / BK4;
      let k = (e % BK4) * 4u;
      for (var c = 0u; c < 4u; c++) { As[(k + c) * SA + m / 4u][m % 4u] = ra[j][c]; }
    }
    for (var j = 0u; j < LB; j++) {
      let e = tid + NT * j;
      let n = e / BK4;
      let k = (e % BK4) * 4u;
      for (var c = 0u; c < 4u; c++) { Bs[(k + c) * SB + n / 4u][n % 4u] = rb[j][c]; }
    }` : /* wgsl */ `
    for (var j = 0u; j < LA; j++) {
      let e = tid + NT * j;
      let m = e / BK;
      As[(e % BK) * SA + m / 4u][m % 4u] = ra[j];
    }
    for (var j = 0u; j < LB; j++) {
      let e = tid + NT * j;
      let n = e / BK;
      Bs[(e % BK) * SB + n / 4u][n % 4u] = rb[j];
    }`;

/** WGSL that loads the K tile starting at column `k0` (a u32 expression) into the registers ra, rb (of the stage's
 *  type `st`): consecutive threads read consecutive K columns of one row (with v4, 4 columns each), zeros past the
 *  rows, N and the part. */
const loadWgsl = (k0: string, v4: boolean, st: StageWgsl) => v4 ? /* wgsl */ `
      for (var j = 0u; j < LA; j++) {
        let e = tid + NT * j;
        let r = row0 + e / BK4;
        let k = ${k0} + (e % BK4) * 4u;
        ra[j] = vec4<${st.type}>(${st.zero});
        if (r < p.T && k < kEnd) { ra[j] = ${st.x4("x[(r * p.ldx + p.offx + k) / 4u]")}; }
      }
      for (var j = 0u; j < LB; j++) {
        let e = tid + NT * j;
        let n = col0 + e / BK4;
        let k = ${k0} + (e % BK4) * 4u;
        rb[j] = vec4<${st.type}>(${st.zero});
        if (n < p.N && k < kEnd) { rb[j] = weight4((n * p.K + k) / 4u); }
      }` : /* wgsl */ `
      for (var j = 0u; j < LA; j++) {
        let e = tid + NT * j;
        let r = row0 + e / BK;
        let k = ${k0} + e % BK;
        ra[j] = ${st.zero};
        if (r < p.T && k < kEnd) { ra[j] = ${st.x("x[r * p.ldx + p.offx + k]")}; }
      }
      for (var j = 0u; j < LB; j++) {
        let e = tid + NT * j;
        let n = col0 + e / BK;
        let k = ${k0} + e % BK;
        rb[j] = ${st.zero};
        if (n < p.N && k < kEnd) { rb[j] = weight(n * p.K + k); }
      }`;

/** WGSL that writes the thread's outputs: with v4 a 4-column group at once (N a multiple of 4). */
const storeWgsl = (v4: boolean) => v4 ? /* wgsl */ `
      for (var h = 0u; h < GN; h++) {
        let n4 = col0 + (h * 16u + tx) * 4u;
        if (n4 < p.N) {
          var s = acc[(g * 4u + c) * GN + h];
          if (p.hasBias != 0u) { s += vec4<f32>(bias[n4], bias[n4 + 1u], bias[n4 + 2u], bias[n4 + 3u]); }
          y[(out0 + m * p.N + n4) / 4u] = s;
        }
      }` : /* wgsl */ `
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
      }`;

function wgsl(c: TileConfig, ws: WeightStorage, v4: boolean, stage: TileStage): string {
  const st = STAGE_WGSL[stage], half = stage === "f16";
  return /* wgsl */ `${half ? "\nenable f16;" : ""}
// bindings: 0 x [rows, ldx] f32 | 1 w [N, K]${half ? " f16, two a u32" : ""} | 2 bias [N] | 3 y [splits, T, N] | 4 params
// grid: (N / BN, T / BM, splits); split z covers K columns [z·kLen, (z + 1)·kLen)
const BM = ${c.BM}u;
const BN = ${c.BN}u;
const TM = ${c.TM}u;
const TN = ${c.TN}u;
const BK = ${c.BK}u;
const BK4 = BK / 4u;         // 4-column groups of a K tile
const RT = BM / TM;          // rows of threads (16, or 8 for a half-height workgroup)
const NT = 16u * RT;         // threads
const GM = TM / 4u;          // 4-row groups per thread
const GN = TN / 4u;          // 4-column groups per thread
// rows padded by one vec4: the transposed stores of 16 threads with 16 different k then spread over banks
const SA = BM / 4u + 1u;     // row stride of As in vec4
const SB = BN / 4u + 1u;
const LA = BM * BK / NT${v4 ? " / 4u" : ""};  // x ${v4 ? "vec4s" : "values"} each thread stages per K tile
const LB = BN * BK / NT${v4 ? " / 4u" : ""};  // w ${v4 ? "vec4s" : "values"} each thread stages per K tile

struct P { T: u32, K: u32, N: u32, ldx: u32, offx: u32, hasBias: u32, kLen: u32 }
@group(0) @binding(0) var<storage, read> x: array<${v4 ? "vec4<f32>" : "f32"}>;
@group(0) @binding(1) var<storage, read> w: array<${v4 ? weight4Binding(ws) : weightBinding(ws)}>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<${v4 ? "vec4<f32>" : "f32"}>;
@group(0) @binding(4) var<uniform> p: P;

var<workgroup> As: array<vec4<${st.type}>, BK * SA>; // As[k][m]: the x tile, transposed${half ? ", rounded to f16" : ""}
var<workgroup> Bs: array<vec4<${st.type}>, BK * SB>; // Bs[k][n]: the w tile, transposed

${half ? halfWeightReader(v4) : v4 ? weight4Reader(ws) : weightReader(ws)}

@compute @workgroup_size(16, ${c.BM / c.TM})
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let tx = lid.x;
  let ty = lid.y;
  let tid = ty * 16u + tx;
  let row0 = wg.y * BM;
  let col0 = wg.x * BN;
  let kBegin = wg.z * p.kLen;
  let kEnd = min(p.K, kBegin + p.kLen);
  var acc: array<vec4<f32>, TM * GN>;
  var ra: array<${v4 ? `vec4<${st.type}>` : st.type}, LA>;
  var rb: array<${v4 ? `vec4<${st.type}>` : st.type}, LB>;
  let tiles = (kEnd - kBegin + BK - 1u) / BK;

  // stage tile 0 in registers
  {${loadWgsl("kBegin", v4, st)}
  }

  for (var t = 0u; t < tiles; t++) {
${stageWgsl(v4)}
    workgroupBarrier();
    if (t + 1u < tiles) {${loadWgsl("kBegin + (t + 1u) * BK", v4, st)}
    }
    for (var k = 0u; k < BK; k++) {${half ? "\n      // halves widened exactly; their products are exact in f32, summed in f32" : ""}
      var a: array<vec4<f32>, GM>;
      var b: array<vec4<f32>, GN>;
      for (var g = 0u; g < GM; g++) { a[g] = ${st.widen("As[k * SA + g * RT + ty]")}; }
      for (var h = 0u; h < GN; h++) { b[h] = ${st.widen("Bs[k * SB + h * 16u + tx]")}; }
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
      let m = row0 + (g * RT + ty) * 4u + c;
      if (m >= p.T) { continue; }${storeWgsl(v4)}
    }
  }
}
`;
}

export interface MatmulArgs {
  x: Buf; ldx: number; offx: number; rows: number; K: number;
  w: Buf; ws: WeightStorage; N: number;
  bias: Buf | null;
  y: Buf;
}

/** Workgroups that fill the GPU: two an SM of an H100 or H200. */
export const GROUP_TARGET = 264;

/** K splits that fill the GPU when the output has few tiles: about `target` workgroups in all, at least 2 K tiles
 *  (32 columns) a split. */
export function kSplits(T: number, N: number, K: number, cfg: TileConfig, target = GROUP_TARGET): number {
  const tiles = Math.ceil(T / cfg.BM) * Math.ceil(N / cfg.BN);
  const kTiles = Math.ceil(K / 16);
  if (tiles >= 132 || kTiles < 4) return 1;
  return Math.max(1, Math.min(Math.ceil(target / tiles), Math.floor(kTiles / 2)));
}

/** How K is cut for about `splits` parts: kLen columns each (a multiple of 16; a K tile may straddle two parts, its loads are bounded), `count` parts. */
export function splitPlan(K: number, splits: number): { kLen: number; count: number } {
  const kLen = Math.ceil(Math.ceil(K / splits) / 16) * 16;
  return { kLen, count: Math.ceil(K / kLen) };
}

/** The tiled product's WGSL for a tile config, weight storage, vec4 loads or not and the tiles' stage (f16 tiles take
 *  f16 weights); a config the template cannot run is a MambaError naming `kernel`. */
export function tiledMatmulWgsl(kernel: string, cfg: TileConfig, ws: WeightStorage, v4: boolean, stage: TileStage): string {
  const why = tileProblem(cfg, stage);
  if (why) throw new MambaError(`${kernel}: tile ${tileName(cfg)} cannot run: ${why}`);
  if (stage === "f16" && ws !== "f16") throw new MambaError(`${kernel}: f16 tiles take f16 weights, got ${ws}`);
  return wgsl(cfg, ws, v4, stage);
}

const matmulKernel = defineKernel({
  name: "matmul",
  wgsl: (s: { cfg: TileConfig; ws: WeightStorage; v4: boolean }) => tiledMatmulWgsl("matmul", s.cfg, s.ws, s.v4, "f32"),
  label: (s) => `matmul_${tileName(s.cfg)}${s.v4 ? "_v4" : ""}_${s.ws}`,
  example: { cfg: TILE_LARGE, ws: "f32", v4: true },
});

// x: [T, K] window, w: [N, K], bias: [N] -> y: [T, N]; with splits > 1, y: [splits, T, N] partials without bias
export function matmulTiled(gpu: Gpu, a: MatmulArgs, cfg: TileConfig, plan = { kLen: Math.max(16, a.K), count: 1 }): void {
  const v4 = vec4Fits(cfg, a);
  const k: Kernel = gpu.kernel(matmulKernel, { cfg, ws: a.ws, v4 });
  const p = new Params().u32(a.rows).u32(a.K).u32(a.N).u32(a.ldx).u32(a.offx).bool(!!a.bias && plan.count === 1).u32(plan.kLen);
  gpu.dispatch(k, [a.x, a.w, a.bias ?? gpu.dummy, a.y], p, [Math.ceil(a.N / cfg.BN), Math.ceil(a.rows / cfg.BM), plan.count]);
}
