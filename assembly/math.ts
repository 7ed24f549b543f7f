// Vector math on four f32 lanes for the kernels: exp, log of [1, 2], log1p of (0, 1], softplus and SiLU.
//
// Every function works lane by lane with the same instructions, so a value's result never depends on its lane or
// on the other lanes: kernels that pad a partial vector stay bitwise identical however their work is split.
//
// expV accuracy (test/backend/wasm-kernels.test.ts measures it against Math.exp on a dense grid):
//   x in [-87.33, 88.37]: relative error below 1e-7 (measured 8.5e-8: Cody-Waite range reduction, then the
//     degree-7 polynomial of Cephes' expf);
//   x in (88.37, 88.72]: the polynomial runs a little past its interval, relative error below 5e-7;
//   x > 88.72: +inf; x < -87.33: 0 (results that would be subnormal are flushed to zero); NaN stays NaN.
// The scan calls it on dt·A <= 0, softplus on -|v| and SiLU on -z. softplusV's relative error is below 5e-7 down to
// v = -87.3 (below that e^v is flushed to zero, and so is the result: an absolute error under 1.2e-38).
import { madd } from "./simd";

// @ts-ignore: decorator
@inline const LOG2E: f32 = 1.44269504088896341;
// ln 2 = LN2_HI + LN2_LO; LN2_HI has few significant bits, so k·LN2_HI is exact for the |k| <= 128 used here.
// @ts-ignore: decorator
@inline const LN2_HI: f32 = 0.693359375;
// @ts-ignore: decorator
@inline const LN2_LO: f32 = -2.12194440e-4;
// Below this exp(x) is subnormal (2^-126 = exp(-87.3365)); above the upper one it overflows (ln(FLT_MAX)).
// @ts-ignore: decorator
@inline const EXP_LO: f32 = -87.33654;
// @ts-ignore: decorator
@inline const EXP_HI: f32 = 88.72283;

/** e^x on four lanes (see the accuracy notes above). */
// @ts-ignore: decorator
@inline export function expV(x: v128): v128 {
  const xc = f32x4.pmin(f32x4.pmax(x, f32x4.splat(EXP_LO)), f32x4.splat(EXP_HI));
  // x = k·ln2 + r with k an integer and |r| <= ln2 / 2; 2^k is put straight into the exponent bits
  const k = f32x4.pmin(f32x4.nearest(f32x4.mul(xc, f32x4.splat(LOG2E))), f32x4.splat(127));
  let r = madd(k, f32x4.splat(-LN2_HI), xc);
  r = madd(k, f32x4.splat(-LN2_LO), r);
  let p = f32x4.splat(1.9875691500e-4);
  p = madd(p, r, f32x4.splat(1.3981999507e-3));
  p = madd(p, r, f32x4.splat(8.3334519073e-3));
  p = madd(p, r, f32x4.splat(4.1665795894e-2));
  p = madd(p, r, f32x4.splat(1.6666665459e-1));
  p = madd(p, r, f32x4.splat(5.0000001201e-1));
  const r2 = f32x4.mul(r, r);
  const er = f32x4.add(madd(p, r2, r), f32x4.splat(1));
  const scale = i32x4.shl(i32x4.add(i32x4.trunc_sat_f32x4_s(k), i32x4.splat(127)), 23);
  const y = f32x4.mul(er, scale);
  // below EXP_LO: 0; above EXP_HI: +inf
  const under = f32x4.lt(x, f32x4.splat(EXP_LO));
  const over = f32x4.gt(x, f32x4.splat(EXP_HI));
  return v128.bitselect(f32x4.splat(Infinity), v128.andnot(y, under), over);
}

/** ln(w) for w in [1, 2] (w = 1 + t of log1pV): halves w above sqrt(2), then 2·atanh(s), s = (w - 1) / (w + 1). */
// @ts-ignore: decorator
@inline function logOneToTwoV(w: v128): v128 {
  const big = f32x4.gt(w, f32x4.splat(1.41421356));
  const m = v128.bitselect(f32x4.mul(w, f32x4.splat(0.5)), w, big); // in [0.707, 1.415]
  const s = f32x4.div(f32x4.sub(m, f32x4.splat(1)), f32x4.add(m, f32x4.splat(1))); // |s| <= 0.1716
  const s2 = f32x4.mul(s, s);
  // atanh(s)/s = 1 + s²/3 + s⁴/5 + s⁶/7 + s⁸/9 (the next term is below 1e-9 here)
  let p = f32x4.splat(1.0 / 9.0);
  p = madd(p, s2, f32x4.splat(1.0 / 7.0));
  p = madd(p, s2, f32x4.splat(1.0 / 5.0));
  p = madd(p, s2, f32x4.splat(1.0 / 3.0));
  p = madd(p, s2, f32x4.splat(1));
  const lnm = f32x4.mul(f32x4.add(s, s), p);
  return f32x4.add(lnm, v128.and(big, f32x4.splat(0.693147181)));
}

/** ln(1 + t) for t in [0, 1], accurate for tiny t too: log(w)·t/(w - 1) with w = 1 + t rounded corrects w's rounding. */
// @ts-ignore: decorator
@inline export function log1pUnitV(t: v128): v128 {
  const w = f32x4.add(t, f32x4.splat(1));
  const wm1 = f32x4.sub(w, f32x4.splat(1));
  const corrected = f32x4.div(f32x4.mul(logOneToTwoV(w), t), wm1);
  return v128.bitselect(t, corrected, f32x4.eq(wm1, f32x4.splat(0)));
}

/** softplus(v) = ln(1 + e^v), as the reference computes it: v itself above 20 (PyTorch's threshold). */
// @ts-ignore: decorator
@inline export function softplusV(v: v128): v128 {
  // ln(1 + e^v) = max(v, 0) + ln(1 + e^-|v|): e^-|v| is in (0, 1], so nothing overflows
  const e = expV(f32x4.neg(f32x4.abs(v)));
  const sp = f32x4.add(f32x4.pmax(v, f32x4.splat(0)), log1pUnitV(e));
  return v128.bitselect(v, sp, f32x4.gt(v, f32x4.splat(20)));
}

/** silu(v) = v / (1 + e^-v). */
// @ts-ignore: decorator
@inline export function siluV(v: v128): v128 {
  return f32x4.div(v, f32x4.add(f32x4.splat(1), expV(f32x4.neg(v))));
}

/** expV over count f32 at src into dst (byte offsets; dst may be src): for tests of the approximation. */
export function expF32(src: usize, dst: usize, count: i32): void {
  let i = 0;
  for (; i + 4 <= count; i += 4) v128.store(dst + (<usize>i << 2), expV(v128.load(src + (<usize>i << 2))));
  for (; i < count; i++) {
    const p = <usize>i << 2;
    f32.store(dst + p, f32x4.extract_lane(expV(f32x4.splat(f32.load(src + p))), 0));
  }
}

/** softplusV over count f32 at src into dst (byte offsets; dst may be src): for tests. */
export function softplusF32(src: usize, dst: usize, count: i32): void {
  for (let i = 0; i < count; i++) {
    const p = <usize>i << 2;
    f32.store(dst + p, f32x4.extract_lane(softplusV(f32x4.splat(f32.load(src + p))), 0));
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
