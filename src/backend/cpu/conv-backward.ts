/**
 * Backward of y = silu(causal depthwise conv1d(x) + bias) from zero history (the training forward), channel by
 * channel: the pre-activation is recomputed, then
 *   dpre = dy · silu'(pre);  dBias += Σ_t dpre;  dW[k] += Σ_t dpre[t] · xpad[t + k];  dx[t + k − (K−1)] += dpre[t] · W[k]
 */
import type { Strided } from "./tensor.ts";

// x: [B, L, E] window, weight: [E, K], dy: [B, L, E]; dx: [B, L, E] window, dWeight: [E, K], dBias: [E] (all +=)
export function causalConv1dSiluBackwardF32(
  x: Strided, weight: Float32Array, bias: Float32Array | null, dy: Float32Array, B: number, L: number, K: number,
  dx: Strided | null, dWeight: Float32Array | null, dBias: Float32Array | null,
): void {
  const E = x.width;
  const H = K - 1;
  const seq = new Float64Array(H + L); // zero history, then the inputs of one channel
  const dseq = new Float64Array(H + L);
  const dpre = new Float64Array(L);
  for (let b = 0; b < B; b++) {
    for (let e = 0; e < E; e++) {
      for (let t = 0; t < L; t++) seq[H + t] = x.data[(b * L + t) * x.ld + x.off + e]!;
      const w = e * K;
      const bv = bias ? bias[e]! : 0;
      let db = 0;
      for (let t = 0; t < L; t++) {
        let s = bv;
        for (let k = 0; k < K; k++) s += weight[w + k]! * seq[t + k]!;
        const sig = 1 / (1 + Math.exp(-s));
        const g = dy[(b * L + t) * E + e]! * sig * (1 + s * (1 - sig));
        dpre[t] = g;
        db += g;
      }
      if (dBias) dBias[e] = dBias[e]! + db;
      if (dWeight) {
        for (let k = 0; k < K; k++) {
          let s = 0;
          for (let t = 0; t < L; t++) s += dpre[t]! * seq[t + k]!;
          dWeight[w + k] = dWeight[w + k]! + s;
        }
      }
      if (dx) {
        dseq.fill(0);
        for (let t = 0; t < L; t++) {
          const g = dpre[t]!;
          for (let k = 0; k < K; k++) dseq[t + k] = dseq[t + k]! + g * weight[w + k]!;
        }
        for (let t = 0; t < L; t++) {
          const i = (b * L + t) * dx.ld + dx.off + e;
          dx.data[i] = dx.data[i]! + dseq[H + t]!;
        }
      }
    }
  }
}
