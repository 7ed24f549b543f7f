/**
 * y = x · wᵀ + bias on tensor cores, through WebGPU's subgroup matrices (Dawn's
 * `chromium-experimental-subgroup-matrix`, f16 × f16 → f32 at 16×16×16): f16 inputs, f32 accumulation, f32 output.
 * x is f32 (activations, a column window of a wider matrix as the f32 kernel takes), rounded to f16 as it is staged;
 * w is stored f16, two halves a u32 ([N, K], PyTorch Linear layout), staged as it is.
 *
 * By default a workgroup is one subgroup (32 invocations) and computes a BM × BN tile of y (64 × 64: 4 × 4 result
 * matrices of 16 × 16, so each 16 × 16 matrix it loads serves 4 products). A tile may instead name SG = [SGM, SGN]
 * subgroups a workgroup, each computing its (BM / SGM) × (BN / SGN) block of the tile from the same staged x and w,
 * so that a staged tile serves more products: Dawn checks that subgroup-matrix offsets are uniform over the whole
 * workgroup, while the hardware needs them uniform over each subgroup only, so such kernels turn that check off
 * (`diagnostic(off, chromium.subgroup_matrix_uniformity)`). Their subgroup index is the invocation index / 32, so
 * they run only where subgroups are 32 wide (matmulTensorCore checks the device). K advances BK columns at a time
 * through workgroup memory: the tile of x as [BM][BK] rows (the left matrices, row-major) and the tile of w as
 * [BN][BK] rows (wᵀ's columns: the right matrices, column-major), each row padded to LDS halves so that rows start
 * 16 bytes apart but in different banks. The next
 * tile's global loads are issued before the current tile's products. Where few tiles would leave the GPU idle, K is
 * split over workgroups (grid z) whose partial products ./matmul-reduce.ts sums.
 * The loads and stores use the builtins' template forms (majorness as a template parameter); the first forms
 * (majorness as an argument) compile with a deprecation warning a call in the Dawn of `webgpu` 0.6.2. The template
 * forms passed test/gpu and the f16 tests on an H100 (run 86).
 * The results go out through workgroup memory (one 16 × 16 block at a time), where the bias is added and rows and
 * columns past the output's edge are dropped.
 */
import type { Buf, Gpu } from "../gpu.ts";
import { Params } from "../gpu.ts";
import { defineKernel } from "../kernel-def.ts";
import type { MatmulArgs } from "./matmul.ts";
import { MambaError } from "../../../errors.ts";

export interface TensorCoreTile {
  BM: number; // rows of y a workgroup (a multiple of 16)
  BN: number; // columns of y a workgroup (a multiple of 16)
  BK: number; // K columns staged at a time (16 or 32)
  SG?: [number, number]; // subgroups a workgroup as rows × columns of blocks (default [1, 1]: one subgroup)
}

/** The tile of one subgroup a workgroup, for devices whose subgroups are not 32 wide. */
export const TC_TILE: TensorCoreTile = { BM: 64, BN: 64, BK: 16 };
/** The tile where subgroups are 32 wide: 2 × 2 subgroups of 64 × 64 blocks sharing 128 × 128 tiles staged 32 K
 *  columns at a time. On an H100 it took 1.24 ms for 1.4b's out_proj ([16384, 4096] × [2048, 4096]ᵀ, 222 TFLOP/s)
 *  where TC_TILE took 2.9 (scripts/gpu-tc.ts, runs 80 – 81). */
export const TC_TILE_SHARED: TensorCoreTile = { BM: 128, BN: 128, BK: 32, SG: [2, 2] };
/** Where workgroup memory holds it (38,912 bytes: the H100 offers 49,152), 2 × 4 subgroups on 128 × 256 tiles: the
 *  forward's products summed 4% faster on an H100 (run 81: 7.65 against 7.97 ms over six shapes; 206 against 188
 *  TFLOP/s at 1.4b's in_proj, 212 against 222 at its out_proj). */
export const TC_TILE_WIDE: TensorCoreTile = { BM: 128, BN: 256, BK: 32, SG: [2, 4] };

/** Whether a device runs tiles of several subgroups: its subgroups are 32 wide (their index is the invocation's
 *  / 32). */
export const sharedTilesRun = (gpu: Pick<TileDevice, "subgroupMinSize" | "subgroupMaxSize">) => gpu.subgroupMinSize === 32 && gpu.subgroupMaxSize === 32;

/** The default tile for a device: the widest its subgroups and workgroup memory run. */
export function defaultTensorCoreTile(gpu: TileDevice): TensorCoreTile {
  const fits = (t: TensorCoreTile) => tensorCoreTileBytes(t) <= gpu.limits.maxComputeWorkgroupStorageSize;
  if (sharedTilesRun(gpu)) {
    if (fits(TC_TILE_WIDE)) return TC_TILE_WIDE;
    if (fits(TC_TILE_SHARED)) return TC_TILE_SHARED;
  }
  return TC_TILE; // 7,168 bytes: within WebGPU's default 16 KiB
}

/** Whether the tensor-core kernel takes a product: K, the window's stride and offset multiples of 4 (x is read 4
 *  floats at once, w 4 halves at once), and rows enough to fill a tile's worth of work. */
export function tensorCoreFits(a: { rows: number; K: number; N: number; ldx?: number; offx?: number }): boolean {
  return a.rows >= 16 && a.K % 4 === 0 && a.N >= 16 && (a.ldx ?? a.K) % 4 === 0 && (a.offx ?? 0) % 4 === 0;
}

/** Bytes of workgroup memory a tile stages through: x's and w's tiles (rows padded by 8 halves) and a 16 × 16 block
 *  of results a subgroup. */
export function tensorCoreTileBytes(t: TensorCoreTile): number {
  return (t.BM + t.BN) * (t.BK + 8) * 2 + 1024 * (t.SG ? t.SG[0] * t.SG[1] : 1);
}

/** What makes a tile one the kernel cannot run, or null: whole 16 × 16 result matrices (at most 4 × 4 a subgroup),
 *  K staged 16, 32 or 64 at a time, the staged tiles a whole number of loads a thread, and (where given) within the
 *  device's workgroup memory. */
export function tensorCoreTileProblem(t: TensorCoreTile, workgroupBytes = Infinity): string | null {
  const [SGM, SGN] = t.SG ?? [1, 1];
  if (!Number.isInteger(SGM) || !Number.isInteger(SGN) || SGM < 1 || SGN < 1 || SGM * SGN > 8) return `SG must be 1 to 8 subgroups, got ${SGM} × ${SGN}`;
  if (![16, 32, 64].includes(t.BK)) return `BK must be 16, 32 or 64, got ${t.BK}`;
  if (t.BM % (16 * SGM) || t.BN % (16 * SGN) || t.BM < 16 || t.BN < 16) return `BM and BN must be multiples of 16 a subgroup, got ${t.BM} and ${t.BN} for ${SGM} × ${SGN} subgroups`;
  if ((t.BM / SGM / 16) * (t.BN / SGN / 16) > 16) return "more than 16 result matrices a subgroup";
  const NT = 32 * SGM * SGN;
  if ((t.BM * t.BK / 4) % NT || (t.BN * t.BK / 4) % NT) return `its staged tiles are not a whole number of loads for ${NT} threads`;
  if (tensorCoreTileBytes(t) > workgroupBytes) return `its ${tensorCoreTileBytes(t)} bytes of workgroup memory are over this device's ${workgroupBytes}`;
  return null;
}

type TileDevice = { subgroupMinSize: number; subgroupMaxSize: number; limits: GPUSupportedLimits };

/** What keeps a device from running a tile, or null: the tile's own checks within its workgroup memory, then, for
 *  several subgroups a workgroup, subgroups 32 wide. */
export function tensorCoreTileDeviceProblem(t: TensorCoreTile, gpu: TileDevice): string | null {
  const why = tensorCoreTileProblem(t, gpu.limits.maxComputeWorkgroupStorageSize);
  if (why) return why;
  const subgroups = t.SG ? t.SG[0] * t.SG[1] : 1;
  if (subgroups > 1 && !sharedTilesRun(gpu)) {
    return `a tile of ${subgroups} subgroups a workgroup needs subgroups 32 wide; this device's are ${gpu.subgroupMinSize || "?"} to ${gpu.subgroupMaxSize || "?"}`;
  }
  return null;
}

/** A tile's name, as the tuning knob tensorCoreTile spells it: BMxBNxBK, then xSGMxSGN where it has several
 *  subgroups. */
export function tensorCoreTileName(t: TensorCoreTile): string {
  return [t.BM, t.BN, t.BK, ...(t.SG && t.SG[0] * t.SG[1] > 1 ? t.SG : [])].join("x");
}

function wgsl(t: TensorCoreTile): string {
  const why = tensorCoreTileProblem(t);
  if (why) throw new MambaError(`matmul_tc: tile ${JSON.stringify(t)} cannot run: ${why}`);
  const { BM, BN, BK } = t;
  const [SGM, SGN] = t.SG ?? [1, 1];
  const NS = SGM * SGN; // subgroups a workgroup
  const NT = 32 * NS; // invocations a workgroup
  const RM = BM / SGM / 16, RN = BN / SGN / 16; // result matrices of a subgroup: RM × RN
  const LDS = BK + 8; // halves a staged row
  const K4 = BK / 4; // 4-wide groups a staged row
  const LX = (BM * K4) / NT, LW = (BN * K4) / NT; // loads of x (vec4) and of w (4 halves) a thread per tile
  // a subgroup's first row and column in the tile, in workgroup memory's rows (constants with one subgroup)
  const sr = SGM > 1 ? `(sg / ${SGN}u) * ${BM / SGM}u` : "0u";
  const sc = SGN > 1 ? `(sg % ${SGN}u) * ${BN / SGN}u` : "0u";
  const acc = (i: number, j: number) => `acc${i}_${j}`;
  const decl: string[] = [], mma: string[] = [], out: string[] = [];
  for (let i = 0; i < RM; i++) {
    for (let j = 0; j < RN; j++) decl.push(`var ${acc(i, j)} = subgroup_matrix_result<f32, 16, 16>();`);
  }
  for (let i = 0; i < RM; i++) mma.push(`let a${i} = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&As, aBase + ${i * 16 * LDS}u + kk, LDS);`);
  for (let j = 0; j < RN; j++) {
    mma.push(`let b${j} = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&Bs, bBase + ${j * 16 * LDS}u + kk, LDS);`);
    for (let i = 0; i < RM; i++) mma.push(`${acc(i, j)} = subgroupMatrixMultiplyAccumulate(a${i}, b${j}, ${acc(i, j)});`);
  }
  for (let i = 0; i < RM; i++) {
    for (let j = 0; j < RN; j++) {
      // (one subgroup: constant offsets, which Dawn's uniformity check, on for it, accepts)
      out.push(`subgroupMatrixStore<row_major>(&Cs, ${NS > 1 ? "sg * 256u" : "0u"}, ${acc(i, j)}, 16u);
  workgroupBarrier();
  emit(${NS > 1 ? "sg" : "0u"}, lane, row0 + ${sr} + ${i * 16}u, col0 + ${sc} + ${j * 16}u, yOff);
  workgroupBarrier();`);
    }
  }
  const loads = (k4: string, cond: string) => /* wgsl */ `
    for (var j = 0u; j < ${LX}u; j++) {
      let e = tid + ${NT}u * j;
      let m = e / K4;
      let k4 = ${k4} + e % K4;
      let gr = row0 + m;
      ra[j] = vec4<f32>(0.0);
      if (gr < p.T && k4 < K4end) { ra[j] = x[gr * ldx4 + p.offx / 4u + k4]; }
    }
    for (var j = 0u; j < ${LW}u; j++) {
      let e = tid + ${NT}u * j;
      let n = e / K4;
      let k4 = ${k4} + e % K4;
      let gn = col0 + n;
      rb[j] = vec2<u32>(0u);
      if (gn < p.N && k4 < K4end) { rb[j] = w[gn * K4all + k4]; }
    }${cond}`;
  return /* wgsl */ `
enable f16;
enable chromium_experimental_subgroup_matrix;
${NS > 1 ? "diagnostic(off, chromium.subgroup_matrix_uniformity);\n" : ""}
struct P { T: u32, K: u32, N: u32, ldx: u32, offx: u32, hasBias: u32, kLen: u32 }
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> w: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: P;

const LDS = ${LDS}u;
const K4 = ${K4}u;
var<workgroup> As: array<f16, ${BM * LDS}>;
var<workgroup> Bs: array<f16, ${BN * LDS}>;
var<workgroup> Cs: array<f32, ${256 * NS}>;

// one 16 × 16 result block from Cs to y at (r0, c0), with the bias, inside the output only
fn emit(sg: u32, lane: u32, r0: u32, c0: u32, yOff: u32) {
  for (var e = lane; e < 256u; e += 32u) {
    let r = r0 + e / 16u;
    let c = c0 + e % 16u;
    if (r < p.T && c < p.N) {
      var v = Cs[sg * 256u + e];
      if (p.hasBias != 0u) { v += bias[c]; }
      y[yOff + r * p.N + c] = v;
    }
  }
}

@compute @workgroup_size(${NT})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  // this invocation's subgroup, its lane, and where its block's rows and columns start in the staged tiles
  let sg = tid / 32u;
  let lane = tid % 32u;
  let aBase = (${sr}) * LDS;
  let bBase = (${sc}) * LDS;
  let row0 = wg.y * ${BM}u;
  let col0 = wg.x * ${BN}u;
  ${decl.join("\n  ")}
  var ra: array<vec4<f32>, ${LX}>;
  var rb: array<vec2<u32>, ${LW}>;
  let ldx4 = p.ldx / 4u;
  let K4all = p.K / 4u;
  // this workgroup's part of K (grid z): columns kBeg .. kEnd; parts after the first write their own slice of y
  let kBeg = wg.z * p.kLen;
  let kEnd = min(p.K, kBeg + p.kLen);
  let K4end = kEnd / 4u;
  let yOff = wg.z * p.T * p.N;
  // the first tile's loads
  {${loads("kBeg / 4u", "")}
  }
  for (var k0 = kBeg; k0 < kEnd; k0 += ${BK}u) {
    workgroupBarrier();
    for (var j = 0u; j < ${LX}u; j++) {
      let e = tid + ${NT}u * j;
      let o = (e / K4) * LDS + (e % K4) * 4u;
      let a = vec4<f16>(ra[j]);
      As[o] = a.x;
      As[o + 1u] = a.y;
      As[o + 2u] = a.z;
      As[o + 3u] = a.w;
    }
    for (var j = 0u; j < ${LW}u; j++) {
      let e = tid + ${NT}u * j;
      let o = (e / K4) * LDS + (e % K4) * 4u;
      let lo = bitcast<vec2<f16>>(rb[j].x);
      let hi = bitcast<vec2<f16>>(rb[j].y);
      Bs[o] = lo.x;
      Bs[o + 1u] = lo.y;
      Bs[o + 2u] = hi.x;
      Bs[o + 3u] = hi.y;
    }
    workgroupBarrier();
    // the next tile's loads, in flight during this tile's products
    let k1 = k0 + ${BK}u;
    if (k1 < kEnd) {${loads("k1 / 4u", "")}
    }
    for (var kk = 0u; kk < ${BK}u; kk += 16u) {
      ${mma.join("\n      ")}
    }
  }
  ${out.join("\n  ")}
}
`;
}

const tensorCoreKernel = defineKernel({
  name: "matmul_tc",
  wgsl: (s: { tile: TensorCoreTile }) => wgsl(s.tile),
  label: (s) => `matmul_tc_${tensorCoreTileName(s.tile)}`,
  example: { tile: TC_TILE },
  features: ["shader-f16", "chromium-experimental-subgroup-matrix"],
});

// x: [T, K] window (f32), w: [N, K] f16, bias: [N] -> y: [T, N] f32; with plan.count > 1 (K cut in parts of
// plan.kLen, a multiple of 16, as ./matmul.ts's splitPlan makes), y: [count, T, N] partial products without the bias
export function matmulTensorCore(gpu: Gpu, a: MatmulArgs, plan = { kLen: a.K, count: 1 }, tile: TensorCoreTile = TC_TILE): void {
  const why = tensorCoreTileDeviceProblem(tile, gpu);
  if (why) throw new MambaError(`matmul_tc: tile ${tensorCoreTileName(tile)} cannot run: ${why}`);
  const k = gpu.kernel(tensorCoreKernel, { tile });
  const p = new Params().u32(a.rows).u32(a.K).u32(a.N).u32(a.ldx).u32(a.offx).bool(!!a.bias && plan.count === 1).u32(plan.kLen);
  const bufs: Buf[] = [a.x, a.w, a.bias ?? gpu.dummy, a.y];
  gpu.dispatch(k, bufs, p, [Math.ceil(a.N / tile.BN), Math.ceil(a.rows / tile.BM), plan.count]);
}
