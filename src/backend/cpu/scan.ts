/**
 * The selective scan, sequentially over t for every (b, e), with the state h[N] of one channel in a small array:
 *   delta = softplus(delta_raw + bias);  h = exp(delta·A) ∘ h + delta·B[t]·u[t];  y = C[t]·h + D·u[t];  y *= silu(z)
 * The plain reference that the fused GPU kernel is tested against.
 */
import type { Strided } from "./tensor.ts";

export function softplus(v: number): number {
  return v > 20 ? v : Math.log1p(Math.exp(v)); // PyTorch's threshold
}

export interface ScanData {
  u: Float32Array; // [B, L, E]
  delta: Strided; // [B, L, E]
  deltaBias: Float32Array; // [E]
  A_log: Float32Array; // [E, N]
  Bm: Strided; // [B, L, N]
  Cm: Strided; // [B, L, N]
  D: Float32Array; // [E]
  z: Strided | null; // [B, L, E]
  state: Float32Array | null; // [B, E, N] in/out
}

// -> y: [B, L, E]. Time runs in the outer loop so that every access walks rows contiguously.
export function selectiveScanF32(s: ScanData, B: number, L: number, E: number, N: number, y: Float32Array): void {
  const A = new Float64Array(E * N);
  for (let i = 0; i < E * N; i++) A[i] = -Math.exp(s.A_log[i]!);
  const h = new Float64Array(E * N);
  for (let b = 0; b < B; b++) {
    if (s.state) for (let i = 0; i < E * N; i++) h[i] = s.state[b * E * N + i]!;
    else h.fill(0);
    for (let t = 0; t < L; t++) {
      const row = b * L + t;
      const bo = row * s.Bm.ld + s.Bm.off;
      const co = row * s.Cm.ld + s.Cm.off;
      const dro = row * s.delta.ld + s.delta.off;
      for (let e = 0; e < E; e++) {
        const u = s.u[row * E + e]!;
        const dt = softplus(s.delta.data[dro + e]! + s.deltaBias[e]!);
        const du = dt * u;
        const he = e * N;
        let acc = 0;
        for (let n = 0; n < N; n++) {
          const hn = Math.exp(dt * A[he + n]!) * h[he + n]! + du * s.Bm.data[bo + n]!;
          h[he + n] = hn;
          acc += hn * s.Cm.data[co + n]!;
        }
        let out = acc + s.D[e]! * u;
        if (s.z) {
          const zv = s.z.data[row * s.z.ld + s.z.off + e]!;
          out *= zv / (1 + Math.exp(-zv));
        }
        y[row * E + e] = out;
      }
    }
    if (s.state) for (let i = 0; i < E * N; i++) s.state[b * E * N + i] = h[i]!;
  }
}
