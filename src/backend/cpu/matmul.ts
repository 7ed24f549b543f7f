/**
 * y = x · wᵀ + bias, the projections of the model (PyTorch Linear layout: w is [Nout, K]).
 * Both operands are read along contiguous rows; 4×4 blocks of (x row, w row) pairs keep 16 running sums in
 * locals so that each loaded value is used four times.
 */
import type { Strided } from "./tensor.ts";

// x: [T, K] window, w: [Nout, K], bias: [Nout] | null -> y: [T, Nout]
export function matmulF32(x: Strided, w: Float32Array, nOut: number, bias: Float32Array | null, y: Float32Array): void {
  const { data: xd, ld, off, width: K, rows: T } = x;
  let r = 0;
  for (; r + 4 <= T; r += 4) {
    const x0 = r * ld + off, x1 = x0 + ld, x2 = x1 + ld, x3 = x2 + ld;
    let n = 0;
    for (; n + 4 <= nOut; n += 4) {
      const w0 = n * K, w1 = w0 + K, w2 = w1 + K, w3 = w2 + K;
      let s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
      let s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
      for (let k = 0; k < K; k++) {
        const a0 = xd[x0 + k]!, a1 = xd[x1 + k]!, a2 = xd[x2 + k]!, a3 = xd[x3 + k]!;
        const b0 = w[w0 + k]!, b1 = w[w1 + k]!, b2 = w[w2 + k]!, b3 = w[w3 + k]!;
        s00 += a0 * b0; s01 += a0 * b1; s02 += a0 * b2; s03 += a0 * b3;
        s10 += a1 * b0; s11 += a1 * b1; s12 += a1 * b2; s13 += a1 * b3;
        s20 += a2 * b0; s21 += a2 * b1; s22 += a2 * b2; s23 += a2 * b3;
        s30 += a3 * b0; s31 += a3 * b1; s32 += a3 * b2; s33 += a3 * b3;
      }
      const b0 = bias ? bias[n]! : 0, b1 = bias ? bias[n + 1]! : 0, b2 = bias ? bias[n + 2]! : 0, b3 = bias ? bias[n + 3]! : 0;
      let o = r * nOut + n;
      y[o] = s00 + b0; y[o + 1] = s01 + b1; y[o + 2] = s02 + b2; y[o + 3] = s03 + b3; o += nOut;
      y[o] = s10 + b0; y[o + 1] = s11 + b1; y[o + 2] = s12 + b2; y[o + 3] = s13 + b3; o += nOut;
      y[o] = s20 + b0; y[o + 1] = s21 + b1; y[o + 2] = s22 + b2; y[o + 3] = s23 + b3; o += nOut;
      y[o] = s30 + b0; y[o + 1] = s31 + b1; y[o + 2] = s32 + b2; y[o + 3] = s33 + b3;
    }
    for (; n < nOut; n++) {
      const w0 = n * K;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let k = 0; k < K; k++) {
        const b = w[w0 + k]!;
        s0 += xd[x0 + k]! * b; s1 += xd[x1 + k]! * b; s2 += xd[x2 + k]! * b; s3 += xd[x3 + k]! * b;
      }
      const b = bias ? bias[n]! : 0;
      y[r * nOut + n] = s0 + b; y[(r + 1) * nOut + n] = s1 + b; y[(r + 2) * nOut + n] = s2 + b; y[(r + 3) * nOut + n] = s3 + b;
    }
  }
  // remaining rows (all of them in decode, where T = batch): a matrix-vector product, 4 outputs at a time
  for (; r < T; r++) {
    const x0 = r * ld + off;
    let n = 0;
    for (; n + 4 <= nOut; n += 4) {
      const w0 = n * K, w1 = w0 + K, w2 = w1 + K, w3 = w2 + K;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let k = 0; k < K; k++) {
        const a = xd[x0 + k]!;
        s0 += a * w[w0 + k]!; s1 += a * w[w1 + k]!; s2 += a * w[w2 + k]!; s3 += a * w[w3 + k]!;
      }
      const o = r * nOut + n;
      y[o] = s0 + (bias ? bias[n]! : 0); y[o + 1] = s1 + (bias ? bias[n + 1]! : 0);
      y[o + 2] = s2 + (bias ? bias[n + 2]! : 0); y[o + 3] = s3 + (bias ? bias[n + 3]! : 0);
    }
    for (; n < nOut; n++) {
      const w0 = n * K;
      let s = 0;
      for (let k = 0; k < K; k++) s += xd[x0 + k]! * w[w0 + k]!;
      y[r * nOut + n] = s + (bias ? bias[n]! : 0);
    }
  }
}
