/** Embedding gather and the fused residual add + RMSNorm. */

// table: [V, D], ids: [T] -> out: [T, D]
export function embeddingF32(table: Float32Array, D: number, ids: Int32Array, out: Float32Array): void {
  for (let t = 0; t < ids.length; t++) out.set(table.subarray(ids[t]! * D, (ids[t]! + 1) * D), t * D);
}

// x, residual, residualOut, out: [T, D]; weight: [D]. residualOut = x + residual; out = rmsnorm(residualOut) * weight
export function addRmsNormF32(
  x: Float32Array, residual: Float32Array | null, weight: Float32Array, eps: number, D: number,
  residualOut: Float32Array, out: Float32Array,
): void {
  const T = x.length / D;
  for (let t = 0; t < T; t++) {
    const o = t * D;
    let ss = 0;
    for (let d = 0; d < D; d++) {
      const v = residual ? x[o + d]! + residual[o + d]! : x[o + d]!;
      residualOut[o + d] = v;
      ss += v * v;
    }
    const inv = 1 / Math.sqrt(ss / D + eps);
    for (let d = 0; d < D; d++) out[o + d] = residualOut[o + d]! * inv * weight[d]!;
  }
}
