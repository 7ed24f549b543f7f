/**
 * Backward of y = x · wᵀ + bias (PyTorch Linear layout, w: [Nout, K]):
 *   dx = dy · w  [T, K],   dw = dyᵀ · x  [Nout, K],   dBias = Σ_rows dy  [Nout]
 * Both products are turned into the forward kernel's shape (a reduction along contiguous rows) by transposing one
 * operand once per call, then added into the gradient tensors (which may be column windows of wider ones).
 */
import { matmulF32 } from "./matmul.ts";
import type { Strided } from "./tensor.ts";

/** src: a [rows, width] window -> dense [width, rows] */
function transpose(s: Strided): Float32Array {
  const { data, ld, off, width, rows } = s;
  const out = new Float32Array(width * rows);
  for (let r = 0; r < rows; r++) {
    const o = r * ld + off;
    for (let c = 0; c < width; c++) out[c * rows + r] = data[o + c]!;
  }
  return out;
}

/** window (r, c) += src[r * width + c] */
export function addIntoWindow(dst: Strided, src: Float32Array): void {
  const { data, ld, off, width, rows } = dst;
  for (let r = 0; r < rows; r++) {
    const o = r * ld + off;
    const so = r * width;
    for (let c = 0; c < width; c++) data[o + c] = data[o + c]! + src[so + c]!;
  }
}

export function dense(data: Float32Array, rows: number, width: number): Strided {
  return { data, ld: width, off: 0, width, rows };
}

// x: [T, K] window, w: [Nout, K], dy: [T, Nout] window; dx: [T, K] window, dw: [Nout, K], dBias: [Nout] (all +=)
export function matmulBackwardF32(
  x: Strided, w: Float32Array, nOut: number, dy: Strided,
  dx: Strided | null, dw: Float32Array | null, dBias: Float32Array | null,
): void {
  const K = x.width;
  const T = x.rows;
  if (dx) {
    const tmp = new Float32Array(T * K);
    matmulF32(dy, transpose(dense(w, nOut, K)), K, null, tmp); // [T, Nout] · [Nout, K]
    addIntoWindow(dx, tmp);
  }
  if (dw) {
    const tmp = new Float32Array(nOut * K);
    matmulF32(dense(transpose(dy), nOut, T), transpose(x), K, null, tmp); // [Nout, T] · [T, K]
    for (let i = 0; i < tmp.length; i++) dw[i] = dw[i]! + tmp[i]!;
  }
  if (dBias) {
    const acc = new Float64Array(nOut);
    for (let r = 0; r < T; r++) {
      const o = r * dy.ld + dy.off;
      for (let n = 0; n < nOut; n++) acc[n] = acc[n]! + dy.data[o + n]!;
    }
    for (let n = 0; n < nOut; n++) dBias[n] = dBias[n]! + acc[n]!;
  }
}
