// Backward of Mamba-2's SSM (Backend ssdScanBackward; the forward is ssd.ts). The reference twin is
// src/backend/cpu/ssd-backward.ts (ssdBackwardF32): the same recompute-then-walk-back algorithm and the same sums,
// here in f32 with the state dimension N in vectors of 4 (the reference sums in f64), so the two differ by rounding.
//
// Per (batch row b, head h) the forward is recomputed from the initial state, keeping every state (L+1 of [P, N]),
// then time runs backwards with dS, the gradient reaching state_t:
//   gy = dout · silu(z) (dz += dout · y · silu'(z)),   dsv = dS + gy ⊗ C_t,
//   dC_t += Σ_p gy[p] · state_t[p],   da = Σ dsv ∘ state_{t-1},   sB[p] = Σ_n dsv[p, n] · B_t[n],
//   dx_t[p] += D · gy[p] + dt · sB[p],   ddt = Σ_p x_t[p] · sB[p] + da · a · A,   dB_t += dt · Σ_p dsv[p] · x_t[p],
//   dA += da · a · dt,   dD += Σ_p gy[p] · x_t[p],   dS = a · dsv
// and dt_raw's gradient is ddt times the gate ssdDtGate made (sigmoid inside the clamp, 0 outside).
//
// Threads take whole (b, h) pairs, so each pair's sums run the same instructions whatever the thread count. B and C
// are shared by the heads of a group: each head's dB and dC go to a scratch [T, H, N] and ssdBackwardGroups adds
// them into dB and dC in head order, and the per-head scalars (dA_log, dD, dt_bias) to `sums`, which the caller adds
// in batch order. The bits are therefore the same for any thread count.
//
// Measured at mamba2-130m's layer shape (L 256, 24 heads of P 64, N 128, one batch row) on a shared 2-core Xeon:
// about 40 ms on one thread, 21 ms on two (the forward ssdScan: 7 ms on one), where the reference takes 650-700 ms.
//
// ABI (byte offsets into the shared memory, f32 data unless said, row-major; T = batch·L rows, row r = b·L + t;
// "window": a column window [T, width] given by its first element and its full row length ld):
//
// ssdDtGate(dt, ldDt, dtBias, lo, hi, H, gate, r0, r1): rows [r0, r1) of gate[r, h] = sigmoid(v) (1 above PyTorch's
//   softplus threshold 20) where lo <= softplus(v) <= hi, else 0; v = dt[r, h] + dtBias[h] in f64. gate [T, H].
//
// ssdBackward(x, ldX, Bm, ldB, Cm, ldC, dtv, decay, gate, aLog, D, z, ldZ, state, dy, dx, ldDx, dDt, ldDDt, dz, ldDz,
//   dBh, dCh, sums, work, batch, L, H, P, per, N, r0, r1): pairs [r0, r1), pair j = b·H + h.
//   x, Bm, Cm, z: windows (Bm and Cm [T, G·N], G = H / per); dtv, decay [T, H] from ssdDtDecay; gate [T, H] from
//   ssdDtGate; aLog, D [H]; state [batch, H, P, N] or 0 (zeros); dy [T, H·P] contiguous; z 0 for no gate.
//   Added into: dx, dDt, dz (windows; dz ignored without z). Written: dBh, dCh [T, H, N] (head h's share of
//   dB and dC), sums f64 [batch·H, 3]: (dA_log, dD, dt_bias) of the pair. work: this thread's scratch,
//   ssdBackwardWork(L, P, N) bytes.
//
// ssdBackwardGroups(dBh, dCh, dB, ldDB, dC, ldDC, H, per, N, r0, r1): rows [r0, r1) of the windows dB and dC
//   [T, G·N] += the heads' shares, in head order.
import { madd, hsum } from "./simd";

/** N rounded up to whole vectors: the scratch rows are padded with zeros, which stay zeros. */
// @ts-ignore: decorator
@inline function padded(N: i32): i32 {
  return (N + 3) & ~3;
}

/** Bytes of one thread's scratch for ssdBackward. */
export function ssdBackwardWork(L: i32, P: i32, N: i32): i32 {
  const Np = padded(N);
  return ((L + 1) * P * Np + P * Np + 4 * Np + L * P + P) * 4 + 16;
}

export function ssdDtGate(
  dt: usize, ldDt: i32, dtBias: usize, lo: f64, hi: f64, H: i32, gate: usize, r0: i32, r1: i32,
): void {
  for (let r = r0; r < r1; r++) {
    const src = dt + (<usize>r * <usize>ldDt << 2);
    const o = gate + (<usize>r * <usize>H << 2);
    for (let h = 0; h < H; h++) {
      const hOff = <usize>h << 2;
      const v = <f64>load<f32>(src + hOff) + <f64>load<f32>(dtBias + hOff);
      const sp = v > 20 ? v : Math.log1p(Math.exp(v));
      const sig = v > 20 ? 1 : 1 / (1 + Math.exp(-v));
      store<f32>(o + hOff, sp >= lo && sp <= hi ? <f32>sig : 0);
    }
  }
}

/** One row of B or C (N floats at src) into dst, padded with zeros to whole vectors. */
// @ts-ignore: decorator
@inline function copyPadded(src: usize, dst: usize, N: i32, Np: i32): void {
  memory.copy(dst, src, <usize>N << 2);
  for (let n = N; n < Np; n++) store<f32>(dst + (<usize>n << 2), 0);
}

export function ssdBackward(
  x: usize, ldX: i32, Bm: usize, ldB: i32, Cm: usize, ldC: i32, dtv: usize, decay: usize, gate: usize, aLog: usize,
  D: usize, z: usize, ldZ: i32, state: usize, dy: usize, dx: usize, ldDx: i32, dDt: usize, ldDDt: i32, dz: usize,
  ldDz: i32, dBh: usize, dCh: usize, sums: usize, work: usize, batch: i32, L: i32, H: i32, P: i32, per: i32, N: i32,
  r0: i32, r1: i32,
): void {
  const Np = padded(N);
  const rowNp = <usize>Np << 2;
  const PNp = <usize>P * rowNp; // bytes of one state [P, Np]
  const HP = H * P;
  // the scratch: states (L+1)·[P, Np], dS [P, Np], B, C, dB, dC rows [Np], then y before the gate [L, P] and gy [P]
  const base = (work + 15) & ~(<usize>15);
  const states = base;
  const dS = states + <usize>(L + 1) * PNp;
  const bRow = dS + PNp, cRow = bRow + rowNp, dBacc = cRow + rowNp, dCacc = dBacc + rowNp;
  const ys = dCacc + rowNp;
  const gy = ys + (<usize>L * <usize>P << 2);
  for (let j = r0; j < r1; j++) {
    const b = j / H, h = j - b * H;
    const g = h / per;
    const hOff = <usize>h << 2;
    const A = -Math.exp(<f64>load<f32>(aLog + hOff));
    const dH = load<f32>(D + hOff);
    // ---- the initial state, padded ----
    for (let p = 0; p < P; p++) {
      const dst = states + <usize>p * rowNp;
      if (state) copyPadded(state + ((<usize>(b * H + h) * <usize>P + <usize>p) * <usize>N << 2), dst, N, Np);
      else memory.fill(dst, 0, rowNp);
    }
    // ---- forward recompute: every state and y before the gate ----
    for (let t = 0; t < L; t++) {
      const row = <usize>(b * L + t);
      const dt = load<f32>(dtv + ((row * <usize>H << 2) + hOff));
      const dec = f32x4.splat(load<f32>(decay + ((row * <usize>H << 2) + hOff)));
      copyPadded(Bm + ((row * <usize>ldB + <usize>(g * N)) << 2), bRow, N, Np);
      copyPadded(Cm + ((row * <usize>ldC + <usize>(g * N)) << 2), cRow, N, Np);
      const xRow = x + ((row * <usize>ldX + <usize>(h * P)) << 2);
      const prev = states + <usize>t * PNp;
      let p = 0;
      // four rows a pass: each B and C vector loaded once for the four
      for (; p + 4 <= P; p += 4) {
        const pOff = <usize>p << 2;
        const x0 = load<f32>(xRow + pOff), x1 = load<f32>(xRow + pOff, 4), x2 = load<f32>(xRow + pOff, 8), x3 = load<f32>(xRow + pOff, 12);
        const dx0 = f32x4.splat(dt * x0), dx1 = f32x4.splat(dt * x1), dx2 = f32x4.splat(dt * x2), dx3 = f32x4.splat(dt * x3);
        const s0 = prev + <usize>p * rowNp, s1 = s0 + rowNp, s2 = s1 + rowNp, s3 = s2 + rowNp;
        let a0 = f32x4.splat(0), a1 = a0, a2 = a0, a3 = a0;
        for (let n = 0; n < Np; n += 4) {
          const nOff = <usize>n << 2;
          const bv = v128.load(bRow + nOff), cv = v128.load(cRow + nOff);
          const h0 = madd(dx0, bv, f32x4.mul(dec, v128.load(s0 + nOff)));
          const h1 = madd(dx1, bv, f32x4.mul(dec, v128.load(s1 + nOff)));
          const h2 = madd(dx2, bv, f32x4.mul(dec, v128.load(s2 + nOff)));
          const h3 = madd(dx3, bv, f32x4.mul(dec, v128.load(s3 + nOff)));
          v128.store(s0 + PNp + nOff, h0);
          v128.store(s1 + PNp + nOff, h1);
          v128.store(s2 + PNp + nOff, h2);
          v128.store(s3 + PNp + nOff, h3);
          a0 = madd(h0, cv, a0);
          a1 = madd(h1, cv, a1);
          a2 = madd(h2, cv, a2);
          a3 = madd(h3, cv, a3);
        }
        const yOut = ys + (<usize>(t * P + p) << 2);
        store<f32>(yOut, hsum(a0) + dH * x0);
        store<f32>(yOut, hsum(a1) + dH * x1, 4);
        store<f32>(yOut, hsum(a2) + dH * x2, 8);
        store<f32>(yOut, hsum(a3) + dH * x3, 12);
      }
      // the rows left, one at a time: the same arithmetic a row
      for (; p < P; p++) {
        const xv = load<f32>(xRow + (<usize>p << 2));
        const dxv = f32x4.splat(dt * xv);
        const s0 = prev + <usize>p * rowNp, s1 = s0 + PNp;
        let acc = f32x4.splat(0);
        for (let n = 0; n < Np; n += 4) {
          const nOff = <usize>n << 2;
          const hv = madd(dxv, v128.load(bRow + nOff), f32x4.mul(dec, v128.load(s0 + nOff)));
          v128.store(s1 + nOff, hv);
          acc = madd(hv, v128.load(cRow + nOff), acc);
        }
        store<f32>(ys + ((<usize>(t * P + p)) << 2), hsum(acc) + dH * xv);
      }
    }
    // ---- backward in time ----
    memory.fill(dS, 0, PNp);
    let dA: f64 = 0, dDh: f64 = 0, dBias: f64 = 0;
    for (let t = L - 1; t >= 0; t--) {
      const row = <usize>(b * L + t);
      const rh = (row * <usize>H << 2) + hOff;
      const dt = load<f32>(dtv + rh);
      const a = load<f32>(decay + rh);
      const dec = f32x4.splat(a);
      copyPadded(Bm + ((row * <usize>ldB + <usize>(g * N)) << 2), bRow, N, Np);
      copyPadded(Cm + ((row * <usize>ldC + <usize>(g * N)) << 2), cRow, N, Np);
      memory.fill(dBacc, 0, rowNp);
      memory.fill(dCacc, 0, rowNp);
      const xRow = x + ((row * <usize>ldX + <usize>(h * P)) << 2);
      const dyRow = dy + ((row * <usize>HP + <usize>(h * P)) << 2);
      // the gate: gy = dout · silu(z), and dz
      for (let p = 0; p < P; p++) {
        const pOff = <usize>p << 2;
        const gout = <f64>load<f32>(dyRow + pOff);
        if (z) {
          const zv = <f64>load<f32>(z + ((row * <usize>ldZ + <usize>(h * P)) << 2) + pOff);
          const sg = 1 / (1 + Math.exp(-zv));
          store<f32>(gy + pOff, <f32>(gout * zv * sg));
          const yv = <f64>load<f32>(ys + ((<usize>(t * P + p)) << 2));
          const dzAt = dz + ((row * <usize>ldDz + <usize>(h * P)) << 2) + pOff;
          store<f32>(dzAt, <f32>(<f64>load<f32>(dzAt) + gout * yv * sg * (1 + zv * (1 - sg))));
        } else store<f32>(gy + pOff, <f32>gout);
      }
      const st = states + <usize>(t + 1) * PNp;
      // da's sums: even rows in daV, odd rows in daW (two chains of multiply-adds, not one twice as long)
      let daV = f32x4.splat(0), daW = daV;
      let ddt: f64 = 0;
      const dxRow = dx + ((row * <usize>ldDx + <usize>(h * P)) << 2);
      let p = 0;
      // two rows a pass: the B, C, dB and dC vectors loaded once for the two. Every sum over n is a chain of
      // multiply-adds that waits on its previous one; two rows keep four independent chains (six loads and ten
      // multiply-adds an iteration), and four rows would not fit the registers.
      for (; p + 2 <= P; p += 2) {
        const pOff = <usize>p << 2;
        const g0 = f32x4.splat(load<f32>(gy + pOff)), g1 = f32x4.splat(load<f32>(gy + pOff, 4));
        const x0 = f32x4.splat(load<f32>(xRow + pOff)), x1 = f32x4.splat(load<f32>(xRow + pOff, 4));
        const s0 = st + <usize>p * rowNp, s1 = s0 + rowNp;
        const d0 = dS + <usize>p * rowNp, d1 = d0 + rowNp;
        let sB0 = f32x4.splat(0), sB1 = sB0;
        for (let n = 0; n < Np; n += 4) {
          const nOff = <usize>n << 2;
          const cv = v128.load(cRow + nOff), bv = v128.load(bRow + nOff);
          const e0 = madd(g0, cv, v128.load(d0 + nOff)); // the full gradient reaching state_t
          const e1 = madd(g1, cv, v128.load(d1 + nOff));
          v128.store(dCacc + nOff, madd(g1, v128.load(s1 + nOff), madd(g0, v128.load(s0 + nOff), v128.load(dCacc + nOff))));
          daV = madd(e0, v128.load(s0 - PNp + nOff), daV);
          daW = madd(e1, v128.load(s1 - PNp + nOff), daW);
          sB0 = madd(e0, bv, sB0);
          sB1 = madd(e1, bv, sB1);
          v128.store(dBacc + nOff, madd(e1, x1, madd(e0, x0, v128.load(dBacc + nOff))));
          v128.store(d0 + nOff, f32x4.mul(dec, e0));
          v128.store(d1 + nOff, f32x4.mul(dec, e1));
        }
        ddt = finishRowGrad(p, hsum(sB0), gy, xRow, dxRow, dH, dt, ddt);
        ddt = finishRowGrad(p + 1, hsum(sB1), gy, xRow, dxRow, dH, dt, ddt);
      }
      // the rows left, one at a time
      for (; p < P; p++) {
        const pOff = <usize>p << 2;
        const gyp = load<f32>(gy + pOff), xp = load<f32>(xRow + pOff);
        const gyv = f32x4.splat(gyp), xv = f32x4.splat(xp);
        const sNow = st + <usize>p * rowNp, sPrev = sNow - PNp, ds = dS + <usize>p * rowNp;
        let sB = f32x4.splat(0);
        for (let n = 0; n < Np; n += 4) {
          const nOff = <usize>n << 2;
          const dsv = madd(gyv, v128.load(cRow + nOff), v128.load(ds + nOff)); // the full gradient reaching state_t
          v128.store(dCacc + nOff, madd(gyv, v128.load(sNow + nOff), v128.load(dCacc + nOff)));
          daV = madd(dsv, v128.load(sPrev + nOff), daV);
          sB = madd(dsv, v128.load(bRow + nOff), sB);
          v128.store(dBacc + nOff, madd(dsv, xv, v128.load(dBacc + nOff)));
          v128.store(ds + nOff, f32x4.mul(dec, dsv));
        }
        ddt = finishRowGrad(p, hsum(sB), gy, xRow, dxRow, dH, dt, ddt);
      }
      for (let p = 0; p < P; p++) dDh += <f64>load<f32>(gy + (<usize>p << 2)) * <f64>load<f32>(xRow + (<usize>p << 2));
      // this head's shares of dB and dC at row
      const shareOff = (row * <usize>H + <usize>h) * <usize>N << 2;
      const dtv4 = f32x4.splat(dt);
      let n = 0;
      for (; n + 4 <= N; n += 4) {
        const nOff = <usize>n << 2;
        v128.store(dCh + shareOff + nOff, v128.load(dCacc + nOff));
        v128.store(dBh + shareOff + nOff, f32x4.mul(dtv4, v128.load(dBacc + nOff)));
      }
      for (; n < N; n++) {
        const nOff = <usize>n << 2;
        store<f32>(dCh + shareOff + nOff, load<f32>(dCacc + nOff));
        store<f32>(dBh + shareOff + nOff, dt * load<f32>(dBacc + nOff));
      }
      const da = <f64>hsum(f32x4.add(daV, daW));
      ddt += da * <f64>a * A;
      dA += da * <f64>a * <f64>dt;
      const graw = ddt * <f64>load<f32>(gate + rh);
      const dDtAt = dDt + ((row * <usize>ldDDt) << 2) + hOff;
      store<f32>(dDtAt, <f32>(<f64>load<f32>(dDtAt) + graw));
      dBias += graw;
    }
    const so = sums + (<usize>j * 3 << 3);
    store<f64>(so, dA * A);
    store<f64>(so, dDh, 8);
    store<f64>(so, dBias, 16);
  }
}

/** The end of row p's step back: dx[p] += D · gy[p] + dt · sB (sB = Σ_n dsv[p, n] · B[n]), and ddt + x[p] · sB. */
// @ts-ignore: decorator
@inline function finishRowGrad(p: i32, sB: f32, gy: usize, xRow: usize, dxRow: usize, dH: f32, dt: f32, ddt: f64): f64 {
  const pOff = <usize>p << 2;
  const sBs = <f64>sB;
  const dxAt = dxRow + pOff;
  store<f32>(dxAt, <f32>(<f64>load<f32>(dxAt) + (<f64>dH * <f64>load<f32>(gy + pOff) + <f64>dt * sBs)));
  return ddt + <f64>load<f32>(xRow + pOff) * sBs;
}

export function ssdBackwardGroups(
  dBh: usize, dCh: usize, dB: usize, ldDB: i32, dC: usize, ldDC: i32, H: i32, per: i32, N: i32, r0: i32, r1: i32,
): void {
  const G = H / per;
  for (let r = r0; r < r1; r++) {
    const share = dBh + (<usize>r * <usize>H * <usize>N << 2);
    const shareC = dCh + (<usize>r * <usize>H * <usize>N << 2);
    const bOut = dB + (<usize>r * <usize>ldDB << 2), cOut = dC + (<usize>r * <usize>ldDC << 2);
    for (let g = 0; g < G; g++) {
      for (let n = 0; n < N; n++) {
        const o = <usize>(g * N + n) << 2;
        let sb = load<f32>(bOut + o), sc = load<f32>(cOut + o);
        for (let k = 0; k < per; k++) {
          const i = <usize>((g * per + k) * N + n) << 2;
          sb += load<f32>(share + i);
          sc += load<f32>(shareC + i);
        }
        store<f32>(bOut + o, sb);
        store<f32>(cOut + o, sc);
      }
    }
  }
}
