// SIMD helpers shared by every kernel file.
//
// The same sources build twice (scripts/build-wasm.mjs): once with relaxed SIMD, where a*b+c is one fused
// instruction when the CPU has FMA, and once with plain SIMD for runtimes without it. ASC_FEATURE_RELAXED_SIMD is a
// compile-time constant, so each build keeps only its own branch.

/** a * b + c on four f32 lanes: fused (one rounding) in the relaxed build where the CPU has FMA, else mul then add. */
// @ts-ignore: decorator
@inline export function madd(a: v128, b: v128, c: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f32x4.relaxed_madd(a, b, c);
  else return f32x4.add(f32x4.mul(a, b), c);
}

/** Sum of the four f32 lanes of v, in a fixed order ((v0 + v2) + (v1 + v3)). */
// @ts-ignore: decorator
@inline export function hsum(v: v128): f32 {
  const pairs = f32x4.add(v, i32x4.shuffle(v, v, 2, 3, 0, 1));
  return f32x4.extract_lane(pairs, 0) + f32x4.extract_lane(pairs, 1);
}
