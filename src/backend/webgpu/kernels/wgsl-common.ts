/** WGSL functions several kernels share, spliced into their source. */

/** softplus as PyTorch computes it: log(1 + e^v), which loses e^v when it is tiny (its series keeps it), and v
 *  itself past 20. */
export const SOFTPLUS_WGSL = /* wgsl */ `
fn softplus(v: f32) -> f32 {
  let ev = exp(v);
  return select(select(log(1.0 + ev), ev * (1.0 - 0.5 * ev), ev < 1e-4), v, v > 20.0);
}`;

/** A monotone map of f32 onto u32: a < b as floats iff orderable(a) < orderable(b) (the sampler's keys, and the
 *  greedy choice the decode's head makes beside its logits). */
export const ORDERABLE_WGSL = /* wgsl */ `
fn orderable(f: f32) -> u32 {
  let b = bitcast<u32>(f);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}`;

/** The sum of a workgroup's 256 slots of `arr` into arr[0] (or of each row's, with `rows`: slot l of row t at
 *  arr[t * 256 + l]), halving the stride each step, a barrier after each; `lane` is the thread's index. The
 *  slots must be written, and a barrier passed, before it. */
export function treeSumWgsl(arr: string, lane: string, rows?: string): string {
  const add = rows === undefined ? `${arr}[${lane}] += ${arr}[${lane} + st];`
    : `for (var t = 0u; t < ${rows}; t++) { ${arr}[t * 256u + ${lane}] += ${arr}[t * 256u + ${lane} + st]; }`;
  return `for (var st = 128u; st > 0u; st >>= 1u) {
    if (${lane} < st) { ${add} }
    workgroupBarrier();
  }`;
}
