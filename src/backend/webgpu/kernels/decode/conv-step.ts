/**
 * WGSL the decode kernels that end in x_proj's partial sums share (./mixer-in.ts for the fused step, ./batch-conv.ts
 * for the batch step): one step of the causal conv of a channel over its history in the cache, split into a load
 * and a use so that a kernel can issue the load before anything else.
 */

/** Conv kernel sizes the decode kernels take (the history, K - 1 values, is held in registers). */
export const DECODE_CONV_MAX_K = 9;

/**
 * Constants and functions of the causal conv over a channel's history convState [B, K-1, E] and its new input:
 * `loadConvTap(b, e) -> ConvTap` loads the history, the weights (lp from p.oConvW, [E, K]) and the bias (from
 * p.oConvB); `convApply(tap, b, e, xv) -> f32` shifts the history by one in place (the oldest input leaves, xv
 * enters last; the thread of (b, e) alone reads and writes it) and returns SiLU of the conv. Reads the kernel's
 * `convState`, `lp`, `p` and its constant E.
 */
export const convTapWgsl = (K: number) => /* wgsl */ `
const CK = ${K}u; // conv taps
struct ConvTap { hist: array<f32, CK>, w: array<f32, CK>, bias: f32 }
fn loadConvTap(b: u32, e: u32) -> ConvTap {
  var tap: ConvTap;
  for (var j = 0u; j + 1u < CK; j++) { tap.hist[j] = convState[(b * (CK - 1u) + j) * E + e]; }
  for (var j = 0u; j < CK; j++) { tap.w[j] = lp[p.oConvW + e * CK + j]; }
  tap.bias = lp[p.oConvB + e];
  return tap;
}
fn convApply(tap: ConvTap, b: u32, e: u32, xv: f32) -> f32 {
  var s = tap.bias;
  for (var j = 0u; j + 1u < CK; j++) { s = fma(tap.w[j], tap.hist[j], s); }
  s = fma(tap.w[CK - 1u], xv, s);
  for (var j = 0u; j + 2u < CK; j++) { convState[(b * (CK - 1u) + j) * E + e] = tap.hist[j + 1u]; }
  if (CK > 1u) { convState[(b * (CK - 1u) + CK - 2u) * E + e] = xv; }
  return s / (1.0 + exp(-s));
}`;
