/**
 * Backward of Mamba-2's SSM (see ssd.ts for the forward), from the initial state s.state (zeros when null; read
 * only). No gradient flows into the initial state. Per (batch row, head) the forward is recomputed first, keeping
 * the states (L·P·N numbers), then time runs backwards with dS, the gradient reaching state_t ([P, N]):
 *   out = y · silu(z):          gy = dout · silu(z);   dz += dout · y · silu'(z)
 *   y = state_t · C_t + D · x:  dS += gy ⊗ C_t;  dC_t += gyᵀ · state_t;  dD += gy · x_t;  dx_t += D · gy
 *   state_t = a_t · state_{t-1} + dt_t · x_t ⊗ B_t,  a_t = exp(dt_t · A):
 *     da = Σ dS ∘ state_{t-1};   ddt += Σ_p,n dS · x_t[p] · B_t[n] + da · a_t · A;   dA += da · a_t · dt_t
 *     dx_t += dt_t · dS · B_t;   dB_t += dt_t · dSᵀ · x_t;   dS ← a_t · dS
 *   dt = clamp(softplus(raw + bias)): draw = ddt · sigmoid(raw + bias) inside the clamp (1 above PyTorch's
 *   threshold 20), 0 where clamped;  A = −exp(A_log): dA_log = dA · A.
 * B and C are shared by the H / G heads of a group: their gradients add up over those heads.
 */
import { softplus } from "./scan.ts";
import type { SsdData, SsdDims } from "./ssd.ts";
import type { Strided } from "./tensor.ts";

export interface SsdGradData {
  dx: Strided; // [B, L, H·P]
  dDt: Strided; // [B, L, H] (before the bias and softplus)
  dDtBias: Float32Array; // [H]
  dA_log: Float32Array; // [H]
  dB: Strided; // [B, L, G·N]
  dC: Strided; // [B, L, G·N]
  dD: Float32Array; // [H]
  dz: Strided | null; // [B, L, H·P]
}

const add = (s: Strided, row: number, c: number, v: number) => {
  const i = row * s.ld + s.off + c;
  s.data[i] = s.data[i]! + v;
};

// s: the forward's inputs (s.state: the state it started from, or null), dy: [B, L, H·P]; every gradient is added into.
export function ssdBackwardF32(s: SsdData, dy: Float32Array, g: SsdGradData, d: SsdDims): void {
  const { B, L, H, P, G, N } = d;
  const HP = H * P, PN = P * N, per = H / G;
  const states = new Float64Array((L + 1) * PN); // state_t of one head at (t + 1)·PN; the initial state at 0
  const dts = new Float64Array(L), decays = new Float64Array(L), inRange = new Uint8Array(L), sig = new Float64Array(L);
  const ys = new Float64Array(L * P); // y before the gate
  const dS = new Float64Array(PN);
  const gy = new Float64Array(P);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const A = -Math.exp(s.A_log[h]!);
      const gc = Math.floor(h / per) * N; // the group's first column of B and C
      for (let i = 0; i < PN; i++) states[i] = s.state ? s.state[(b * H + h) * PN + i]! : 0;
      // ---- forward recompute ----
      for (let t = 0; t < L; t++) {
        const row = b * L + t;
        const v = s.dt.data[row * s.dt.ld + s.dt.off + h]! + s.dtBias[h]!;
        const sp = softplus(v);
        const dt = Math.min(Math.max(sp, s.dtLimit[0]), s.dtLimit[1]);
        dts[t] = dt;
        inRange[t] = sp >= s.dtLimit[0] && sp <= s.dtLimit[1] ? 1 : 0;
        sig[t] = v > 20 ? 1 : 1 / (1 + Math.exp(-v));
        const a = Math.exp(dt * A);
        decays[t] = a;
        const bo = row * s.Bm.ld + s.Bm.off + gc, co = row * s.Cm.ld + s.Cm.off + gc, xo = row * s.x.ld + s.x.off + h * P;
        for (let p = 0; p < P; p++) {
          const xv = s.x.data[xo + p]!;
          let acc = 0;
          for (let n = 0; n < N; n++) {
            const i = t * PN + p * N + n;
            const hv = a * states[i]! + dt * xv * s.Bm.data[bo + n]!;
            states[i + PN] = hv;
            acc += hv * s.Cm.data[co + n]!;
          }
          ys[t * P + p] = acc + s.D[h]! * xv;
        }
      }
      // ---- backward in time ----
      dS.fill(0);
      let dA = 0, dDh = 0, dBias = 0;
      for (let t = L - 1; t >= 0; t--) {
        const row = b * L + t;
        const bo = row * s.Bm.ld + s.Bm.off + gc, co = row * s.Cm.ld + s.Cm.off + gc, xo = row * s.x.ld + s.x.off + h * P;
        for (let p = 0; p < P; p++) {
          const c = h * P + p;
          const gout = dy[row * HP + c]!;
          if (s.z) {
            const zv = s.z.data[row * s.z.ld + s.z.off + c]!;
            const sg = 1 / (1 + Math.exp(-zv));
            gy[p] = gout * zv * sg;
            add(g.dz!, row, c, gout * ys[t * P + p]! * sg * (1 + zv * (1 - sg)));
          } else gy[p] = gout;
        }
        const dt = dts[t]!, a = decays[t]!;
        let da = 0, ddt = 0;
        for (let n = 0; n < N; n++) {
          const Cn = s.Cm.data[co + n]!, Bn = s.Bm.data[bo + n]!;
          let dCn = 0, dBn = 0;
          for (let p = 0; p < P; p++) {
            const i = p * N + n;
            const st = (t + 1) * PN + i;
            dCn += gy[p]! * states[st]!;
            const dsv = dS[i]! + gy[p]! * Cn; // the full gradient reaching state_t
            const xv = s.x.data[xo + p]!;
            da += dsv * states[st - PN]!;
            ddt += dsv * xv * Bn;
            dBn += dsv * xv;
            dS[i] = dsv;
          }
          add(g.dC, row, gc + n, dCn);
          add(g.dB, row, gc + n, dt * dBn);
        }
        for (let p = 0; p < P; p++) {
          const xv = s.x.data[xo + p]!;
          let dx = s.D[h]! * gy[p]!;
          for (let n = 0; n < N; n++) dx += dt * dS[p * N + n]! * s.Bm.data[bo + n]!;
          add(g.dx, row, h * P + p, dx);
          dDh += gy[p]! * xv;
        }
        ddt += da * a * A;
        dA += da * a * dt;
        const graw = inRange[t] ? ddt * sig[t]! : 0;
        add(g.dDt, row, h, graw);
        dBias += graw;
        for (let i = 0; i < PN; i++) dS[i] = dS[i]! * a;
      }
      g.dA_log[h] = g.dA_log[h]! + dA * A;
      g.dD[h] = g.dD[h]! + dDh;
      g.dDtBias[h] = g.dDtBias[h]! + dBias;
    }
  }
}
