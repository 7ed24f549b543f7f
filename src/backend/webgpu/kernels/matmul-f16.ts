/**
 * The half-precision tiled matrix product (device feature shader-f16): y = x · wᵀ + bias with x f32 rounded to f16
 * as it is staged, w f16 packed two halves per u32, products and sums in f32, y f32. Each product of two halves is
 * exact in f32 (11 + 11 significant bits), so the result rounds exactly as a tensor core's f16 inputs with f32
 * accumulation do; only the order of the sums may differ.
 * Its WGSL is ./matmul.ts's tiled product with tiles of stage "f16" (halves in workgroup memory: half the memory and
 * shared-memory traffic of the f32 kernel); here are its tiles (16 × 16 threads, K tiles of 16), its kernel and its
 * entry point. Where the shapes allow (vec4Fits, as for f32 tiles) loads take 4 K columns at once and stores 4
 * columns. A K split (grid z) writes partial products that ./matmul-reduce.ts sums with the bias.
 * Also here: narrowToF16, the one-time conversion of a weight matrix (f32 or bf16) to packed f16.
 */
import type { Buf, Gpu } from "../gpu.ts";
import { Params } from "../gpu.ts";
import { MambaError } from "../../../errors.ts";
import { defineKernel } from "../kernel-def.ts";
import { type MatmulArgs, type TileConfig, tileName, tiledMatmulWgsl, vec4Fits } from "./matmul.ts";
import { type WeightStorage, weightBinding, weightReader } from "./weights.ts";

/** Many output tiles: 128 × 128, 8 × 8 a thread (as the f32 kernel's large tile), K tiles of 16 (8.4 KiB). */
export const HALF_TILE_LARGE: TileConfig = { BM: 128, BN: 128, TM: 8, TN: 8, BK: 16, vec4: true };
/** Few output tiles (or few rows): 64 × 64, 4 × 4 a thread. */
export const HALF_TILE_SMALL: TileConfig = { BM: 64, BN: 64, TM: 4, TN: 4, BK: 16, vec4: true };

const matmulF16Kernel = defineKernel({
  name: "matmul_f16",
  wgsl: (s: { cfg: TileConfig; v4: boolean }) => tiledMatmulWgsl("matmul_f16", s.cfg, "f16", s.v4, "f16"),
  label: (s) => `matmul_f16_${tileName(s.cfg)}${s.v4 ? "_v4" : ""}`,
  example: { cfg: HALF_TILE_LARGE, v4: true },
  features: ["shader-f16"],
});

// x: [rows, K] window (f32, rounded to f16), w: [N, K] f16, bias: [N] -> y: [rows, N] f32; with plan.count > 1,
// y: [count, rows, N] partials without bias (matmulReduce sums them)
export function matmulF16(gpu: Gpu, a: MatmulArgs, cfg: TileConfig, plan = { kLen: Math.max(16, a.K), count: 1 }): void {
  if (a.ws !== "f16") throw new MambaError(`matmulF16: the weights must be stored as f16, got ${a.ws}`);
  if (!gpu.half.f16) throw new MambaError("matmulF16: this device has no shader-f16");
  if (plan.count > 1 && plan.kLen % cfg.BK !== 0) throw new MambaError(`matmulF16: K parts of ${plan.kLen} columns are not whole tiles of ${cfg.BK}`);
  const k = gpu.kernel(matmulF16Kernel, { cfg, v4: vec4Fits(cfg, a) });
  const p = new Params().u32(a.rows).u32(a.K).u32(a.N).u32(a.ldx).u32(a.offx).bool(!!a.bias && plan.count === 1).u32(plan.kLen);
  gpu.dispatch(k, [a.x, a.w, a.bias ?? gpu.dummy, a.y], p, [Math.ceil(a.N / cfg.BN), Math.ceil(a.rows / cfg.BM), plan.count]);
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
