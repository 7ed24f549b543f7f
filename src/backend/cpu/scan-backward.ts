/**
 * Backward of the selective scan (see scan.ts for the forward), from zero initial state.
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

// s: the forward's inputs (s.state must be null), dy: [B, L, E]; every gradient is added into.
export function selectiveScanBackwardF32(
  s: ScanData, dy: Float32Array, g: ScanGradData, B: number, L: number, E: number, N: number,
): void {
  const EN = E * N;
  const A = new Float64Array(EN);
  for (let i = 0; i < EN; i++) A[i] = -Math.exp(s.A_log[i]!);
  const hs = new Float64Array(L * EN); // h[t] of one row
  const as = new Float64Array(L * EN); // exp(delta[t]·A)
  const dts = new Float64Array(L * E); // delta[t] after softplus
  const ys = new Float64Array(L * E); // C·h + D·u before the gate
  const dh = new Float64Array(EN);
  const dA = new Float64Array(EN);
  const dD = new Float64Array(E);
  const dBias = new Float64Array(E);
  const dBt = new Float64Array(N);
  const dCt = new Float64Array(N);
  const { Bm, Cm, delta, z } = s;
  for (let b = 0; b < B; b++) {
    // ---- forward recompute ----
    for (let t = 0; t < L; t++) {
      const row = b * L + t;
      const bo = row * Bm.ld + Bm.off;
      const co = row * Cm.ld + Cm.off;
      const dro = row * delta.ld + delta.off;
      const ho = t * EN;
      for (let e = 0; e < E; e++) {
        const u = s.u[row * E + e]!;
        const dt = softplus(delta.data[dro + e]! + s.deltaBias[e]!);
        dts[t * E + e] = dt;
        const du = dt * u;
        const he = e * N;
        let acc = 0;
        for (let n = 0; n < N; n++) {
          const a = Math.exp(dt * A[he + n]!);
          const prev = t > 0 ? hs[ho - EN + he + n]! : 0;
          const hn = a * prev + du * Bm.data[bo + n]!;
          as[ho + he + n] = a;
          hs[ho + he + n] = hn;
          acc += hn * Cm.data[co + n]!;
        }
        ys[t * E + e] = acc + s.D[e]! * u;
      }
    }
    // ---- backward in time ----
    dh.fill(0);
    for (let t = L - 1; t >= 0; t--) {
      const row = b * L + t;
      const bo = row * Bm.ld + Bm.off;
      const co = row * Cm.ld + Cm.off;
      const dro = row * delta.ld + delta.off;
      const ho = t * EN;
      dBt.fill(0);
      dCt.fill(0);
      for (let e = 0; e < E; e++) {
        const gout = dy[row * E + e]!;
        let gy = gout;
        if (z) {
          const zi = row * z.ld + z.off + e;
          const zv = z.data[zi]!;
          const sig = 1 / (1 + Math.exp(-zv));
          gy = gout * zv * sig;
          const gz = gout * ys[t * E + e]! * sig * (1 + zv * (1 - sig));
          const di = row * g.dz!.ld + g.dz!.off + e;
          g.dz!.data[di] = g.dz!.data[di]! + gz;
        }
        const u = s.u[row * E + e]!;
        const dt = dts[t * E + e]!;
        dD[e] = dD[e]! + gy * u;
        let gu = gy * s.D[e]!;
        let gdt = 0;
        const he = e * N;
        for (let n = 0; n < N; n++) {
          const i = ho + he + n;
          const Bn = Bm.data[bo + n]!;
          const ghn = dh[he + n]! + gy * Cm.data[co + n]!;
          dCt[n] = dCt[n]! + gy * hs[i]!;
          const prev = t > 0 ? hs[i - EN]! : 0;
          const a = as[i]!;
          const An = A[he + n]!;
          gdt += ghn * (An * a * prev + Bn * u);
          dA[he + n] = dA[he + n]! + ghn * dt * a * prev;
          dBt[n] = dBt[n]! + ghn * dt * u;
          gu += ghn * dt * Bn;
          dh[he + n] = ghn * a;
        }
        g.du[row * E + e] = g.du[row * E + e]! + gu;
        const v = delta.data[dro + e]! + s.deltaBias[e]!;
        const graw = v > 20 ? gdt : gdt / (1 + Math.exp(-v));
        const di = row * g.dDelta.ld + g.dDelta.off + e;
        g.dDelta.data[di] = g.dDelta.data[di]! + graw;
        dBias[e] = dBias[e]! + graw;
      }
      const dbo = row * g.dB.ld + g.dB.off;
      const dco = row * g.dC.ld + g.dC.off;
      for (let n = 0; n < N; n++) {
        g.dB.data[dbo + n] = g.dB.data[dbo + n]! + dBt[n]!;
        g.dC.data[dco + n] = g.dC.data[dco + n]! + dCt[n]!;
      }
    }
  }
  for (let i = 0; i < EN; i++) g.dA_log[i] = g.dA_log[i]! + dA[i]! * A[i]!;
  for (let e = 0; e < E; e++) {
    g.dD[e] = g.dD[e]! + dD[e]!;
    g.dDeltaBias[e] = g.dDeltaBias[e]! + dBias[e]!;
  }
}
