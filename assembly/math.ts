// Vector math on four f32 lanes for the kernels: exp, log1p of [0, 1], softplus and SiLU; and loads and stores of
// partial vectors.
//
// Every function works lane by lane with the same instructions, so a value's result never depends on its lane or
// on the other lanes: kernels that pad a partial vector stay bitwise identical however their work is split.
//
// expV accuracy (test/backend/wasm-kernels.test.ts measures it against Math.exp):
//   x in [-87.33, 88.37]: relative error below 1.5e-7 (measured 1.13e-7 with the plain build, 9e-8 with fused
//     multiply-add): Cody-Waite range reduction to |r| <= ln2/2, then a degree-6 minimax polynomial (Horner);
//   x < -87.33: the result is subnormal or 0 (from -87.65 down, and for -inf): absolute error below 1.2e-38;
//   NaN stays NaN. Its domain ends at 88.37 (+inf up to 89.07, garbage above): the kernels call it on dt·A
//   and -|v| (<= 0) and on A_log (a few units).
// softplusV and siluV: relative error below 5e-7 (softplus down to v = -87, where e^v itself flushes to 0).
//
// The constants live in a table in memory, not in the code: V8 rebuilds a v128.const at each use inside a loop
// (a 64-bit move, a move to the vector register and a shuffle, where the table costs one load), which made the
// scan half again as slow. The scan's inner loop loads expV's constants once, before it (c() and expK()).
import { madd } from "./simd";

// The table: each constant splatted to 16 bytes, at the byte offsets below.
// @ts-ignore: decorator
@inline export const EXP_MIN = 0; // inputs are clamped here: k = -127 then makes 2^k = 0
// @ts-ignore: decorator
@inline export const LOG2E = 16;
// @ts-ignore: decorator
@inline export const ROUNDER = 32; // 1.5·2^23 + 127: adding it rounds to an integer; its bits are then those of 1.5·2^23 + (127 + k)
// @ts-ignore: decorator
@inline export const NEG_LN2_HI = 48; // ln 2 = LN2_HI + LN2_LO; k·LN2_HI is exact for |k| <= 128
// @ts-ignore: decorator
@inline export const NEG_LN2_LO = 64;
// @ts-ignore: decorator
@inline export const P6 = 80; // e^r ≈ P0 + r·(P1 + r·(P2 + ...)), minimax on [-ln2/2, ln2/2]
// @ts-ignore: decorator
@inline export const P5 = 96;
// @ts-ignore: decorator
@inline export const P4 = 112;
// @ts-ignore: decorator
@inline export const P3 = 128;
// @ts-ignore: decorator
@inline export const P2 = 144;
// @ts-ignore: decorator
@inline export const P1 = 160;
// @ts-ignore: decorator
@inline export const ONE = 176; // also P0
// @ts-ignore: decorator
@inline const SQRT2 = 192;
// @ts-ignore: decorator
@inline const HALF = 208;
// @ts-ignore: decorator
@inline const ATANH9 = 224; // atanh(s)/s = 1 + s²/3 + s⁴/5 + s⁶/7 + s⁸/9
// @ts-ignore: decorator
@inline const ATANH7 = 240;
// @ts-ignore: decorator
@inline const ATANH5 = 256;
// @ts-ignore: decorator
@inline const ATANH3 = 272;
// @ts-ignore: decorator
@inline const LN2 = 288;
// @ts-ignore: decorator
@inline const SOFTPLUS_THRESHOLD = 304; // 20, PyTorch's

const TABLE = memory.data<f32>([
  -88.0, -88.0, -88.0, -88.0,
  1.44269504088896341, 1.44269504088896341, 1.44269504088896341, 1.44269504088896341,
  12583039.0, 12583039.0, 12583039.0, 12583039.0,
  -0.693359375, -0.693359375, -0.693359375, -0.693359375,
  2.12194440e-4, 2.12194440e-4, 2.12194440e-4, 2.12194440e-4,
  0.0013941108433972674, 0.0013941108433972674, 0.0013941108433972674, 0.0013941108433972674,
  0.008375126398153335, 0.008375126398153335, 0.008375126398153335, 0.008375126398153335,
  0.04166635289677516, 0.04166635289677516, 0.04166635289677516, 0.04166635289677516,
  0.16666415514653277, 0.16666415514653277, 0.16666415514653277, 0.16666415514653277,
  0.5000000047117757, 0.5000000047117757, 0.5000000047117757, 0.5000000047117757,
  1.000000037716214, 1.000000037716214, 1.000000037716214, 1.000000037716214,
  1.0, 1.0, 1.0, 1.0,
  1.41421356, 1.41421356, 1.41421356, 1.41421356,
  0.5, 0.5, 0.5, 0.5,
  1.0 / 9.0, 1.0 / 9.0, 1.0 / 9.0, 1.0 / 9.0,
  1.0 / 7.0, 1.0 / 7.0, 1.0 / 7.0, 1.0 / 7.0,
  1.0 / 5.0, 1.0 / 5.0, 1.0 / 5.0, 1.0 / 5.0,
  1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0,
  0.693147181, 0.693147181, 0.693147181, 0.693147181,
  20.0, 20.0, 20.0, 20.0,
], 16);

/** The table's constant at byte offset `offset`. A kernel may load expV's constants once before its hot loop and
 *  call expK with them: V8 then keeps them in registers or on the stack (the prefill scan ran 20% faster so). */
// @ts-ignore: decorator
@inline export function c(offset: usize): v128 {
  return v128.load(TABLE + offset);
}

/** e^x on four lanes, for x <= 88.37 (see the accuracy notes above). */
// @ts-ignore: decorator
@inline export function expV(x: v128): v128 {
  return expK(x, c(EXP_MIN), c(LOG2E), c(ROUNDER), c(NEG_LN2_HI), c(NEG_LN2_LO), c(P6), c(P5), c(P4), c(P3), c(P2), c(P1), c(ONE));
}

/** expV with its constants passed in: c(EXP_MIN), c(LOG2E), c(ROUNDER), c(NEG_LN2_HI), c(NEG_LN2_LO), c(P6) .. c(P1),
 *  c(ONE), in this order. */
// @ts-ignore: decorator
@inline export function expK(
  x: v128, expMin: v128, log2e: v128, rounder: v128, negLn2Hi: v128, negLn2Lo: v128,
  p6: v128, p5: v128, p4: v128, p3: v128, p2: v128, p1: v128, one: v128,
): v128 {
  const xc = f32x4.pmax(x, expMin);
  // x = k·ln2 + r, |r| <= ln2/2, with k = j - ROUNDER an integer
  const j = madd(xc, log2e, rounder);
  const k = f32x4.sub(j, rounder);
  let r = madd(k, negLn2Hi, xc);
  r = madd(k, negLn2Lo, r);
  let p = madd(p6, r, p5);
  p = madd(p, r, p4);
  p = madd(p, r, p3);
  p = madd(p, r, p2);
  p = madd(p, r, p1);
  p = madd(p, r, one);
  // j's bits are 0x4B400000 + 127 + k: shifted left by 23, 0x4B400000 leaves and 127 + k is the exponent of 2^k
  // (0 for k = -127: the result is 0)
  return f32x4.mul(p, i32x4.shl(j, 23));
}

/** ln(w) for w in [1, 2]: halves w above sqrt(2), then 2·atanh(s) with s = (w - 1) / (w + 1), |s| <= 0.1716. */
// @ts-ignore: decorator
@inline function logOneToTwoV(w: v128): v128 {
  const big = f32x4.gt(w, c(SQRT2));
  const m = v128.bitselect(f32x4.mul(w, c(HALF)), w, big);
  const s = f32x4.div(f32x4.sub(m, c(ONE)), f32x4.add(m, c(ONE)));
  const s2 = f32x4.mul(s, s);
  let p = madd(c(ATANH9), s2, c(ATANH7));
  p = madd(p, s2, c(ATANH5));
  p = madd(p, s2, c(ATANH3));
  p = madd(p, s2, c(ONE));
  return f32x4.add(f32x4.mul(f32x4.add(s, s), p), v128.and(big, c(LN2)));
}

/** ln(1 + t) for t in [0, 1], accurate for tiny t too: log(w)·t/(w - 1) with w = 1 + t rounded corrects w's rounding. */
// @ts-ignore: decorator
@inline export function log1pUnitV(t: v128): v128 {
  const w = f32x4.add(t, c(ONE));
  const wm1 = f32x4.sub(w, c(ONE));
  const corrected = f32x4.div(f32x4.mul(logOneToTwoV(w), t), wm1);
  return v128.bitselect(t, corrected, f32x4.eq(wm1, f32x4.splat(0)));
}

/** softplus(v) = ln(1 + e^v), as the reference computes it: v itself above 20 (PyTorch's threshold). */
// @ts-ignore: decorator
@inline export function softplusV(v: v128): v128 {
  // ln(1 + e^v) = max(v, 0) + ln(1 + e^-|v|): e^-|v| is in (0, 1], so nothing overflows
  const e = expV(f32x4.neg(f32x4.abs(v)));
  const sp = f32x4.add(f32x4.pmax(v, f32x4.splat(0)), log1pUnitV(e));
  return v128.bitselect(v, sp, f32x4.gt(v, c(SOFTPLUS_THRESHOLD)));
}

/** silu(v) = v / (1 + e^-v), as v / (1 + e) for v >= 0 and v·e / (1 + e) below, with e = e^-|v| (no overflow). */
// @ts-ignore: decorator
@inline export function siluV(v: v128): v128 {
  const e = expV(f32x4.neg(f32x4.abs(v)));
  const num = v128.bitselect(v, f32x4.mul(v, e), f32x4.ge(v, f32x4.splat(0)));
  return f32x4.div(num, f32x4.add(c(ONE), e));
}

// ---- functions of one f32 array, for tests of the approximations (byte offsets; dst may be src) ----

/** expV over count f32 at src into dst. */
export function expF32(src: usize, dst: usize, count: i32): void {
  for (let i = 0; i < count; i += 4) {
    const n = min(4, count - i), p = <usize>i << 2;
    storeLanes(dst + p, expV(loadLanes(src + p, n)), n);
  }
}

/** softplusV over count f32 at src into dst. */
export function softplusF32(src: usize, dst: usize, count: i32): void {
  for (let i = 0; i < count; i += 4) {
    const n = min(4, count - i), p = <usize>i << 2;
    storeLanes(dst + p, softplusV(loadLanes(src + p, n)), n);
  }
}

/** siluV over count f32 at src into dst. */
export function siluF32(src: usize, dst: usize, count: i32): void {
  for (let i = 0; i < count; i += 4) {
    const n = min(4, count - i), p = <usize>i << 2;
    storeLanes(dst + p, siluV(loadLanes(src + p, n)), n);
  }
}

// ---- partial vectors: the last group of a channel range may hold fewer than four channels ----

/** count (1..4) f32 at p into the first lanes, zeros in the others. */
// @ts-ignore: decorator
@inline export function loadLanes(p: usize, count: i32): v128 {
  if (count >= 4) return v128.load(p);
  let v = v128.load32_zero(p);
  if (count > 1) v = v128.load32_lane(p, v, 1, 4);
  if (count > 2) v = v128.load32_lane(p, v, 2, 8);
  return v;
}

/** Lane j of the result is the f32 at p + j·stride (bytes), for j < count (1..4); zeros in the others. */
// @ts-ignore: decorator
@inline export function gatherLanes(p: usize, stride: usize, count: i32): v128 {
  let v = v128.load32_zero(p);
  if (count > 1) v = v128.load32_lane(p + stride, v, 1);
  if (count > 2) v = v128.load32_lane(p + 2 * stride, v, 2);
  if (count > 3) v = v128.load32_lane(p + 3 * stride, v, 3);
  return v;
}

/** Stores the first count (1..4) lanes of v at p. */
// @ts-ignore: decorator
@inline export function storeLanes(p: usize, v: v128, count: i32): void {
  if (count >= 4) {
    v128.store(p, v);
    return;
  }
  v128.store32_lane(p, v, 0);
  if (count > 1) v128.store32_lane(p, v, 1, 4);
  if (count > 2) v128.store32_lane(p, v, 2, 8);
}

/** Stores lane j of v at p + j·stride (bytes), for j < count (1..4). */
// @ts-ignore: decorator
@inline export function scatterLanes(p: usize, stride: usize, v: v128, count: i32): void {
  v128.store32_lane(p, v, 0);
  if (count > 1) v128.store32_lane(p + stride, v, 1);
  if (count > 2) v128.store32_lane(p + 2 * stride, v, 2);
  if (count > 3) v128.store32_lane(p + 3 * stride, v, 3);
}
