// Products with a weight matrix, the embedding gather, the greedy choice and a memory-bandwidth probe.
//
// ABI (every kernel): byte offsets into the shared memory, sizes in elements, and a work range [r0, r1) last, which
// the thread pool splits between threads. Each output is computed by exactly one thread, by the same sequence of
// operations whatever the range it falls in, so results do not depend on the number of threads.
//
// Weights W are f32, f16 or bf16 (the checkpoint's storage, kept at its size) and widened in registers. The type
// parameter W says which: f32, F16 (= u16) or BF16 (= i16).
//   f16 -> f32: the half's exponent and mantissa shifted into an f32's place (its sign to bit 31), times 2^112,
//   which rebiases the exponent (normal and subnormal halves alike): 4 instructions for 4 weights. Half infinities
//   and NaNs read as large finite values (65536 and above): checkpoints do not hold them.
//   bf16 -> f32: the 16 bits are the f32's upper half.
import { madd, hsum } from "./simd";

type F16 = u16;
type BF16 = i16;

const TWO_POW_112: f32 = 5.192296858534828e33;

/** Four consecutive weights from byte offset p, as f32 lanes. */
// @ts-ignore: decorator
@inline function load4<W>(p: usize): v128 {
  if (isFloat<W>()) {
    return v128.load(p);
  } else if (isSigned<W>()) {
    return i32x4.shl(v128.load16x4_u(p), 16);
  } else {
    // sign-extended, shifted by 13: exponent and mantissa land in an f32's place (bits 13-27), the sign's copies
    // fill bits 28-31; the mask keeps bit 31 of them
    const bits = v128.and(i32x4.shl(v128.load16x4_s(p), 13), i32x4.splat(0x8fffffff));
    return f32x4.mul(bits, f32x4.splat(TWO_POW_112));
  }
}

/** One weight at byte offset p, as f32 (the same arithmetic as load4). */
// @ts-ignore: decorator
@inline function load1<W>(p: usize): f32 {
  if (isFloat<W>()) {
    return load<f32>(p);
  } else if (isSigned<W>()) {
    return reinterpret<f32>(<u32>load<u16>(p) << 16);
  } else {
    return reinterpret<f32>((<u32><i32>load<i16>(p) << 13) & 0x8fffffff) * TWO_POW_112;
  }
}

/** The output of one (row, weight row) pair: the vector sum, then the K % 4 tail in order, then the bias. */
// @ts-ignore: decorator
@inline function finish<W>(acc: v128, xRow: usize, wRow: usize, k4: i32, K: i32, bias: usize, n: i32): f32 {
  let s = hsum(acc);
  for (let k = k4; k < K; k++) s += load<f32>(xRow + (<usize>k << 2)) * load1<W>(wRow + <usize>k * sizeof<W>());
  if (bias != 0) s += load<f32>(bias + (<usize>n << 2));
  return s;
}

// y[t, n] = sum_k x[t, k] * w[n, k] + bias[n] for t in [0, T), n in [n0, n1).
// x: f32 rows of ldx elements (K used); w: [N, K] of W; bias: f32 [N] or 0; y: f32 rows of ldy elements.
// Pairs of rows go by blocks of 2 rows x 4 weight rows: 8 vector sums in registers, each loaded vector used twice
// or four times. The rows go by chunks of at most 256 KB of x, so that a chunk stays in L2 while every weight
// block of the range passes over it, and a 4-row weight block stays in L1 across the chunk's rows. A row left
// alone (all of decode, where T is the batch) is a matrix-vector product over 8 weight rows at a time: 8
// independent sums, 8 streams of weights. Every output has one vector sum, fed in the same order by every kind of
// block, so the blocking never changes a result.
function matmulT<W>(x: usize, ldx: i32, T: i32, K: i32, w: usize, bias: usize, y: usize, ldy: i32, n0: i32, n1: i32): void {
  const ws = <usize>sizeof<W>();
  const k4 = K & ~3;
  const xStride = <usize>ldx << 2;
  const yStride = <usize>ldy << 2;
  const wStride = <usize>K * ws;
  const chunk = max(2, (65536 / max(K, 1)) & ~1);
  for (let t0 = 0; t0 < T; t0 += chunk) {
    const t1 = min(T, t0 + chunk);
    const pairsEnd = t0 + ((t1 - t0) & ~1);
    let n = n0;
    if (pairsEnd > t0) {
      for (; n + 4 <= n1; n += 4) {
        const w0 = w + <usize>n * wStride, w1 = w0 + wStride, w2 = w1 + wStride, w3 = w2 + wStride;
        for (let t = t0; t < pairsEnd; t += 2) {
          const xa = x + <usize>t * xStride, xb = xa + xStride;
          let a0 = f32x4.splat(0), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
          for (let k = 0; k < k4; k += 4) {
            const va = v128.load(xa + (<usize>k << 2)), vb = v128.load(xb + (<usize>k << 2));
            const o = <usize>k * ws;
            const q0 = load4<W>(w0 + o);
            a0 = madd(va, q0, a0); b0 = madd(vb, q0, b0);
            const q1 = load4<W>(w1 + o);
            a1 = madd(va, q1, a1); b1 = madd(vb, q1, b1);
            const q2 = load4<W>(w2 + o);
            a2 = madd(va, q2, a2); b2 = madd(vb, q2, b2);
            const q3 = load4<W>(w3 + o);
            a3 = madd(va, q3, a3); b3 = madd(vb, q3, b3);
          }
          const ya = y + <usize>t * yStride + (<usize>n << 2), yb = ya + yStride;
          store<f32>(ya, finish<W>(a0, xa, w0, k4, K, bias, n));
          store<f32>(ya, finish<W>(a1, xa, w1, k4, K, bias, n + 1), 4);
          store<f32>(ya, finish<W>(a2, xa, w2, k4, K, bias, n + 2), 8);
          store<f32>(ya, finish<W>(a3, xa, w3, k4, K, bias, n + 3), 12);
          store<f32>(yb, finish<W>(b0, xb, w0, k4, K, bias, n));
          store<f32>(yb, finish<W>(b1, xb, w1, k4, K, bias, n + 1), 4);
          store<f32>(yb, finish<W>(b2, xb, w2, k4, K, bias, n + 2), 8);
          store<f32>(yb, finish<W>(b3, xb, w3, k4, K, bias, n + 3), 12);
        }
      }
      for (; n < n1; n++) {
        for (let t = t0; t < pairsEnd; t++) rowDot<W>(x + <usize>t * xStride, w + <usize>n * wStride, k4, K, bias, n, y + <usize>t * yStride);
      }
    }
    if (pairsEnd < t1) matvecT<W>(x + <usize>pairsEnd * xStride, K, w, bias, y + <usize>pairsEnd * yStride, n0, n1);
  }
}

/** One output: row xa times weight row n (the same sequence as the blocks). */
// @ts-ignore: decorator
@inline function rowDot<W>(xa: usize, wn: usize, k4: i32, K: i32, bias: usize, n: i32, yRow: usize): void {
  const ws = <usize>sizeof<W>();
  let a0 = f32x4.splat(0);
  for (let k = 0; k < k4; k += 4) a0 = madd(v128.load(xa + (<usize>k << 2)), load4<W>(wn + <usize>k * ws), a0);
  store<f32>(yRow + (<usize>n << 2), finish<W>(a0, xa, wn, k4, K, bias, n));
}

// One row: y[n] = x · w[n] + bias[n] for n in [n0, n1), 8 weight rows at a time.
function matvecT<W>(xa: usize, K: i32, w: usize, bias: usize, yRow: usize, n0: i32, n1: i32): void {
  const ws = <usize>sizeof<W>();
  const k4 = K & ~3;
  const wStride = <usize>K * ws;
  let n = n0;
  for (; n + 8 <= n1; n += 8) {
    const w0 = w + <usize>n * wStride, w1 = w0 + wStride, w2 = w1 + wStride, w3 = w2 + wStride;
    const w4 = w3 + wStride, w5 = w4 + wStride, w6 = w5 + wStride, w7 = w6 + wStride;
    let a0 = f32x4.splat(0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (let k = 0; k < k4; k += 4) {
      const va = v128.load(xa + (<usize>k << 2));
      const o = <usize>k * ws;
      a0 = madd(va, load4<W>(w0 + o), a0);
      a1 = madd(va, load4<W>(w1 + o), a1);
      a2 = madd(va, load4<W>(w2 + o), a2);
      a3 = madd(va, load4<W>(w3 + o), a3);
      a4 = madd(va, load4<W>(w4 + o), a4);
      a5 = madd(va, load4<W>(w5 + o), a5);
      a6 = madd(va, load4<W>(w6 + o), a6);
      a7 = madd(va, load4<W>(w7 + o), a7);
    }
    const ya = yRow + (<usize>n << 2);
    store<f32>(ya, finish<W>(a0, xa, w0, k4, K, bias, n));
    store<f32>(ya, finish<W>(a1, xa, w1, k4, K, bias, n + 1), 4);
    store<f32>(ya, finish<W>(a2, xa, w2, k4, K, bias, n + 2), 8);
    store<f32>(ya, finish<W>(a3, xa, w3, k4, K, bias, n + 3), 12);
    store<f32>(ya, finish<W>(a4, xa, w4, k4, K, bias, n + 4), 16);
    store<f32>(ya, finish<W>(a5, xa, w5, k4, K, bias, n + 5), 20);
    store<f32>(ya, finish<W>(a6, xa, w6, k4, K, bias, n + 6), 24);
    store<f32>(ya, finish<W>(a7, xa, w7, k4, K, bias, n + 7), 28);
  }
  for (; n < n1; n++) rowDot<W>(xa, w + <usize>n * wStride, k4, K, bias, n, yRow);
}

/** y = x · wᵀ + bias over f32 weights, for weight rows (outputs) [n0, n1). */
export function matmulF32(x: usize, ldx: i32, T: i32, K: i32, w: usize, bias: usize, y: usize, ldy: i32, n0: i32, n1: i32): void {
  matmulT<f32>(x, ldx, T, K, w, bias, y, ldy, n0, n1);
}
// The product over half-precision weights. One or few rows (decode) widen the weights in registers: the product
// is bound by memory there, and the weights are read once. More rows (prefill) would widen every weight once per
// pair of rows, which costs more than the multiply-adds: there each block of 4 weight rows is widened once per
// chunk of rows into `scratch` (this thread's 16·K bytes), then multiplied as f32. The widened values and the
// order of the sums are the same either way, so the results are too.
function matmulHalfT<W>(x: usize, ldx: i32, T: i32, K: i32, w: usize, bias: usize, y: usize, ldy: i32, scratch: usize, n0: i32, n1: i32): void {
  if (T < 4) {
    // pairs of rows as blocks; a row left alone (decode) by matvecHalf, which widens 8 weights at a time
    const pairs = T & ~1;
    if (pairs > 0) matmulT<W>(x, ldx, pairs, K, w, bias, y, ldy, n0, n1);
    if (pairs < T) {
      const xa = x + <usize>pairs * (<usize>ldx << 2), ya = y + <usize>pairs * (<usize>ldy << 2);
      if (isSigned<W>()) matvecHalf<W>(xa, xa, K, w, bias, ya, n0, n1);
      else if (scaleRow(xa, K, scratch)) matvecHalf<W>(scratch, xa, K, w, bias, ya, n0, n1);
      else matvecT<W>(xa, K, w, bias, ya, n0, n1);
    }
    return;
  }
  const wStride = <usize>K * sizeof<W>();
  const chunk = max(2, (65536 / max(K, 1)) & ~1);
  for (let t0 = 0; t0 < T; t0 += chunk) {
    const rows = min(chunk, T - t0);
    const xc = x + <usize>t0 * (<usize>ldx << 2);
    const yc = y + <usize>t0 * (<usize>ldy << 2);
    let n = n0;
    for (; n + 4 <= n1; n += 4) {
      widenInto<W>(w + <usize>n * wStride, scratch, 0, 4 * K); // 4 weight rows are contiguous
      matmulT<f32>(xc, ldx, rows, K, scratch, bias != 0 ? bias + (<usize>n << 2) : 0, yc + (<usize>n << 2), ldy, 0, 4);
    }
    if (n < n1) matmulT<W>(xc, ldx, rows, K, w, bias, yc, ldy, n, n1);
  }
}

// The lone row over f16 weights without the multiply by 2^112 of load4: the weights are taken as w · 2^-112 (their
// bits in an f32's place, 3 instructions for 4 weights) and the row as x · 2^112, written once per call into the
// thread's scratch. Both scalings are exact (powers of two, no f32 overflow or underflow: |x| < 2^15, and w · 2^-112
// is exactly the f32 that load4 multiplies), so every product x·2^112 · w·2^-112 is the real number x · w, and each
// sum, fused or not, rounds as in matvecT<F16>: the results are the same bits. Returns false, writing nothing, where
// some |x| >= 2^15 (or NaN): matvecT takes that row.
function scaleRow(xa: usize, K: i32, dst: usize): bool {
  const k4 = K & ~3;
  let m = f32x4.splat(0);
  for (let k = 0; k < k4; k += 4) m = f32x4.max(m, f32x4.abs(v128.load(xa + (<usize>k << 2))));
  let mx = max(max(f32x4.extract_lane(m, 0), f32x4.extract_lane(m, 1)), max(f32x4.extract_lane(m, 2), f32x4.extract_lane(m, 3)));
  for (let k = k4; k < K; k++) mx = max(mx, abs(load<f32>(xa + (<usize>k << 2))));
  if (!(mx < 32768)) return false;
  const s = f32x4.splat(TWO_POW_112);
  for (let k = 0; k < k4; k += 4) v128.store(dst + (<usize>k << 2), f32x4.mul(v128.load(xa + (<usize>k << 2)), s));
  for (let k = k4; k < K; k++) store<f32>(dst + (<usize>k << 2), load<f32>(xa + (<usize>k << 2)) * TWO_POW_112);
  return true;
}

/** Weights p[0..3] (lo) and p[4..7] (hi) as f32 lanes: bf16 as load4; f16 as load4's bits before its multiply (the
 *  weight times 2^-112). One load for 8 weights, then 2 (bf16) or 5 (f16) instructions. */
// @ts-ignore: decorator
@inline function load8lo<W>(v: v128): v128 {
  if (isSigned<W>()) return i16x8.shuffle(i16x8.splat(0), v, 0, 8, 1, 9, 2, 10, 3, 11);
  // upper half: the sign, then half bits 14-3 (bits 27-16); lower half: half bits 2-0 (bits 15-13)
  return i16x8.shuffle(i16x8.shl(v, 13), v128.and(i16x8.shr_s(v, 3), i16x8.splat(<i16>0x8fff)), 0, 8, 1, 9, 2, 10, 3, 11);
}
// @ts-ignore: decorator
@inline function load8hi<W>(v: v128): v128 {
  if (isSigned<W>()) return i16x8.shuffle(i16x8.splat(0), v, 4, 12, 5, 13, 6, 14, 7, 15);
  return i16x8.shuffle(i16x8.shl(v, 13), v128.and(i16x8.shr_s(v, 3), i16x8.splat(<i16>0x8fff)), 4, 12, 5, 13, 6, 14, 7, 15);
}
/** Four weights at p, exactly (f16: normal halves rebiased in the integer bits, subnormal ones their integer
 *  mantissa times 2^-24, as quant.ts's scales: no step holds an f32 subnormal, which x86 CPUs take about a hundred
 *  times slower than a normal number). */
// @ts-ignore: decorator
@inline function load4exact<W>(p: usize): v128 {
  if (isSigned<W>()) return load4<W>(p);
  const hs = v128.load16x4_s(p);
  const em = v128.and(hs, i32x4.splat(0x7fff));
  const normal = i32x4.add(i32x4.shl(em, 13), i32x4.splat(0x38000000));
  const subnormal = f32x4.mul(f32x4.convert_i32x4_s(em), f32x4.splat(5.9604644775390625e-8));
  const mag = v128.bitselect(normal, subnormal, i32x4.ge_s(em, i32x4.splat(0x400)));
  return v128.or(mag, v128.and(hs, i32x4.splat(0x80000000)));
}
/** One weight at p as load4exact widens it. */
// @ts-ignore: decorator
@inline function load1exact<W>(p: usize): f32 {
  if (isSigned<W>()) return load1<W>(p);
  const h = <u32>load<u16>(p);
  const em = h & 0x7fff;
  const v = em >= 0x400 ? reinterpret<f32>((em << 13) + 0x38000000) : <f32>em * 5.9604644775390625e-8;
  return reinterpret<f32>(reinterpret<u32>(v) | ((h & 0x8000) << 16));
}

// One row of a half-precision product, as matvecT (8 weight rows at a time, the same order of the sums, so the same
// bits) with 8 weights of a row per load. bf16: xs = xo, the row. f16: xs is the row scaled by scaleRow and xo the
// row itself; a block of 8 rows x 8 weights goes by the scaled product (load8lo/hi, no multiply) unless one of its
// halves is subnormal or zero, whose weight · 2^-112 would be an f32 subnormal: in such a block (about 1 in 13 at
// 0.1% subnormal halves) each row's 8 halves are looked at (step8), and those with one take x itself times the exact
// weights (load4exact), the same products; so do the rows left over and the K % 8 tail.
function matvecHalf<W>(xs: usize, xo: usize, K: i32, w: usize, bias: usize, yRow: usize, n0: i32, n1: i32): void {
  const k8 = K & ~7, k4 = K & ~3;
  const wStride = <usize>K << 1;
  let n = n0;
  for (; n + 8 <= n1; n += 8) {
    const w0 = w + <usize>n * wStride, w1 = w0 + wStride, w2 = w1 + wStride, w3 = w2 + wStride;
    const w4 = w3 + wStride, w5 = w4 + wStride, w6 = w5 + wStride, w7 = w6 + wStride;
    let a0 = f32x4.splat(0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    let k = 0;
    for (; k < k8; k += 8) {
      const o = <usize>k << 1;
      if (!isSigned<W>()) {
        // the smallest magnitude (bits 14-0, shifted up by one) among the block's 64 halves: below 0x0800 where
        // some exponent is 0
        let m = i16x8.min_u(i16x8.shl(v128.load(w0 + o), 1), i16x8.shl(v128.load(w1 + o), 1));
        m = i16x8.min_u(m, i16x8.min_u(i16x8.shl(v128.load(w2 + o), 1), i16x8.shl(v128.load(w3 + o), 1)));
        m = i16x8.min_u(m, i16x8.min_u(i16x8.shl(v128.load(w4 + o), 1), i16x8.shl(v128.load(w5 + o), 1)));
        m = i16x8.min_u(m, i16x8.min_u(i16x8.shl(v128.load(w6 + o), 1), i16x8.shl(v128.load(w7 + o), 1)));
        if (v128.any_true(i16x8.lt_u(m, i16x8.splat(0x0800)))) {
          const va = v128.load(xs + (<usize>k << 2)), vb = v128.load(xs + (<usize>k << 2), 16);
          const xa = v128.load(xo + (<usize>k << 2)), xb = v128.load(xo + (<usize>k << 2), 16);
          a0 = step8<W>(a0, w0 + o, va, vb, xa, xb);
          a1 = step8<W>(a1, w1 + o, va, vb, xa, xb);
          a2 = step8<W>(a2, w2 + o, va, vb, xa, xb);
          a3 = step8<W>(a3, w3 + o, va, vb, xa, xb);
          a4 = step8<W>(a4, w4 + o, va, vb, xa, xb);
          a5 = step8<W>(a5, w5 + o, va, vb, xa, xb);
          a6 = step8<W>(a6, w6 + o, va, vb, xa, xb);
          a7 = step8<W>(a7, w7 + o, va, vb, xa, xb);
          continue;
        }
      }
      const va = v128.load(xs + (<usize>k << 2)), vb = v128.load(xs + (<usize>k << 2), 16);
      let v = v128.load(w0 + o);
      a0 = madd(vb, load8hi<W>(v), madd(va, load8lo<W>(v), a0));
      v = v128.load(w1 + o);
      a1 = madd(vb, load8hi<W>(v), madd(va, load8lo<W>(v), a1));
      v = v128.load(w2 + o);
      a2 = madd(vb, load8hi<W>(v), madd(va, load8lo<W>(v), a2));
      v = v128.load(w3 + o);
      a3 = madd(vb, load8hi<W>(v), madd(va, load8lo<W>(v), a3));
      v = v128.load(w4 + o);
      a4 = madd(vb, load8hi<W>(v), madd(va, load8lo<W>(v), a4));
      v = v128.load(w5 + o);
      a5 = madd(vb, load8hi<W>(v), madd(va, load8lo<W>(v), a5));
      v = v128.load(w6 + o);
      a6 = madd(vb, load8hi<W>(v), madd(va, load8lo<W>(v), a6));
      v = v128.load(w7 + o);
      a7 = madd(vb, load8hi<W>(v), madd(va, load8lo<W>(v), a7));
    }
    if (k < k4) {
      const va = v128.load(xo + (<usize>k << 2));
      const o = <usize>k << 1;
      a0 = madd(va, load4exact<W>(w0 + o), a0);
      a1 = madd(va, load4exact<W>(w1 + o), a1);
      a2 = madd(va, load4exact<W>(w2 + o), a2);
      a3 = madd(va, load4exact<W>(w3 + o), a3);
      a4 = madd(va, load4exact<W>(w4 + o), a4);
      a5 = madd(va, load4exact<W>(w5 + o), a5);
      a6 = madd(va, load4exact<W>(w6 + o), a6);
      a7 = madd(va, load4exact<W>(w7 + o), a7);
    }
    const ya = yRow + (<usize>n << 2);
    store<f32>(ya, finishHalf<W>(a0, xo, w0, k4, K, bias, n));
    store<f32>(ya, finishHalf<W>(a1, xo, w1, k4, K, bias, n + 1), 4);
    store<f32>(ya, finishHalf<W>(a2, xo, w2, k4, K, bias, n + 2), 8);
    store<f32>(ya, finishHalf<W>(a3, xo, w3, k4, K, bias, n + 3), 12);
    store<f32>(ya, finishHalf<W>(a4, xo, w4, k4, K, bias, n + 4), 16);
    store<f32>(ya, finishHalf<W>(a5, xo, w5, k4, K, bias, n + 5), 20);
    store<f32>(ya, finishHalf<W>(a6, xo, w6, k4, K, bias, n + 6), 24);
    store<f32>(ya, finishHalf<W>(a7, xo, w7, k4, K, bias, n + 7), 28);
  }
  for (; n < n1; n++) {
    const wn = w + <usize>n * wStride;
    let a0 = f32x4.splat(0);
    for (let k = 0; k < k4; k += 4) a0 = madd(v128.load(xo + (<usize>k << 2)), load4exact<W>(wn + (<usize>k << 1)), a0);
    store<f32>(yRow + (<usize>n << 2), finishHalf<W>(a0, xo, wn, k4, K, bias, n));
  }
}

/** acc + 8 products of one f16 weight row at p: scaled (va, vb: x · 2^112; no multiply) unless one of the 8 halves
 *  is subnormal or zero, then exact (xa, xb: x itself). */
// @ts-ignore: decorator
@inline function step8<W>(acc: v128, p: usize, va: v128, vb: v128, xa: v128, xb: v128): v128 {
  const v = v128.load(p);
  if (v128.any_true(i16x8.lt_u(i16x8.shl(v, 1), i16x8.splat(0x0800)))) {
    return madd(xb, load4exact<W>(p + 8), madd(xa, load4exact<W>(p), acc));
  }
  return madd(vb, load8hi<W>(v), madd(va, load8lo<W>(v), acc));
}

/** finish for matvecHalf: x itself times the exact weights in the tail. */
// @ts-ignore: decorator
@inline function finishHalf<W>(acc: v128, xRow: usize, wRow: usize, k4: i32, K: i32, bias: usize, n: i32): f32 {
  let s = hsum(acc);
  for (let k = k4; k < K; k++) s += load<f32>(xRow + (<usize>k << 2)) * load1exact<W>(wRow + (<usize>k << 1));
  if (bias != 0) s += load<f32>(bias + (<usize>n << 2));
  return s;
}

/** y = x · wᵀ + bias over f16 weights, for weight rows (outputs) [n0, n1); scratch: 16·K bytes of this thread. */
export function matmulF16(x: usize, ldx: i32, T: i32, K: i32, w: usize, bias: usize, y: usize, ldy: i32, scratch: usize, n0: i32, n1: i32): void {
  matmulHalfT<F16>(x, ldx, T, K, w, bias, y, ldy, scratch, n0, n1);
}
/** y = x · wᵀ + bias over bf16 weights, for weight rows (outputs) [n0, n1); scratch: 16·K bytes of this thread. */
export function matmulBF16(x: usize, ldx: i32, T: i32, K: i32, w: usize, bias: usize, y: usize, ldy: i32, scratch: usize, n0: i32, n1: i32): void {
  matmulHalfT<BF16>(x, ldx, T, K, w, bias, y, ldy, scratch, n0, n1);
}

// out[t] = table[ids[t]] widened to f32, for t in [t0, t1). table: [V, D] of W; ids: i32 [T]; out: f32 [T, D].
function embeddingT<W>(table: usize, D: i32, ids: usize, out: usize, t0: i32, t1: i32): void {
  const ws = <usize>sizeof<W>();
  const d4 = D & ~3;
  for (let t = t0; t < t1; t++) {
    const src = table + <usize>load<i32>(ids + (<usize>t << 2)) * <usize>D * ws;
    const dst = out + <usize>t * <usize>D * 4;
    let d = 0;
    for (; d < d4; d += 4) v128.store(dst + (<usize>d << 2), load4<W>(src + <usize>d * ws));
    for (; d < D; d++) store<f32>(dst + (<usize>d << 2), load1<W>(src + <usize>d * ws));
  }
}
export function embeddingF32(table: usize, D: i32, ids: usize, out: usize, t0: i32, t1: i32): void {
  embeddingT<f32>(table, D, ids, out, t0, t1);
}
export function embeddingF16(table: usize, D: i32, ids: usize, out: usize, t0: i32, t1: i32): void {
  embeddingT<F16>(table, D, ids, out, t0, t1);
}
export function embeddingBF16(table: usize, D: i32, ids: usize, out: usize, t0: i32, t1: i32): void {
  embeddingT<BF16>(table, D, ids, out, t0, t1);
}

// Widens n values of W at src to f32 at dst (a half-precision tensor that a reference op reads as f32).
export function widenF16(src: usize, dst: usize, r0: i32, r1: i32): void {
  widenInto<F16>(src, dst, r0, r1);
}
export function widenBF16(src: usize, dst: usize, r0: i32, r1: i32): void {
  widenInto<BF16>(src, dst, r0, r1);
}
// @ts-ignore: decorator
@inline function widenInto<W>(src: usize, dst: usize, r0: i32, r1: i32): void {
  let i = r0;
  for (; i + 4 <= r1; i += 4) v128.store(dst + (<usize>i << 2), load4<W>(src + <usize>i * sizeof<W>()));
  for (; i < r1; i++) store<f32>(dst + (<usize>i << 2), load1<W>(src + <usize>i * sizeof<W>()));
}

// ids[r] = the first index of the largest value of logits row r (its first V values), for rows [r0, r1).
// logits: f32 rows of ld elements. NaN never wins (as the reference's strict comparison).
export function argmaxRows(logits: usize, ld: i32, V: i32, ids: usize, r0: i32, r1: i32): void {
  for (let r = r0; r < r1; r++) {
    const row = logits + <usize>r * (<usize>ld << 2);
    let best = 0;
    let bestValue = load<f32>(row);
    for (let i = 1; i < V; i++) {
      const v = load<f32>(row + (<usize>i << 2));
      if (v > bestValue) { bestValue = v; best = i; }
    }
    store<i32>(ids + (<usize>r << 2), best);
  }
}

// Reads 64-byte blocks [b0, b1) from src (4 independent sums) and writes their sum to out: a probe of the memory
// bandwidth that the products can reach.
export function streamRead(src: usize, out: usize, b0: i32, b1: i32): void {
  let a0 = f32x4.splat(0), a1 = a0, a2 = a0, a3 = a0;
  for (let b = b0; b < b1; b++) {
    const p = src + (<usize>b << 6);
    a0 = f32x4.add(a0, v128.load(p));
    a1 = f32x4.add(a1, v128.load(p, 16));
    a2 = f32x4.add(a2, v128.load(p, 32));
    a3 = f32x4.add(a3, v128.load(p, 48));
  }
  store<f32>(out, hsum(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3))));
}

/** Where the module's static data ends: the host allocates above it. */
export function heapBase(): usize {
  return __heap_base;
}
