/** WGSL the decode kernels share: one step of the causal conv of a channel over its history in the cache, and
 *  the staging of Wx for their partial x_proj sums. */

/** Conv kernel sizes the decode kernels take (the history, K - 1 values, is held in registers). */
export const DECODE_CONV_MAX_K = 9;

/**
 * `fn convStep(b, e, xv) -> f32`: the causal conv of channel e of row b over its history convState [B, K-1, E]
 * and the new input xv, then SiLU. The history shifts by one in place (the oldest input leaves, xv enters last);
 * the thread of (b, e) alone reads and writes it. Reads the kernel's `convState`, `lp` (the layer's packed
 * constants: conv weights [E, K] from p.oConvW, bias [E] from p.oConvB) and p.K, p.E.
 */
export const CONV_STEP_WGSL = /* wgsl */ `
const CONV_MAXH = ${DECODE_CONV_MAX_K - 1}u; // history length
fn convStep(b: u32, e: u32, xv: f32) -> f32 {
  let K = p.K;
  let H = K - 1u;
  let E = p.E;
  var hist: array<f32, CONV_MAXH>;
  for (var j = 0u; j < CONV_MAXH; j++) { if (j < H) { hist[j] = convState[(b * H + j) * E + e]; } }
  var s = lp[p.oConvB + e];
  for (var j = 0u; j < CONV_MAXH; j++) { if (j < H) { s = fma(lp[p.oConvW + e * K + j], hist[j], s); } }
  s = fma(lp[p.oConvW + e * K + H], xv, s);
  for (var j = 0u; j < CONV_MAXH; j++) { if (j + 1u < H) { convState[(b * H + j) * E + e] = hist[j + 1u]; } }
  if (H > 0u) { convState[(b * H + H - 1u) * E + e] = xv; }
  return s / (1.0 + exp(-s));
}`;

/**
 * WGSL statements that stage WC channels of Wx from channel e0 + c0 into the workgroup array `dst` as [J, WC + 1]
 * (rows padded by one, so threads reading a column hit different banks), WC threads side by side on a row: a
 * thread walking its own row of Wx touches a cache line per thread per load. Channels past E stage as zeros.
 * Reads the kernel's J, WC, WG, E, e0, c0, t and its Wx reader `wx`.
 */
export const stageWxWgsl = (dst: string) => /* wgsl */ `
    for (var i = t; i < J * WC; i += WG) {
      let c = i % WC;
      var v = 0.0;
      if (e0 + c0 + c < E) { v = wx((i / WC) * E + e0 + c0 + c); }
      ${dst}[(i / WC) * (WC + 1u) + c] = v;
    }`;
