// Products with block-quantized weights (Q8_0, Q4_0: GGUF's layouts, kept at their stored size), the embedding
// gather from quantized rows, and dequantization of whole blocks.
//
// Layouts (src/io/quant.ts): blocks of 32 values along each weight row (K a multiple of 32), each an f16 scale d
// then the values:
//   Q8_0: 34 bytes: d, 32 int8 q;                                       value = q · d
//   Q4_0: 18 bytes: d, 16 bytes, byte j holding element j (low nibble) and element j + 16 (high nibble);
//                                                                       value = (nibble - 8) · d
// Each value q · d is exact in f32 (an f16 times an integer of at most 8 bits), so "dequantize, then the f32
// product" has one exact meaning. Two kinds of product:
//  - f32 activations (matmulQ8_0, matmulQ4_0; the engine's prefill, and decode without int16Activations): the
//    weights are widened in registers (int8 -> i16 -> i32 -> f32, times d: the exact dequantized value) and
//    multiply-added with the activations in the order of matmul.ts's f32 product (one vector sum per output, k
//    ascending four at a time, then the bias), so every output equals, bit for bit, matmulF32's over the
//    dequantized matrix, in each build.
//  - integer dot products (matmulQ8_0I16, matmulQ4_0I16; the engine's decode): the activations are quantized to
//    int16 blocks first (below). About half the CPU time of the f32 path, for a rounding of the activations of at
//    most 2^-16 of each block's largest value. int8 activations (llama.cpp's q8_0 x q8_0 dot) cost the same
//    instructions here (the int8 weights are widened to i16 for i32x4.dot_i16x8_s either way) and round 256 times
//    more coarsely: the fixtures' logits would leave the 1e-4 that their dequantized reference allows.
// Neither depends on the number of threads: each output is one thread's, by a fixed sequence.
//
// ABI as matmul.ts's: byte offsets into the shared memory, sizes in elements, the work range (rows of the weight,
// i.e. outputs, or the ids, or blocks) last.
import { matmulF32 } from "./matmul";
import { madd, hsum } from "./simd";

// The type parameter Q only tells the layouts apart, by its size: Q8 (1 byte) or Q4 (2).
type Q8 = i8;
type Q4 = u16;

const Q8_BYTES: usize = 34;
const Q4_BYTES: usize = 18;

/** The f16 scale at p as a scalar f32, exact for every finite half. Scales are often subnormal halves (a Q8_0
 *  block whose largest weight is below 127 · 2^-14 ≈ 0.0078), so no step may hold an f32 denormal, which x86 CPUs
 *  multiply about a hundred times slower: normal halves are rebiased in the integer bits; subnormal ones are their
 *  integer mantissa times 2^-24, both normal f32 values. */
// @ts-ignore: decorator
@inline function scalarScale(p: usize): f32 {
  const h = <u32>load<u16>(p);
  const em = h & 0x7fff;
  const v = em >= 0x400 ? reinterpret<f32>((em << 13) + 0x38000000) : <f32>em * 5.9604644775390625e-8;
  return reinterpret<f32>(reinterpret<u32>(v) | ((h & 0x8000) << 16));
}
/** The f16 scale at p in every lane. */
// @ts-ignore: decorator
@inline function scaleAt(p: usize): v128 {
  return f32x4.splat(scalarScale(p));
}

/** acc + the 32 products of f32 activations at x with one block's dequantized weights (8 at a time, k ascending). */
// @ts-ignore: decorator
@inline function blockDot<Q>(acc: v128, x: usize, blk: usize): v128 {
  const d = scaleAt(blk);
  if (sizeof<Q>() == 1) {
    // Q8_0: 8 int8 sign-extended to i16 per load
    for (let j: usize = 0; j < 32; j += 8) {
      const q = v128.load8x8_s(blk + 2 + j);
      acc = madd(v128.load(x + (j << 2)), f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(q)), d), acc);
      acc = madd(v128.load(x + (j << 2), 16), f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(q)), d), acc);
    }
  } else {
    // Q4_0: 16 bytes -> elements 0-15 (low nibbles) and 16-31 (high nibbles), minus 8
    const bytes = v128.load(blk + 2);
    const eight = i8x16.splat(8);
    const lo = i8x16.sub(v128.and(bytes, i8x16.splat(0x0f)), eight);
    const hi = i8x16.sub(i8x16.shr_u(bytes, 4), eight);
    acc = quad(acc, x, i16x8.extend_low_i8x16_s(lo), d);
    acc = quad(acc, x + 32, i16x8.extend_high_i8x16_s(lo), d);
    acc = quad(acc, x + 64, i16x8.extend_low_i8x16_s(hi), d);
    acc = quad(acc, x + 96, i16x8.extend_high_i8x16_s(hi), d);
  }
  return acc;
}

/** acc + 8 products: f32 activations at x times the 8 i16 values of q, times d. */
// @ts-ignore: decorator
@inline function quad(acc: v128, x: usize, q: v128, d: v128): v128 {
  acc = madd(v128.load(x), f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(q)), d), acc);
  return madd(v128.load(x, 16), f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(q)), d), acc);
}

/** 32 dequantized values of the block at blk, as f32 at dst. */
// @ts-ignore: decorator
@inline function dequantBlock<Q>(blk: usize, dst: usize): void {
  const d = scaleAt(blk);
  if (sizeof<Q>() == 1) {
    for (let j: usize = 0; j < 32; j += 8) {
      const q = v128.load8x8_s(blk + 2 + j);
      v128.store(dst + (j << 2), f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(q)), d));
      v128.store(dst + (j << 2), f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(q)), d), 16);
    }
  } else {
    const bytes = v128.load(blk + 2);
    const eight = i8x16.splat(8);
    const lo = i8x16.sub(v128.and(bytes, i8x16.splat(0x0f)), eight);
    const hi = i8x16.sub(i8x16.shr_u(bytes, 4), eight);
    storeQuad(dst, i16x8.extend_low_i8x16_s(lo), d);
    storeQuad(dst + 32, i16x8.extend_high_i8x16_s(lo), d);
    storeQuad(dst + 64, i16x8.extend_low_i8x16_s(hi), d);
    storeQuad(dst + 96, i16x8.extend_high_i8x16_s(hi), d);
  }
}
// @ts-ignore: decorator
@inline function storeQuad(dst: usize, q: v128, d: v128): void {
  v128.store(dst, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(q)), d));
  v128.store(dst, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(q)), d), 16);
}

/** The output of one (row, weight row) pair as matmul.ts's finish: the vector sum, then the bias. */
// @ts-ignore: decorator
@inline function finish(acc: v128, bias: usize, n: i32): f32 {
  let s = hsum(acc);
  if (bias != 0) s += load<f32>(bias + (<usize>n << 2));
  return s;
}

// One row: y[n] = x · dequant(w[n]) + bias[n] for n in [n0, n1), 4 weight rows at a time (4 sums, 4 streams of
// blocks; their scales and the shared activations fill the rest of the registers).
function matvecQ<Q>(xa: usize, K: i32, w: usize, bias: usize, yRow: usize, n0: i32, n1: i32): void {
  const bb: usize = sizeof<Q>() == 1 ? Q8_BYTES : Q4_BYTES;
  const blocks = <usize>(K >> 5);
  const wStride = blocks * bb;
  let n = n0;
  for (; n + 4 <= n1; n += 4) {
    const w0 = w + <usize>n * wStride, w1 = w0 + wStride, w2 = w1 + wStride, w3 = w2 + wStride;
    let a0 = f32x4.splat(0), a1 = a0, a2 = a0, a3 = a0;
    for (let b: usize = 0; b < blocks; b++) {
      const xb = xa + (b << 7);
      const o = b * bb;
      a0 = blockDot<Q>(a0, xb, w0 + o);
      a1 = blockDot<Q>(a1, xb, w1 + o);
      a2 = blockDot<Q>(a2, xb, w2 + o);
      a3 = blockDot<Q>(a3, xb, w3 + o);
    }
    const ya = yRow + (<usize>n << 2);
    store<f32>(ya, finish(a0, bias, n));
    store<f32>(ya, finish(a1, bias, n + 1), 4);
    store<f32>(ya, finish(a2, bias, n + 2), 8);
    store<f32>(ya, finish(a3, bias, n + 3), 12);
  }
  for (; n < n1; n++) {
    const wn = w + <usize>n * wStride;
    let a0 = f32x4.splat(0);
    for (let b: usize = 0; b < blocks; b++) a0 = blockDot<Q>(a0, xa + (b << 7), wn + b * bb);
    store<f32>(yRow + (<usize>n << 2), finish(a0, bias, n));
  }
}

// ---- integer dot products (decode) ----
//
// A row of activations is quantized to int16 blocks of 32 (xq = round_even(x / dx), dx = max|x| / 32767 per block,
// saturated to [-32768, 32767]), then each (block of weights, block of activations) pair is an exact i32 sum of 32
// int8 x int16 products (i32x4.dot_i16x8_s: 8 products in an instruction; |sum| < 2^31), turned to f32 and scaled by
// dw · dx into the output's sum. This reads each weight once, in about half the CPU time of the f32 path. Its
// reference twin: quantize the activations the same way, then the f32 op (twinI16 in
// test/backend/wasm-quant.test.ts). The activations' rounding (at most 2^-16 of each block's largest value) is far
// below the weights' own (2^-8 for Q8_0).
//
// The weights are widened to i16 by shifts, not by extend instructions (which x86 runs on one port only): a 16-bit
// lane holding bytes (e, o) gives e by shifting left 8 then right 8 (arithmetic), o by shifting right 8; Q4_0's
// nibbles likewise by shifts and masks, their -8 applied once per block as -8 · (sum of the block's activations).
// So a weight block comes out in the order [even elements 0-14, odd 1-15, even 16-30, odd 17-31], and the
// activations are stored in that order (the sum of products does not depend on it).

/** Quantizes K f32 activations at x to int16 blocks at xq (K/32 blocks of 64 bytes, in the order above), their
 *  scales (f32) at xs and the sums of each block's int16 values (i32) at xs + K/8. */
export function quantizeRowI16(x: usize, K: i32, xq: usize, xs: usize): void {
  const blocks = <usize>(K >> 5);
  const xsum = xs + (blocks << 2);
  for (let b: usize = 0; b < blocks; b++) {
    const p = x + (b << 7);
    const v0 = v128.load(p), v1 = v128.load(p, 16), v2 = v128.load(p, 32), v3 = v128.load(p, 48);
    const v4 = v128.load(p, 64), v5 = v128.load(p, 80), v6 = v128.load(p, 96), v7 = v128.load(p, 112);
    let m = f32x4.max(f32x4.max(f32x4.max(f32x4.abs(v0), f32x4.abs(v1)), f32x4.max(f32x4.abs(v2), f32x4.abs(v3))),
      f32x4.max(f32x4.max(f32x4.abs(v4), f32x4.abs(v5)), f32x4.max(f32x4.abs(v6), f32x4.abs(v7))));
    m = f32x4.max(m, i32x4.shuffle(m, m, 2, 3, 0, 1));
    const amax = max(f32x4.extract_lane(m, 0), f32x4.extract_lane(m, 1));
    const d: f32 = amax / 32767;
    const id = f32x4.splat(d != 0 ? <f32>1 / d : 0);
    store<f32>(xs + (b << 2), d);
    const q = xq + (b << 6);
    const n0 = i16x8.narrow_i32x4_s(toInt(v0, id), toInt(v1, id)), n1 = i16x8.narrow_i32x4_s(toInt(v2, id), toInt(v3, id));
    const n2 = i16x8.narrow_i32x4_s(toInt(v4, id), toInt(v5, id)), n3 = i16x8.narrow_i32x4_s(toInt(v6, id), toInt(v7, id));
    v128.store(q, i8x16.shuffle(n0, n1, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29));
    v128.store(q, i8x16.shuffle(n0, n1, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31), 16);
    v128.store(q, i8x16.shuffle(n2, n3, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29), 32);
    v128.store(q, i8x16.shuffle(n2, n3, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31), 48);
    let sum = i32x4.add(
      i32x4.add(i32x4.extadd_pairwise_i16x8_s(n0), i32x4.extadd_pairwise_i16x8_s(n1)),
      i32x4.add(i32x4.extadd_pairwise_i16x8_s(n2), i32x4.extadd_pairwise_i16x8_s(n3)));
    sum = i32x4.add(sum, i32x4.shuffle(sum, sum, 2, 3, 0, 1));
    store<i32>(xsum + (b << 2), i32x4.extract_lane(sum, 0) + i32x4.extract_lane(sum, 1));
  }
}
// @ts-ignore: decorator
@inline function toInt(v: v128, id: v128): v128 {
  return i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v, id)));
}

/** The exact i32 sums (4 lanes) of one weight block at blk times the int16 activation block at xq (Q4_0: of its
 *  nibbles 0-15, before the -8). */
// @ts-ignore: decorator
@inline function blockDotI<Q>(blk: usize, xq: usize): v128 {
  if (sizeof<Q>() == 1) {
    const w0 = v128.load(blk + 2), w1 = v128.load(blk + 18);
    return i32x4.add(
      i32x4.add(i32x4.dot_i16x8_s(i16x8.shr_s(i16x8.shl(w0, 8), 8), v128.load(xq)), i32x4.dot_i16x8_s(i16x8.shr_s(w0, 8), v128.load(xq, 16))),
      i32x4.add(i32x4.dot_i16x8_s(i16x8.shr_s(i16x8.shl(w1, 8), 8), v128.load(xq, 32)), i32x4.dot_i16x8_s(i16x8.shr_s(w1, 8), v128.load(xq, 48))));
  } else {
    const v = v128.load(blk + 2);
    const m = i16x8.splat(0x0f);
    return i32x4.add(
      i32x4.add(i32x4.dot_i16x8_s(v128.and(v, m), v128.load(xq)), i32x4.dot_i16x8_s(v128.and(i16x8.shr_u(v, 8), m), v128.load(xq, 16))),
      i32x4.add(i32x4.dot_i16x8_s(v128.and(i16x8.shr_u(v, 4), m), v128.load(xq, 32)), i32x4.dot_i16x8_s(i16x8.shr_u(v, 12), v128.load(xq, 48))));
  }
}

/** The f16 scales at p0..p3 as f32 lanes (scalarScale's arithmetic, on four lanes: no f32 denormal step). */
// @ts-ignore: decorator
@inline function scales4(p0: usize, p1: usize, p2: usize, p3: usize): v128 {
  let h = i32x4.splat(<i32>load<u16>(p0));
  h = i32x4.replace_lane(h, 1, <i32>load<u16>(p1));
  h = i32x4.replace_lane(h, 2, <i32>load<u16>(p2));
  h = i32x4.replace_lane(h, 3, <i32>load<u16>(p3));
  const em = v128.and(h, i32x4.splat(0x7fff));
  const normal = i32x4.add(i32x4.shl(em, 13), i32x4.splat(0x38000000));
  const sub = f32x4.mul(f32x4.convert_i32x4_s(em), f32x4.splat(5.9604644775390625e-8));
  const v = v128.bitselect(normal, sub, i32x4.ge_s(em, i32x4.splat(0x400)));
  return v128.or(v, i32x4.shl(v128.and(h, i32x4.splat(0x8000)), 16));
}

/** [sum of a's lanes, of b's, of c's, of d's] (i32: exact in any order). */
// @ts-ignore: decorator
@inline function sums4(a: v128, b: v128, c: v128, d: v128): v128 {
  const ab = i32x4.add(i32x4.shuffle(a, b, 0, 1, 4, 5), i32x4.shuffle(a, b, 2, 3, 6, 7));
  const cd = i32x4.add(i32x4.shuffle(c, d, 0, 1, 4, 5), i32x4.shuffle(c, d, 2, 3, 6, 7));
  return i32x4.add(i32x4.shuffle(ab, cd, 0, 2, 4, 6), i32x4.shuffle(ab, cd, 1, 3, 5, 7));
}

// One quantized row (xq, xs): y[n] = (sum over blocks b, in order, of f32(isum_b) · f32(dw_b · dx_b)) + bias[n], for
// n in [n0, n1). Four weight rows at a time, one output a lane: their four block sums are reduced to one vector,
// converted and scaled once. Past the range's last row the lanes repeat that row (computed, not stored), so an
// output's sequence of operations is the same wherever the range splits.
function matvecQI<Q>(xq: usize, xs: usize, K: i32, w: usize, bias: usize, yRow: usize, n0: i32, n1: i32): void {
  const bb: usize = sizeof<Q>() == 1 ? Q8_BYTES : Q4_BYTES;
  const blocks = <usize>(K >> 5);
  const wStride = blocks * bb;
  let n = n0;
  // two groups of four rows a pass: 8 streams of weights in flight.
  // The whole model's weights do not stay in cache, and one core alone streams them at only about the rate the
  // arithmetic needs: the two add up instead of overlapping. So each pass also touches one byte in every cache line
  // of the next pass's 8 rows (contiguous: 8 · bb bytes a block step, i.e. 4.25 lines for Q8_0, 2.25 for Q4_0), so
  // that their misses are in flight while this pass computes. Only inside the range (no touch past its last row);
  // the last pass touches its own rows. The loads change no result.
  let touched: u32 = 0;
  for (; n + 8 <= n1; n += 8) {
    const w0 = w + <usize>n * wStride;
    const next = n + 16 <= n1 ? w0 + 8 * wStride : w0;
    let acc = f32x4.splat(0), acc2 = acc;
    for (let b: usize = 0; b < blocks; b++) {
      const o = b * bb;
      const t = next + 8 * o; // this step's 8 · bb bytes of the next pass (the last touch stays below t + 8 · bb)
      touched |= load<u8>(t) | load<u8>(t, 64) | load<u8>(t, 128);
      if (sizeof<Q>() == 1) touched |= load<u8>(t, 192) | load<u8>(t, 256);
      acc = groupStep<Q>(acc, xq, xs, blocks, b, w0 + o, w0 + wStride + o, w0 + 2 * wStride + o, w0 + 3 * wStride + o);
      acc2 = groupStep<Q>(acc2, xq, xs, blocks, b, w0 + 4 * wStride + o, w0 + 5 * wStride + o, w0 + 6 * wStride + o, w0 + 7 * wStride + o);
    }
    storeGroup(acc, bias, yRow, n, 4);
    storeGroup(acc2, bias, yRow, n + 4, 4);
  }
  if (touched > 0xff) store<u32>(xq, touched); // never true (bytes OR to at most 0xff): keeps the touches' loads
  for (; n < n1; n += 4) {
    const last = n1 - 1;
    const w0 = w + <usize>n * wStride, w1 = w + <usize>min(n + 1, last) * wStride;
    const w2 = w + <usize>min(n + 2, last) * wStride, w3 = w + <usize>min(n + 3, last) * wStride;
    let acc = f32x4.splat(0);
    for (let b: usize = 0; b < blocks; b++) {
      const o = b * bb;
      acc = groupStep<Q>(acc, xq, xs, blocks, b, w0 + o, w1 + o, w2 + o, w3 + o);
    }
    storeGroup(acc, bias, yRow, n, min(4, n1 - n));
  }
}

/** acc + block b's terms of four weight rows (blocks at p0..p3), one output a lane. */
// @ts-ignore: decorator
@inline function groupStep<Q>(acc: v128, xq: usize, xs: usize, blocks: usize, b: usize, p0: usize, p1: usize, p2: usize, p3: usize): v128 {
  const xb = xq + (b << 6);
  let sums = sums4(blockDotI<Q>(p0, xb), blockDotI<Q>(p1, xb), blockDotI<Q>(p2, xb), blockDotI<Q>(p3, xb));
  if (sizeof<Q>() != 1) sums = i32x4.sub(sums, i32x4.splat(load<i32>(xs + (blocks << 2) + (b << 2)) << 3)); // Q4_0's -8
  const sc = f32x4.mul(scales4(p0, p1, p2, p3), v128.load32_splat(xs + (b << 2)));
  return madd(f32x4.convert_i32x4_s(sums), sc, acc);
}

/** Outputs n .. n + count - 1 from acc's lanes, plus the bias. */
// @ts-ignore: decorator
@inline function storeGroup(acc: v128, bias: usize, yRow: usize, n: i32, count: i32): void {
  const ya = yRow + (<usize>n << 2);
  for (let i = 0; i < count; i++) {
    let v = f32x4.extract_lane(acc, 0);
    if (i == 1) v = f32x4.extract_lane(acc, 1);
    else if (i == 2) v = f32x4.extract_lane(acc, 2);
    else if (i == 3) v = f32x4.extract_lane(acc, 3);
    if (bias != 0) v += load<f32>(bias + (<usize>(n + i) << 2));
    store<f32>(ya + (<usize>i << 2), v);
  }
}

// y[t] = x[t] · dequant(w)ᵀ + bias through int16 activations, for t in [0, T) and weight rows [n0, n1); scratch:
// this thread's 2·K + K/4 bytes at least (each thread quantizes the rows itself: no second pass over the pool).
function matmulQI<Q>(x: usize, ldx: i32, T: i32, K: i32, w: usize, bias: usize, y: usize, ldy: i32, scratch: usize, n0: i32, n1: i32): void {
  const xs = scratch + (<usize>K << 1);
  for (let t = 0; t < T; t++) {
    quantizeRowI16(x + <usize>t * (<usize>ldx << 2), K, scratch, xs);
    matvecQI<Q>(scratch, xs, K, w, bias, y + <usize>t * (<usize>ldy << 2), n0, n1);
  }
}
export function matmulQ8_0I16(x: usize, ldx: i32, T: i32, K: i32, w: usize, bias: usize, y: usize, ldy: i32, scratch: usize, n0: i32, n1: i32): void {
  matmulQI<Q8>(x, ldx, T, K, w, bias, y, ldy, scratch, n0, n1);
}
export function matmulQ4_0I16(x: usize, ldx: i32, T: i32, K: i32, w: usize, bias: usize, y: usize, ldy: i32, scratch: usize, n0: i32, n1: i32): void {
  matmulQI<Q4>(x, ldx, T, K, w, bias, y, ldy, scratch, n0, n1);
}

// y[t, n] = x[t] · dequant(w[n]) + bias[n] for t in [0, T), n in [n0, n1).
// x: f32 rows of ldx elements (K used, K a multiple of 32); w: [N, K] in blocks; bias: f32 [N] or 0; y: f32 rows of
// ldy elements; scratch: this thread's 16·K bytes.
// Few rows (decode) widen the weights in registers, row by row: bound by the weights' bytes, read once a row. More
// rows (prefill) dequantize each block of 4 weight rows once per chunk of rows into scratch and run the f32
// product over it (matmul.ts's blocking of 2 rows x 4 weight rows), which widens each weight once per chunk
// instead of once per row. Both give matmulF32's result over the dequantized weights.
function matmulQ<Q>(x: usize, ldx: i32, T: i32, K: i32, w: usize, bias: usize, y: usize, ldy: i32, scratch: usize, n0: i32, n1: i32): void {
  const xStride = <usize>ldx << 2;
  const yStride = <usize>ldy << 2;
  if (T < 4) {
    for (let t = 0; t < T; t++) matvecQ<Q>(x + <usize>t * xStride, K, w, bias, y + <usize>t * yStride, n0, n1);
    return;
  }
  const bb: usize = sizeof<Q>() == 1 ? Q8_BYTES : Q4_BYTES;
  const blocks = <usize>(K >> 5);
  const wStride = blocks * bb;
  const chunk = max(2, (65536 / max(K, 1)) & ~1);
  for (let t0 = 0; t0 < T; t0 += chunk) {
    const rows = min(chunk, T - t0);
    const xc = x + <usize>t0 * xStride;
    const yc = y + <usize>t0 * yStride;
    let n = n0;
    for (; n + 4 <= n1; n += 4) {
      const src = w + <usize>n * wStride; // 4 weight rows are contiguous: 4·blocks blocks
      for (let b: usize = 0; b < 4 * blocks; b++) dequantBlock<Q>(src + b * bb, scratch + (b << 7));
      matmulF32(xc, ldx, rows, K, scratch, bias != 0 ? bias + (<usize>n << 2) : 0, yc + (<usize>n << 2), ldy, 0, 4);
    }
    for (; n < n1; n++) {
      const src = w + <usize>n * wStride;
      for (let b: usize = 0; b < blocks; b++) dequantBlock<Q>(src + b * bb, scratch + (b << 7));
      matmulF32(xc, ldx, rows, K, scratch, bias != 0 ? bias + (<usize>n << 2) : 0, yc + (<usize>n << 2), ldy, 0, 1);
    }
  }
}

/** y = x · dequant(w)ᵀ + bias over Q8_0 weights, for weight rows (outputs) [n0, n1); scratch: 16·K bytes. */
export function matmulQ8_0(x: usize, ldx: i32, T: i32, K: i32, w: usize, bias: usize, y: usize, ldy: i32, scratch: usize, n0: i32, n1: i32): void {
  matmulQ<Q8>(x, ldx, T, K, w, bias, y, ldy, scratch, n0, n1);
}
/** y = x · dequant(w)ᵀ + bias over Q4_0 weights, for weight rows (outputs) [n0, n1); scratch: 16·K bytes. */
export function matmulQ4_0(x: usize, ldx: i32, T: i32, K: i32, w: usize, bias: usize, y: usize, ldy: i32, scratch: usize, n0: i32, n1: i32): void {
  matmulQ<Q4>(x, ldx, T, K, w, bias, y, ldy, scratch, n0, n1);
}

// out[t] = dequant(table[ids[t]]) for t in [t0, t1). table: [V, D] in blocks (D a multiple of 32); ids: i32 [T];
// out: f32 [T, D].
function embeddingQ<Q>(table: usize, D: i32, ids: usize, out: usize, t0: i32, t1: i32): void {
  const bb: usize = sizeof<Q>() == 1 ? Q8_BYTES : Q4_BYTES;
  const blocks = <usize>(D >> 5);
  for (let t = t0; t < t1; t++) {
    const src = table + <usize>load<i32>(ids + (<usize>t << 2)) * blocks * bb;
    const dst = out + <usize>t * <usize>D * 4;
    for (let b: usize = 0; b < blocks; b++) dequantBlock<Q>(src + b * bb, dst + (b << 7));
  }
}
export function embeddingQ8_0(table: usize, D: i32, ids: usize, out: usize, t0: i32, t1: i32): void {
  embeddingQ<Q8>(table, D, ids, out, t0, t1);
}
export function embeddingQ4_0(table: usize, D: i32, ids: usize, out: usize, t0: i32, t1: i32): void {
  embeddingQ<Q4>(table, D, ids, out, t0, t1);
}

// Dequantizes blocks [b0, b1) at src to f32 at dst (32 values a block): a quantized tensor that an op reads as f32.
export function dequantQ8_0(src: usize, dst: usize, b0: i32, b1: i32): void {
  for (let b = <usize>b0; b < <usize>b1; b++) dequantBlock<Q8>(src + b * Q8_BYTES, dst + (b << 7));
}
export function dequantQ4_0(src: usize, dst: usize, b0: i32, b1: i32): void {
  for (let b = <usize>b0; b < <usize>b1; b++) dequantBlock<Q4>(src + b * Q4_BYTES, dst + (b << 7));
}
