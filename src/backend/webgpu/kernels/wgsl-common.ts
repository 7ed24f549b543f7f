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
