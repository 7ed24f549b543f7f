/**
 * Causal depthwise conv1d + SiLU over [B, L, E], channel by channel, with a carried history.
 * state: [B, K-1, E] holds the K-1 inputs before position 0 (zeros = the left padding of a plain forward); on
 * return it holds the last K-1 inputs, so the next call continues the sequence.
 */
import type { Strided } from "./tensor.ts";

export function silu(v: number): number {
  return v / (1 + Math.exp(-v));
}

// x: [B, L, E] window, weight: [E, K], bias: [E] | null, state: [B, K-1, E] | null -> out: [B, L, E]
export function causalConv1dSiluF32(
  x: Strided, weight: Float32Array, bias: Float32Array | null, state: Float32Array | null,
  B: number, L: number, K: number, out: Float32Array,
): void {
  const E = x.width;
  const H = K - 1;
  // history + input of one channel, contiguous: hist[0..H) then x[0..L)
  const seq = new Float32Array(H + L);
  for (let b = 0; b < B; b++) {
    for (let e = 0; e < E; e++) {
      for (let j = 0; j < H; j++) seq[j] = state ? state[(b * H + j) * E + e]! : 0;
      for (let t = 0; t < L; t++) seq[H + t] = x.data[(b * L + t) * x.ld + x.off + e]!;
      const w = e * K;
      const bv = bias ? bias[e]! : 0;
      for (let t = 0; t < L; t++) {
        let s = bv;
        for (let k = 0; k < K; k++) s += weight[w + k]! * seq[t + k]!;
        out[(b * L + t) * E + e] = silu(s);
      }
      if (state) for (let j = 0; j < H; j++) state[(b * H + j) * E + e] = seq[L + j]!;
    }
  }
}
