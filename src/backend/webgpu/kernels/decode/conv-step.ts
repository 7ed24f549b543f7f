/**
 * WGSL the decode kernels that end in x_proj's partial sums share (./mixer-in.ts for the fused step, ./batch-conv.ts
 * for the batch step): one step of the causal conv of a channel over its history in the cache, split into a load
 * and a use so that a kernel can issue the load before anything else; x_proj's share of a group of channels from
 * chunks of Wx held in registers (the fused step), or staged through workgroup memory (the batch step, whose
 * workgroups have 8 rows: held in registers, its chunks and their products per row measured slower on the H200,
 * 8.8 against 8.1 us at 64 rows of 130m).
 */

/** Conv kernel sizes the decode kernels take (the history, K - 1 values, is held in registers). */
export const DECODE_CONV_MAX_K = 9;

/** Channels of a chunk of Wx a thread holds (a row's CC weights side by side) for a group of CH channels. */
function wxChunk(CH: number): number {
  return Math.min(CH, 8);
}

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

/**
 * Constants and functions of a group's share of x_proj from chunks of Wx: item i of the J · NCC (output j = i / NCC,
 * chunk i % NCC of CC channels) is `loadWxChunk(e0, i)` (clamped: items past the end and channels past E load valid
 * weights, whose products the caller must make zero or drop); `wxChunkDot(w, xs, x0)` is its dot product with CC
 * inputs from xs[x0 + ...]. Needs the kernel's E, J, CH and reader `wx`; `xs` is a workgroup array named by the
 * caller.
 */
export const wxChunkWgsl = (CH: number, J: number, xs: string) => /* wgsl */ `
const CC = ${wxChunk(CH)}u;          // channels of a chunk of Wx
const NCC = ${CH / wxChunk(CH)}u;    // chunks of a row of Wx in a group
const KI = ${Math.ceil((J * (CH / wxChunk(CH))) / 256)}u; // chunks a thread holds
fn loadWxChunk(e0: u32, i: u32) -> array<f32, CC> {
  var w: array<f32, CC>;
  let j = min(i / NCC, J - 1u);
  for (var c = 0u; c < CC; c++) { w[c] = wx(j * E + min(e0 + (i % NCC) * CC + c, E - 1u)); }
  return w;
}
fn wxChunkDot(w: array<f32, CC>, x0: u32) -> f32 {
  var s = 0.0;
  for (var c = 0u; c < CC; c++) { s = fma(w[c], ${xs}[x0 + c], s); }
  return s;
}`;

/**
 * WGSL statements that stage WC channels of Wx from channel e0 + c0 into the workgroup array \`dst\` as [J, WC + 1]
 * (rows padded by one, so threads reading a column hit different banks), WC threads side by side on a row: a
 * thread walking its own row of Wx touches a cache line per thread per load. Channels past E stage as zeros.
 * Reads the kernel's J, WC, WG, E, e0, c0, t and its Wx reader \`wx\`.
 */
export const stageWxWgsl = (dst: string) => /* wgsl */ `
    for (var i = t; i < J * WC; i += WG) {
      let c = i % WC;
      var v = 0.0;
      if (e0 + c0 + c < E) { v = wx((i / WC) * E + e0 + c0 + c); }
      ${dst}[(i / WC) * (WC + 1u) + c] = v;
    }`;

/**
 * WGSL statements: the products of the thread's chunks wxv[k] (item t + k·WG) with rows 0 .. RB of `xs` ([RB, CH]),
 * added over a row's NCC chunks in the workgroup array `acc` as [J, RB] (NCC passes, a barrier each; a pass adds one
 * chunk of every output, so no two threads write one place). Ends with a barrier; acc then holds the sums.
 */
export const wxChunkSumWgsl = (acc: string) => /* wgsl */ `
  var part: array<array<f32, RB>, KI>;
  for (var k = 0u; k < KI; k++) {
    let c0 = ((t + k * WG) % NCC) * CC;
    for (var b = 0u; b < RB; b++) { part[k][b] = wxChunkDot(wxv[k], b * CH + c0); }
  }
  for (var n = 0u; n < NCC; n++) {
    for (var k = 0u; k < KI; k++) {
      let i = t + k * WG;
      if (i < J * NCC && i % NCC == n) {
        let j = i / NCC;
        for (var b = 0u; b < RB; b++) { ${acc}[j * RB + b] = select(${acc}[j * RB + b] + part[k][b], part[k][b], n == 0u); }
      }
    }
    workgroupBarrier();
  }`;
