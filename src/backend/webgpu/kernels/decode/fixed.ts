/**
 * Sums over workgroups without a dispatch of their own: each workgroup adds its partial sums into a buffer of 64-bit
 * fixed-point numbers with 32-bit atomics, and the next kernel reads the totals. WGSL has no float atomics; integer
 * addition is exact and order-free, so the totals do not depend on which workgroup came first (a float
 * compare-and-swap loop would be neither).
 *
 * A value v is stored as round-toward-zero(v · 2^32), a two's complement integer in two words: lo, then hi. A
 * workgroup adds lo with atomicAdd, sees from the old value whether it carried, and adds hi + carry to the high
 * word. The integer sum is exact; reading it back rounds once, to f32.
 *
 * A region of `count` values is 2 · count words of numbers, then a poison word: a contribution that is not finite
 * or not below `limit` in magnitude sets it instead of adding (the totals could wrap), and a reader then gives NaN
 * for the region, as the float sums would have. `limit` is chosen so that `terms` contributions cannot wrap the
 * high word (fixedLimit). Regions start at an even word (vec2 reads), so a region takes fixedRegionWords words.
 */

/** Words of a region of `count` fixed-point values: lo and hi of each, the poison word, a pad to an even size. */
export function fixedRegionWords(count: number): number {
  return 2 * count + 2;
}

/** The magnitude below which `terms` contributions sum without wrapping the signed high word: 2^31 / terms,
 *  rounded down to a power of two (2^30 for 2 terms, 2^24 for 128). */
export function fixedLimit(terms: number): number {
  return 2 ** Math.floor(Math.log2(2 ** 31 / Math.max(1, terms)));
}

/** WGSL: `toFixed`, `fromFixed` and, over the atomic array `arr`, `fixedAdd(word, poisonWord, x)`. */
export function fixedAddWgsl(arr: string, limit: number): string {
  return /* wgsl */ `
${FIXED_CONVERT_WGSL}
// adds x to the fixed-point number at words i (lo) and i + 1 (hi) of ${arr}; poisons the region where x is not
// finite or too large to add safely
fn fixedAdd(i: u32, poison: u32, x: f32) {
  if (!(abs(x) < ${limit}.0)) { atomicOr(&${arr}[poison], 1u); return; }
  let v = toFixed(x);
  var carry = 0u;
  if (v.x != 0u) {
    let old = atomicAdd(&${arr}[i], v.x);
    carry = select(0u, 1u, old + v.x < old);
  }
  let up = v.y + carry;
  if (up != 0u) { atomicAdd(&${arr}[i + 1u], up); }
}
`;
}

/** WGSL: `toFixed(x) -> vec2<u32>` (lo, hi of x · 2^32 rounded toward zero; |x| < 2^31) and
 *  `fromFixed(v) -> f32`, both through the magnitude so that small values keep their 24 bits. */
export const FIXED_CONVERT_WGSL = /* wgsl */ `
fn toFixed(x: f32) -> vec2<u32> {
  let a = abs(x);
  let ip = floor(a);
  let hi = u32(ip);
  let lo = u32((a - ip) * 4294967296.0); // exact: a - ip has at most 24 bits, all below 2^0
  if (x >= 0.0) { return vec2<u32>(lo, hi); }
  return vec2<u32>(~lo + 1u, ~hi + select(0u, 1u, lo == 0u));
}
fn fromFixed(v: vec2<u32>) -> f32 {
  let neg = (v.y & 0x80000000u) != 0u;
  var lo = v.x;
  var hi = v.y;
  if (neg) {
    lo = ~v.x + 1u;
    hi = ~v.y + select(0u, 1u, v.x == 0u);
  }
  let m = f32(hi) + f32(lo) * 2.3283064365386963e-10;
  return select(m, -m, neg);
}
// a quiet NaN (a constant's bitcast to NaN is rejected at compile time, so it goes through a variable)
fn fixedNan() -> f32 {
  var bits = 0x7fc00000u;
  return bitcast<f32>(bits);
}
`;
