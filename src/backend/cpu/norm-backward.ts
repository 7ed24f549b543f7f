/** Backward of the embedding gather (a scatter-add) and of the fused residual add + RMSNorm. */

// ids: [T], dOut: [T, D] -> dTable[ids[t]] += dOut[t]
export function embeddingBackwardF32(ids: Int32Array, dOut: Float32Array, D: number, dTable: Float32Array): void {
  for (let t = 0; t < ids.length; t++) {
    const o = ids[t]! * D;
    const s = t * D;
    for (let d = 0; d < D; d++) dTable[o + d] = dTable[o + d]! + dOut[s + d]!;
  }
}

// r = residualOut [T, D] (the normalized input), weight [D], dOut [T, D]:
//   n = r · inv, inv = 1/sqrt(mean(r²) + eps), out = n · w
//   dWeight += Σ_t dOut · n;  dr += inv · (dn − n · mean(dn · n)),  dn = dOut · w
export function addRmsNormBackwardF32(
  r: Float32Array, weight: Float32Array, eps: number, D: number, dOut: Float32Array,
  dResidual: Float32Array, dWeight: Float32Array,
): void {
  const T = r.length / D;
  const dw = new Float64Array(D);
  for (let t = 0; t < T; t++) {
    const o = t * D;
    let ss = 0;
    for (let d = 0; d < D; d++) ss += r[o + d]! * r[o + d]!;
    const inv = 1 / Math.sqrt(ss / D + eps);
    let dot = 0;
    for (let d = 0; d < D; d++) {
      const n = r[o + d]! * inv;
      const g = dOut[o + d]!;
      dw[d] = dw[d]! + g * n;
      dot += g * weight[d]! * n;
    }
    const m = dot / D;
    for (let d = 0; d < D; d++) {
      const n = r[o + d]! * inv;
      dResidual[o + d] = dResidual[o + d]! + inv * (dOut[o + d]! * weight[d]! - n * m);
    }
  }
  for (let d = 0; d < D; d++) dWeight[d] = dWeight[d]! + dw[d]!;
}
