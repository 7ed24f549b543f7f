/**
 * The half-precision tiled matrix product (device feature shader-f16): y = x · wᵀ + bias with x f32 rounded to f16
 * as it is loaded, w f16 packed two halves per u32, products and sums in f32, y f32. Each product of two halves is
 * exact in f32 (11 + 11 significant bits), so the result rounds exactly as a tensor core's f16 inputs with f32
 * accumulation do; only the order of the sums may differ.
 * The layout follows ./matmul.ts: a workgroup of 16 × 16 threads computes a BM × BN tile of y (BM = 16·TM,
 * BN = 16·TN), each thread TM × TN outputs in registers as 4-wide groups spread over the tile; K advances BK at a
 * time through workgroup memory, the next tile's global loads issued before the current tile's arithmetic. The
 * staged tiles hold halves: half the workgroup memory and shared-memory traffic of the f32 kernel. Where the shapes
 * allow, global loads take 4 K columns at once (vec4Fits). A K split (grid z) writes partial products that
 * ./matmul-reduce.ts sums with the bias.
 * Also here: narrowToF16, the one-time conversion of a weight matrix (f32 or bf16) to packed f16.
 */
import type { Buf, Gpu } from "../gpu.ts";
import { Params } from "../gpu.ts";
import { MambaError } from "../../../errors.ts";
import { defineKernel } from "../kernel-def.ts";
import type { MatmulArgs } from "./matmul.ts";
import { type WeightStorage, weightBinding, weightReader } from "./weights.ts";

export interface HalfTileConfig {
  TM: number; // rows per thread: 4 or 8 (BM = 16·TM)
  TN: number; // columns per thread: 4 or 8 (BN = 16·TN)
  BK: number; // K columns per tile: 16 (the K split's parts are multiples of 16)
}

/** Many output tiles: 128 × 128, 8 × 8 a thread (as the f32 kernel's large tile), K tiles of 16 (8.4 KiB). */
export const HALF_TILE_LARGE: HalfTileConfig = { TM: 8, TN: 8, BK: 16 };
/** Few output tiles (or few rows): 64 × 64, 4 × 4 a thread. */
export const HALF_TILE_SMALL: HalfTileConfig = { TM: 4, TN: 4, BK: 16 };

const tileRows = (c: HalfTileConfig) => 16 * c.TM;
const tileCols = (c: HalfTileConfig) => 16 * c.TN;

/** Whether a call may load 4 K columns at once: K, the window's stride and offset multiples of 4 (so a group never
 *  straddles a row, and w's groups are whole pairs of words). */
export function halfVec4Fits(a: { K: number; ldx: number; offx: number }): boolean {
  return a.K % 4 === 0 && a.ldx % 4 === 0 && a.offx % 4 === 0;
}

/** WGSL that loads the K tile from column `k0` into the registers ra (x, rounded to f16) and rb (w): consecutive
 *  threads read consecutive K columns of one row; zeros past the rows, N and the part. */
const loadWgsl = (k0: string, v4: boolean) => v4 ? /* wgsl */ `
      for (var j = 0u; j < LA; j++) {
        let e = tid + NT * j;
        let r = row0 + e / BK4;
        let k = ${k0} + (e % BK4) * 4u;
        ra[j] = vec4<f16>(0.0h);
        if (r < p.T && k < kEnd) { ra[j] = vec4<f16>(x[(r * p.ldx + p.offx + k) / 4u]); }
      }
      for (var j = 0u; j < LB; j++) {
        let e = tid + NT * j;
        let n = col0 + e / BK4;
        let k = ${k0} + (e % BK4) * 4u;
        rb[j] = vec4<f16>(0.0h);
        if (n < p.N && k < kEnd) {
          let v = w[(n * p.K + k) / 4u];
          rb[j] = vec4<f16>(bitcast<vec2<f16>>(v.x), bitcast<vec2<f16>>(v.y));
        }
      }` : /* wgsl */ `
      for (var j = 0u; j < LA; j++) {
        let e = tid + NT * j;
        let r = row0 + e / BK;
        let k = ${k0} + e % BK;
        ra[j] = 0.0h;
        if (r < p.T && k < kEnd) { ra[j] = f16(x[r * p.ldx + p.offx + k]); }
      }
      for (var j = 0u; j < LB; j++) {
        let e = tid + NT * j;
        let n = col0 + e / BK;
        let k = ${k0} + e % BK;
        rb[j] = 0.0h;
        if (n < p.N && k < kEnd) {
          let i = n * p.K + k;
          rb[j] = bitcast<vec2<f16>>(w[i >> 1u])[i & 1u];
        }
      }`;

/** WGSL that stores the staged registers into the transposed shared tiles (As[k][m], Bs[k][n]). */
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

const wgsl = (c: HalfTileConfig, v4: boolean) => /* wgsl */ `
enable f16;
// bindings: 0 x [rows, ldx] f32 | 1 w [N, K] f16, two a u32 | 2 bias [N] | 3 y [splits, T, N] | 4 params
// grid: (N / BN, T / BM, splits); split z covers K columns [z·kLen, (z + 1)·kLen)
const TM = ${c.TM}u;
const TN = ${c.TN}u;
const BM = 16u * TM;
const BN = 16u * TN;
const BK = ${c.BK}u;
const BK4 = BK / 4u;
const NT = 256u;             // threads
const GM = TM / 4u;          // 4-row groups per thread
const GN = TN / 4u;          // 4-column groups per thread
// rows padded by one vec4: the transposed stores of threads with different k then spread over banks
const SA = BM / 4u + 1u;
const SB = BN / 4u + 1u;
const LA = BM * BK / NT${v4 ? " / 4u" : ""};  // x ${v4 ? "vec4s" : "values"} each thread stages per K tile
const LB = BN * BK / NT${v4 ? " / 4u" : ""};  // w ${v4 ? "vec4s" : "values"} each thread stages per K tile

struct P { T: u32, K: u32, N: u32, ldx: u32, offx: u32, hasBias: u32, kLen: u32 }
@group(0) @binding(0) var<storage, read> x: array<${v4 ? "vec4<f32>" : "f32"}>;
@group(0) @binding(1) var<storage, read> w: array<${v4 ? "vec2<u32>" : "u32"}>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: P;

var<workgroup> As: array<vec4<f16>, BK * SA>; // As[k][m]: the x tile, transposed, rounded to f16
var<workgroup> Bs: array<vec4<f16>, BK * SB>; // Bs[k][n]: the w tile, transposed

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
  var ra: array<${v4 ? "vec4<f16>" : "f16"}, LA>;
  var rb: array<${v4 ? "vec4<f16>" : "f16"}, LB>;
  let tiles = (kEnd - kBegin + BK - 1u) / BK;

  // stage tile 0 in registers
  {${loadWgsl("kBegin", v4)}
  }

  for (var t = 0u; t < tiles; t++) {
${stageWgsl(v4)}
    workgroupBarrier();
    if (t + 1u < tiles) {${loadWgsl("kBegin + (t + 1u) * BK", v4)}
    }
    for (var k = 0u; k < BK; k++) {
      // halves widened exactly; their products are exact in f32, summed in f32
      var a: array<vec4<f32>, GM>;
      var b: array<vec4<f32>, GN>;
      for (var g = 0u; g < GM; g++) { a[g] = vec4<f32>(As[k * SA + g * 16u + ty]); }
      for (var h = 0u; h < GN; h++) { b[h] = vec4<f32>(Bs[k * SB + h * 16u + tx]); }
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

/** What makes a half tile config one the kernel cannot run, or null. */
export function halfTileProblem(c: HalfTileConfig): string | null {
  if (![4, 8].includes(c.TM) || ![4, 8].includes(c.TN)) return `TM and TN must be 4 or 8, got ${c.TM} and ${c.TN}`;
  if (c.BK !== 16) return `BK must be 16, got ${c.BK}`;
  return null;
}

export const halfTileName = (c: HalfTileConfig) => `${tileRows(c)}x${tileCols(c)}_k${c.BK}`;

const matmulF16Kernel = defineKernel({
  name: "matmul_f16",
  wgsl: (s: { cfg: HalfTileConfig; v4: boolean }) => {
    const why = halfTileProblem(s.cfg);
    if (why) throw new MambaError(`matmul_f16: tile ${halfTileName(s.cfg)} cannot run: ${why}`);
    return wgsl(s.cfg, s.v4);
  },
  label: (s) => `matmul_f16_${halfTileName(s.cfg)}${s.v4 ? "_v4" : ""}`,
  example: { cfg: HALF_TILE_LARGE, v4: true },
  features: ["shader-f16"],
});

/** The output tile of a config: rows and columns. */
export function halfTile(c: HalfTileConfig): { BM: number; BN: number } {
  return { BM: tileRows(c), BN: tileCols(c) };
}

// x: [rows, K] window (f32, rounded to f16), w: [N, K] f16, bias: [N] -> y: [rows, N] f32; with plan.count > 1,
// y: [count, rows, N] partials without bias (matmulReduce sums them)
export function matmulF16(gpu: Gpu, a: MatmulArgs, cfg: HalfTileConfig, plan = { kLen: Math.max(16, a.K), count: 1 }): void {
  if (a.ws !== "f16") throw new MambaError(`matmulF16: the weights must be stored as f16, got ${a.ws}`);
  if (!gpu.half.f16) throw new MambaError("matmulF16: this device has no shader-f16");
  if (plan.count > 1 && plan.kLen % cfg.BK !== 0) throw new MambaError(`matmulF16: K parts of ${plan.kLen} columns are not whole tiles of ${cfg.BK}`);
  const v4 = halfVec4Fits(a);
  const k = gpu.kernel(matmulF16Kernel, { cfg, v4 });
  const { BM, BN } = halfTile(cfg);
  const p = new Params().u32(a.rows).u32(a.K).u32(a.N).u32(a.ldx).u32(a.offx).bool(!!a.bias && plan.count === 1).u32(plan.kLen);
  gpu.dispatch(k, [a.x, a.w, a.bias ?? gpu.dummy, a.y], p, [Math.ceil(a.N / BN), Math.ceil(a.rows / BM), plan.count]);
}

// ---- one-time conversion of weights to f16 ----

const narrowKernel = defineKernel({
  name: "narrow_f16",
  wgsl: (s: { ws: Exclude<WeightStorage, "f16" | "q8_0" | "q4_0"> }) => /* wgsl */ `
enable f16;
// src [n] (f32, or bf16 two a u32) -> out [ceil(n / 2)] u32: halves 2i (low) and 2i + 1 (high), rounded to f16
struct P { n: u32, groupsX: u32 }
@group(0) @binding(0) var<storage, read> w: array<${weightBinding(s.ws)}>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<uniform> p: P;

${weightReader(s.ws)}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (2u * i >= p.n) { return; }
  let lo = weight(2u * i);
  var hi = 0.0;
  if (2u * i + 1u < p.n) { hi = weight(2u * i + 1u); }
  out[i] = bitcast<u32>(vec2<f16>(f16(lo), f16(hi)));
}`,
  label: (s) => `narrow_f16_${s.ws}`,
  example: { ws: "f32" },
  features: ["shader-f16"],
});

/** Packs n weights (f32 or bf16) as f16, two a u32, into `out` (at least ceil(n / 2) words). Values beyond f16's
 *  range (|w| > 65504) become infinities: no model's weights come near it. */
export function narrowToF16(gpu: Gpu, src: Buf, ws: WeightStorage, n: number, out: Buf): void {
  if (ws !== "f32" && ws !== "bf16") throw new MambaError(`narrowToF16: cannot convert ${ws} weights`);
  if (!gpu.half.f16) throw new MambaError("narrowToF16: this device has no shader-f16");
  const words = Math.ceil(n / 2);
  const groups = Math.ceil(words / 256);
  const max = gpu.limits.maxComputeWorkgroupsPerDimension;
  const gy = Math.ceil(groups / max);
  const gx = Math.ceil(groups / gy);
  gpu.dispatch(gpu.kernel(narrowKernel, { ws }), [src, out], new Params().u32(n).u32(gx), [Math.max(1, gx), gy]);
}
