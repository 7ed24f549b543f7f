/** Inputs for the benchmarks. */

/** A Float32Array of n values cycling through a seeded random block (fast for hundreds of millions). */
export function filled(n: number, lo: number, hi: number, seed: number): Float32Array {
  const block = new Float32Array(Math.min(n, 1 << 20));
  let s = seed >>> 0;
  for (let i = 0; i < block.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    block[i] = lo + ((hi - lo) * s) / 4294967296;
  }
  const out = new Float32Array(n);
  for (let o = 0; o < n; o += block.length) out.set(block.subarray(0, Math.min(block.length, n - o)), o);
  return out;
}
