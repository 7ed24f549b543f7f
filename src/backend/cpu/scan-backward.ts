/**
 * Backward of the selective scan (see scan.ts for the forward), from the initial state s.state (zeros when null;
 * read only: the forward overwrote its own copy with the final state). No gradient flows into the initial state.
 *
 * Per batch row, the forward is recomputed first, keeping the states h[t] (L·E·N numbers), the decays
 * a[t] = exp(delta[t]·A) and the ungated outputs; then time runs backwards with dh, the gradient reaching h[t]:
 *   y = C[t]·h[t] + D·u;  out = y · silu(z)
 *   dy' = dout · silu(z);           dz += dout · y · silu'(z)
 *   dh  = dh_next + dy' · C[t];     dC[t] += dy' · h[t];   dD += dy' · u;   du += dy' · D
 *   h[t] = a · h[t-1] + delta · B[t] · u:
 *     ddelta += dh · (A · a · h[t-1] + B[t] · u);  dA += dh · delta · a · h[t-1]
 *     dB[t] += dh · delta · u;   du += dh · delta · B[t];   dh_next = dh · a
 *   delta = softplus(draw + bias):  ddraw = ddelta · sigmoid(draw + bias) (1 above PyTorch's threshold 20)
 *   A = −exp(A_log):  dA_log = dA · A
 * Storing the states of one row is fine on the CPU; the GPU kernel recomputes them chunk by chunk instead.
 */
import { softplus, type ScanData } from "./scan.ts";
import type { Strided } from "./tensor.ts";

export interface ScanGradData {
  du: Float32Array; // [B, L, E]
  dDelta: Strided; // [B, L, E]
  dDeltaBias: Float32Array; // [E]
  dA_log: Float32Array; // [E, N]
  dB: Strided; // [B, L, N]
  dC: Strided; // [B, L, N]
  dD: Float32Array; // [E]
  dz: Strided | null; // [B, L, E]
}

// s: the forward's inputs (s.state: the state the forward started from, or null), dy: [B, L, E]; every gradient is
// added into.
export function selectiveScanBackwardF32(
  s: ScanData, dy: Float32Array, g: ScanGradData, B: number, L: number, E: number, N: number,
): void {
  const EN = E * N;
  const A = new Float64Array(EN);
  for (let i = 0; i < EN; i++) A[i] = -Math.exp(s.A_log[i]!);
  const hs = new Float64Array((L + 1) * EN); // h[t] of one row at (t + 1)·EN; h[-1] (the initial state) at 0
  const as = new Float64Array(L * EN); // exp(delta[t]·A)
  const dts = new Float64Array(L * E); // delta[t] after softplus
  const ys = new Float64Array(L * E); // C·h + D·u before the gate
  const dh = new Float64Array(EN);
  const dA = new Float64Array(EN);
  const dD = new Float64Array(E);
  const dBias = new Float64Array(E);
  const dBt = new Float64Array(N);
  const dCt = new Float64Array(N);
  const Bt = new Float64Array(N);
  const Ct = new Float64Array(N);
  const { Bm, Cm, delta, z, u: U, D: Dp, deltaBias } = s;
  const { du: gU, dDelta, dz, dB, dC } = g;
  for (let b = 0; b < B; b++) {
    // ---- forward recompute ----
    for (let i = 0; i < EN; i++) hs[i] = s.state ? s.state[b * EN + i]! : 0;
    for (let t = 0; t < L; t++) {
      const row = b * L + t;
      const bo = row * Bm.ld + Bm.off;
      const co = row * Cm.ld + Cm.off;
      const dro = row * delta.ld + delta.off;
      for (let n = 0; n < N; n++) { Bt[n] = Bm.data[bo + n]!; Ct[n] = Cm.data[co + n]!; }
      const ho = t * EN;
      for (let e = 0; e < E; e++) {
        const u = U[row * E + e]!;
        const dt = softplus(delta.data[dro + e]! + deltaBias[e]!);
        dts[t * E + e] = dt;
        const du = dt * u;
        const he = e * N;
        let acc = 0;
        for (let n = 0; n < N; n++) {
          const i = ho + he + n;
          const a = Math.exp(dt * A[he + n]!);
          const hn = a * hs[i]! + du * Bt[n]!;
          as[i] = a;
          hs[i + EN] = hn;
          acc += hn * Ct[n]!;
        }
        ys[t * E + e] = acc + Dp[e]! * u;
      }
    }
    // ---- backward in time ----
    dh.fill(0);
    for (let t = L - 1; t >= 0; t--) {
      const row = b * L + t;
      const bo = row * Bm.ld + Bm.off;
      const co = row * Cm.ld + Cm.off;
      const dro = row * delta.ld + delta.off;
      for (let n = 0; n < N; n++) { Bt[n] = Bm.data[bo + n]!; Ct[n] = Cm.data[co + n]!; dBt[n] = 0; dCt[n] = 0; }
      const ho = t * EN;
      for (let e = 0; e < E; e++) {
        const gout = dy[row * E + e]!;
        let gy = gout;
        if (z) {
          const zv = z.data[row * z.ld + z.off + e]!;
          const sig = 1 / (1 + Math.exp(-zv));
          gy = gout * zv * sig;
          const di = row * dz!.ld + dz!.off + e;
          dz!.data[di] = dz!.data[di]! + gout * ys[t * E + e]! * sig * (1 + zv * (1 - sig));
        }
        const u = U[row * E + e]!;
        const dt = dts[t * E + e]!;
        dD[e] = dD[e]! + gy * u;
        let gu = 0; // Σ_n dh · B (times delta below)
        let gdt = 0;
        const he = e * N;
        for (let n = 0; n < N; n++) {
          const i = ho + he + n;
          const j = he + n;
          const ghn = dh[j]! + gy * Ct[n]!;
          dCt[n] = dCt[n]! + gy * hs[i + EN]!;
          const a = as[i]!;
          const q = ghn * a * hs[i]!; // dh · a · h[t-1]
          const gb = ghn * u;
          gdt += A[j]! * q + Bt[n]! * gb;
          dA[j] = dA[j]! + dt * q;
          dBt[n] = dBt[n]! + dt * gb;
          gu += ghn * Bt[n]!;
          dh[j] = ghn * a;
        }
        gU[row * E + e] = gU[row * E + e]! + gy * Dp[e]! + dt * gu;
        const v = delta.data[dro + e]! + deltaBias[e]!;
        const graw = v > 20 ? gdt : gdt / (1 + Math.exp(-v));
        const di = row * dDelta.ld + dDelta.off + e;
        dDelta.data[di] = dDelta.data[di]! + graw;
        dBias[e] = dBias[e]! + graw;
      }
      const dbo = row * dB.ld + dB.off;
      const dco = row * dC.ld + dC.off;
      for (let n = 0; n < N; n++) {
        dB.data[dbo + n] = dB.data[dbo + n]! + dBt[n]!;
        dC.data[dco + n] = dC.data[dco + n]! + dCt[n]!;
      }
    }
  }
  for (let i = 0; i < EN; i++) g.dA_log[i] = g.dA_log[i]! + dA[i]! * A[i]!;
  for (let e = 0; e < E; e++) {
    g.dD[e] = g.dD[e]! + dD[e]!;
    g.dDeltaBias[e] = g.dDeltaBias[e]! + dBias[e]!;
  }
}
