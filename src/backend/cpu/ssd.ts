/**
 * Mamba-2's SSM on the CPU, twice: the chunked SSD algorithm (what the backend runs) and the plain sequential
 * recurrence (its twin in the tests). Per head h, with the B and C of its group g = floor(h / (H / G)):
 *   dt_t = clamp(softplus(dt_raw_t + dtBias[h]), dtLimit);  a_t = dt_t · A[h],  A = -exp(A_log[h])
 *   state_t = exp(a_t) · state_{t-1} + dt_t · x_t ⊗ B_t     ([P, N])
 *   y_t = state_t · C_t + D[h] · x_t;   y *= silu(z) when a gate is given
 *
 * The chunked algorithm (state space duality; mamba_ssm's ssd_minimal_discrete). With a scalar decay per head,
 * the recurrence over a chunk of Q positions is a masked matrix product. With cs_i = Σ_{k ≤ i} a_k (inside the
 * chunk, inclusive):
 *   1. within a chunk:   Y_diag = ((C · Bᵀ) ∘ M) · (dt ∘ X),   M[i, j] = exp(cs_i − cs_j) for j ≤ i, else 0
 *   2. chunk states:     S_c = Σ_j exp(cs_last − cs_j) · dt_j · x_j ⊗ B_j      (each chunk from a zero state)
 *   3. state passing:    h_{c+1} = exp(cs_last of chunk c) · h_c + S_c           (h_0 = the given state)
 *   4. from the states:  Y_off[i] = exp(cs_i) · h_c · C_i
 *   y = Y_diag + Y_off + D · x
 * C · Bᵀ depends on the group only, so it is computed once for the H / G heads that share it. Sums run in
 * float64; outputs are stored in float32.
 */
import type { SsdScanArgs } from "../backend.ts";
import { check } from "../../errors.ts";
import { softplus } from "./scan.ts";
import { type Strided, cpu, strided } from "./tensor.ts";

export interface SsdData {
  x: Strided; // [B, L, H·P]
  dt: Strided; // [B, L, H] before the bias and softplus
  dtBias: Float32Array; // [H]
  A_log: Float32Array; // [H]
  Bm: Strided; // [B, L, G·N]
  Cm: Strided; // [B, L, G·N]
  D: Float32Array; // [H]
  z: Strided | null; // [B, L, H·P]
  dtLimit: readonly [number, number];
  state: Float32Array | null; // [B, H, P, N] in/out
}

export interface SsdDims {
  B: number;
  L: number;
  H: number;
  P: number;
  G: number;
  N: number;
}

/** dt after the bias, softplus and clamp */
export function ssdDt(raw: number, bias: number, limit: readonly [number, number]): number {
  const v = softplus(raw + bias);
  return v < limit[0] ? limit[0] : v > limit[1] ? limit[1] : v;
}

function gate(y: number, z: Strided | null, row: number, c: number): number {
  if (!z) return y;
  const zv = z.data[row * z.ld + z.off + c]!;
  return y * (zv / (1 + Math.exp(-zv)));
}

// -> y: [B, L, H·P]. The twin of ssdChunkedF32: time in the outer loop, the state of every head in one array.
export function ssdSequentialF32(s: SsdData, d: SsdDims, y: Float32Array): void {
  const { B, L, H, P, G, N } = d;
  const HP = H * P, PN = P * N, per = H / G;
  const A = Float64Array.from(s.A_log, (v) => -Math.exp(v));
  const h = new Float64Array(H * PN);
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < H * PN; i++) h[i] = s.state ? s.state[b * H * PN + i]! : 0;
    for (let t = 0; t < L; t++) {
      const row = b * L + t;
      const xo = row * s.x.ld + s.x.off;
      for (let hd = 0; hd < H; hd++) {
        const g = Math.floor(hd / per);
        const bo = row * s.Bm.ld + s.Bm.off + g * N;
        const co = row * s.Cm.ld + s.Cm.off + g * N;
        const dt = ssdDt(s.dt.data[row * s.dt.ld + s.dt.off + hd]!, s.dtBias[hd]!, s.dtLimit);
        const decay = Math.exp(dt * A[hd]!);
        for (let p = 0; p < P; p++) {
          const xv = s.x.data[xo + hd * P + p]!;
          const so = hd * PN + p * N;
          let acc = 0;
          for (let n = 0; n < N; n++) {
            const v = decay * h[so + n]! + dt * xv * s.Bm.data[bo + n]!;
            h[so + n] = v;
            acc += v * s.Cm.data[co + n]!;
          }
          y[row * HP + hd * P + p] = gate(acc + s.D[hd]! * xv, s.z, row, hd * P + p);
        }
      }
    }
    if (s.state) for (let i = 0; i < H * PN; i++) s.state[b * H * PN + i] = h[i]!;
  }
}

// -> y: [B, L, H·P], chunks of Q positions (the last one may be shorter).
export function ssdChunkedF32(s: SsdData, d: SsdDims, Q: number, y: Float32Array): void {
  const { B, L, H, P, G, N } = d;
  const HP = H * P, PN = P * N, per = H / G;
  const nChunks = Math.ceil(L / Q);
  const A = Float64Array.from(s.A_log, (v) => -Math.exp(v));
  const dts = new Float64Array(L * H); // [L, H] dt of one batch row
  const cs = new Float64Array(L * H); // [L, H] cumulative dt·A inside each chunk (inclusive)
  const chunkStates = new Float64Array(nChunks * H * PN); // stage 2: S_c, [chunks, H, P, N]
  const entering = new Float64Array(nChunks * H * PN); // stage 3: the state entering chunk c
  const CB = new Float64Array(Q * Q); // C · Bᵀ of one group in one chunk
  const W = new Float64Array(Q * Q); // (C · Bᵀ) ∘ M ∘ dt_j of one head
  const xs = new Float64Array(Q * P); // x of one head in one chunk
  const h = new Float64Array(PN);
  for (let b = 0; b < B; b++) {
    const row0 = b * L;
    for (let t = 0; t < L; t++) {
      const dto = (row0 + t) * s.dt.ld + s.dt.off;
      const first = t % Q === 0;
      for (let hd = 0; hd < H; hd++) {
        const dt = ssdDt(s.dt.data[dto + hd]!, s.dtBias[hd]!, s.dtLimit);
        dts[t * H + hd] = dt;
        cs[t * H + hd] = (first ? 0 : cs[(t - 1) * H + hd]!) + dt * A[hd]!;
      }
    }
    // ---- stage 2: each chunk's state from zero, S_c[p, n] = Σ_j exp(cs_last − cs_j) dt_j x_j[p] B_j[n] ----
    chunkStates.fill(0);
    for (let c = 0; c < nChunks; c++) {
      const t0 = c * Q, t1 = Math.min(L, t0 + Q);
      for (let hd = 0; hd < H; hd++) {
        const g = Math.floor(hd / per);
        const csLast = cs[(t1 - 1) * H + hd]!;
        const so = (c * H + hd) * PN;
        for (let t = t0; t < t1; t++) {
          const row = row0 + t;
          const w = Math.exp(csLast - cs[t * H + hd]!) * dts[t * H + hd]!;
          const xo = row * s.x.ld + s.x.off + hd * P;
          const bo = row * s.Bm.ld + s.Bm.off + g * N;
          for (let p = 0; p < P; p++) {
            const wx = w * s.x.data[xo + p]!;
            const o = so + p * N;
            for (let n = 0; n < N; n++) chunkStates[o + n] = chunkStates[o + n]! + wx * s.Bm.data[bo + n]!;
          }
        }
      }
    }
    // ---- stage 3: state passing, h_{c+1} = exp(cs_last_c) h_c + S_c ----
    for (let hd = 0; hd < H; hd++) {
      for (let i = 0; i < PN; i++) h[i] = s.state ? s.state[(b * H + hd) * PN + i]! : 0;
      for (let c = 0; c < nChunks; c++) {
        const t1 = Math.min(L, c * Q + Q);
        const o = (c * H + hd) * PN;
        entering.set(h, o);
        const decay = Math.exp(cs[(t1 - 1) * H + hd]!);
        for (let i = 0; i < PN; i++) h[i] = decay * h[i]! + chunkStates[o + i]!;
      }
      if (s.state) for (let i = 0; i < PN; i++) s.state[(b * H + hd) * PN + i] = h[i]!;
    }
    // ---- stages 1 and 4: outputs, Y = ((C·Bᵀ) ∘ M ∘ dt) · X + exp(cs_i) · h_c · C_i + D · x ----
    for (let c = 0; c < nChunks; c++) {
      const t0 = c * Q, q = Math.min(L, t0 + Q) - t0;
      for (let g = 0; g < G; g++) {
        for (let i = 0; i < q; i++) {
          const co = (row0 + t0 + i) * s.Cm.ld + s.Cm.off + g * N;
          for (let j = 0; j <= i; j++) {
            const bo = (row0 + t0 + j) * s.Bm.ld + s.Bm.off + g * N;
            let acc = 0;
            for (let n = 0; n < N; n++) acc += s.Cm.data[co + n]! * s.Bm.data[bo + n]!;
            CB[i * Q + j] = acc;
          }
        }
        for (let hd = g * per; hd < (g + 1) * per; hd++) {
          for (let i = 0; i < q; i++) {
            const ci = cs[(t0 + i) * H + hd]!;
            for (let j = 0; j <= i; j++) W[i * Q + j] = CB[i * Q + j]! * Math.exp(ci - cs[(t0 + j) * H + hd]!) * dts[(t0 + j) * H + hd]!;
            const xo = (row0 + t0 + i) * s.x.ld + s.x.off + hd * P;
            for (let p = 0; p < P; p++) xs[i * P + p] = s.x.data[xo + p]!;
          }
          const ho = (c * H + hd) * PN;
          for (let i = 0; i < q; i++) {
            const row = row0 + t0 + i;
            const co = row * s.Cm.ld + s.Cm.off + g * N;
            const into = Math.exp(cs[(t0 + i) * H + hd]!);
            for (let p = 0; p < P; p++) {
              let diag = 0;
              for (let j = 0; j <= i; j++) diag += W[i * Q + j]! * xs[j * P + p]!;
              let off = 0;
              const o = ho + p * N;
              for (let n = 0; n < N; n++) off += entering[o + n]! * s.Cm.data[co + n]!;
              y[row * HP + hd * P + p] = gate(diag + into * off + s.D[hd]! * xs[i * P + p]!, s.z, row, hd * P + p);
            }
          }
        }
      }
    }
  }
}

/** The raw arrays and sizes of ssdScan's arguments on the CPU backend, checked against each other. */
export function ssdData(a: SsdScanArgs): { data: SsdData; dims: SsdDims } {
  const x = strided(a.x), dt = strided(a.dt), Bm = strided(a.B), Cm = strided(a.C);
  const H = dt.width, P = a.headDim, G = a.nGroups, T = a.batch * a.seqLen;
  const N = Bm.width / G;
  check(x.width === H * P && Number.isInteger(N) && Cm.width === Bm.width && H % G === 0 && x.rows === T && dt.rows === T
    && Bm.rows === T && Cm.rows === T, `ssdScan: x [${x.rows}, ${x.width}], dt [${dt.rows}, ${dt.width}], B/C [${Bm.rows}, ${Bm.width}] ` +
    `do not fit ${a.batch}×${a.seqLen} rows of ${H} heads × ${P} in ${G} groups`);
  const state = a.state ? cpu(a.state).f32 : null;
  check(!state || state.length === a.batch * H * P * N, `ssdScan: the state needs [${a.batch}, ${H}, ${P}, ${N}]`);
  check(Number.isInteger(a.chunkSize) && a.chunkSize > 0, `ssdScan: chunk size must be a positive integer, got ${a.chunkSize}`);
  return {
    data: {
      x, dt, Bm, Cm, dtBias: cpu(a.dtBias).f32, A_log: cpu(a.A_log).f32, D: cpu(a.D).f32,
      z: a.z ? strided(a.z) : null, dtLimit: a.dtLimit, state,
    },
    dims: { B: a.batch, L: a.seqLen, H, P, G, N },
  };
}
