/**
 * Sums over workgroups without a dispatch of their own: each workgroup adds its partial sums into a buffer of
 * fixed-point totals with 32-bit atomic adds, and the next kernel reads the totals. WGSL has no float atomics;
 * integer addition is exact and order-free, so the totals do not depend on which workgroup came first (a float
 * compare-and-swap loop would be neither, and would wait on each exchange).
 *
 * A contribution x is v = round-toward-zero(x · 2^32), a 64-bit two's complement integer, split into three limbs
 * v = l2 · 2^44 + l1 · 2^22 + l0 with l0, l1 in [0, 2^22) and l2 signed. Each limb is added into a word of its own
 * with an atomic add whose result is not used, so no thread waits for it (a carry from one word into the next would
 * need the old value back, and each thread would wait a round trip to memory for it). Up to
 * 1024 contributions keep every limb's sum within its word (FIXED_MAX_TERMS); the reader puts the three sums
 * together into the exact 64-bit total and rounds that once to f32.
 *
 * A value takes words l0, l1, l2 (and one unused: a vec4 read) of its `stride` words (4, or more to spread the
 * totals out: FIXED_SPREAD). A region of `count` values is `count` strides, then one more holding the poison word:
 * a contribution that is not finite or not below `limit` in magnitude sets it instead of adding (the total could
 * overflow), and a reader then gives NaN for the region, as the float sums would have.
 */

/** Words from one total to the next where many workgroups add into few totals: 1 KiB apart, so that their atomics
 *  spread over the cache rather than queue at a few of its slices. On the H100, x_proj's totals of the fused
 *  decode (128 workgroups adding into each of 160 a row) took a step of 1.4b 3355 us at batch 1 with the totals
 *  4 words apart, 3074 us with 256 (BENCHMARKS.md). The fused decode's totals then take (B · J + 1) KiB a layer:
 *  81 KiB for 130m at batch 1, 1.25 MiB for 1.4b at batch 8. */
export const FIXED_SPREAD = 256;

/** Contributions a total may take: every limb sum stays below 2^32. */
export const FIXED_MAX_TERMS = 1024;

/** Words of a region of `count` fixed-point values `stride` words apart (a multiple of 4), then the poison word. */
export function fixedRegionWords(count: number, stride = 4): number {
  return stride * (count + 1);
}

/** The magnitude below which `terms` contributions sum within the 64-bit total (|total| < 2^31, as x · 2^32):
 *  2^31 / terms rounded down to a power of two (2^30 for 2 terms, 2^24 for 128). */
export function fixedLimit(terms: number): number {
  if (!(terms >= 1 && terms <= FIXED_MAX_TERMS)) throw new Error(`fixed-point totals take 1 to ${FIXED_MAX_TERMS} contributions, got ${terms}`);
  return 2 ** Math.floor(Math.log2(2 ** 31 / terms));
}

/** WGSL over the atomic array `arr`: `fixedAdd(word, poisonWord, x)`, adding x into the value at word `word`, and
 *  `fixedClear(word)`, setting that value (or the poison word there) back to zero. */
export function fixedAddWgsl(arr: string, limit: number): string {
  return /* wgsl */ `
// adds x into the fixed-point value at words i .. i + 2 of ${arr} (./fixed.ts); poisons the region where x is not
// finite or too large to add safely
fn fixedAdd(i: u32, poison: u32, x: f32) {
  if (!(abs(x) < ${limit}.0)) { atomicOr(&${arr}[poison], 1u); return; }
  let a = abs(x);
  let ip = floor(a);
  var hi = u32(ip);
  var lo = u32((a - ip) * 4294967296.0); // exact: a - ip has at most 24 bits, all below 2^0
  if (x < 0.0) { // the two's complement of (hi, lo)
    hi = ~hi + select(0u, 1u, lo == 0u);
    lo = ~lo + 1u;
  }
  let l0 = lo & 0x3fffffu;
  let l1 = (lo >> 22u) | ((hi & 0xfffu) << 10u);
  let l2 = bitcast<u32>(bitcast<i32>(hi) >> 12u);
  if (l0 != 0u) { atomicAdd(&${arr}[i], l0); }
  if (l1 != 0u) { atomicAdd(&${arr}[i + 1u], l1); }
  if (l2 != 0u) { atomicAdd(&${arr}[i + 2u], l2); }
}
fn fixedClear(i: u32) {
  for (var k = 0u; k < 3u; k++) { atomicStore(&${arr}[i + k], 0u); }
}
`;
}

/** WGSL: `fromFixed(v) -> f32`, the total of a value's limb sums v = (Σl0, Σl1, Σl2, -), rounded once. */
export const FIXED_READ_WGSL = /* wgsl */ `
fn fromFixed(v: vec4<u32>) -> f32 {
  // the 64-bit total (hi, lo) = Σl2 · 2^44 + Σl1 · 2^22 + Σl0, exactly
  let lo = v.x + (v.y << 22u);
  var hi = (v.y >> 10u) + (v.z << 12u) + select(0u, 1u, lo < v.x);
  // through the magnitude, so that a small negative total keeps its 24 bits
  let neg = (hi & 0x80000000u) != 0u;
  var mlo = lo;
  if (neg) {
    mlo = ~lo + 1u;
    hi = ~hi + select(0u, 1u, lo == 0u);
  }
  let m = f32(hi) * 4294967296.0 + f32(mlo);
  return select(m, -m, neg) * 2.3283064365386963e-10;
}
// a quiet NaN (a constant's bitcast to NaN is rejected at compile time, so it goes through a variable)
fn fixedNan() -> f32 {
  var bits = 0x7fc00000u;
  return bitcast<f32>(bits);
}
`;
