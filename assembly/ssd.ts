// Mamba-2's SSM (state space duality, SSD) forward, with a carried state, and its gated RMSNorm.
// The reference twins are src/backend/cpu/ssd.ts (ssdChunkedF32 and ssdSequentialF32) and
// src/backend/cpu/gated-norm.ts (gatedRmsNormF32); the ops are Backend.ssdScan and Backend.gatedRmsNorm.
//
// Per head h of head_dim P, with the B and C of its group g = floor(h / (H / G)), and the state of row p of the head
// (h[p, 0..N)):
//   dt = clamp(softplus(dtRaw[t, h] + dtBias[h]), lo, hi);  decay = exp(dt · A[h]),  A = -exp(A_log[h])
//   h[p, n] = decay · h[p, n] + (dt · x[t, h·P + p]) · B[t, g·N + n]
//   y[t, h·P + p] = Σ_n h[p, n] · C[t, g·N + n] + D[h] · x[t, h·P + p];   y *= silu(z) when a gate is given
//
// This is the recurrence, step by step, where the reference runs the chunked algorithm. On a CPU the two cost the
// same arithmetic: a step costs 3 multiply-adds per state element (P·N a head), and the chunked algorithm per
// position Q/2·P (the masked product) + 2·P·N (chunk states, output from the states) + a share of C·Bᵀ (Q·N/2 for
// H/G heads), which for mamba2-130m (P 64, N 128, Q 256) is as much. With a scalar decay per head the step has no
// exp per element (Mamba-1's scan has N), and the state of a tile of rows stays in L1 for the whole sequence.
// Measured on mamba2-130m's layer (L 256, one thread of a 2-core Xeon): 1.0-1.2 µs a head and position, about 1.5
// cycles per vector of 4 state elements, which is its arithmetic's bound (a multiply and two multiply-adds a vector
// on two FMA units); the products of the chunked form would run at most at the engine's matrix product rate (about
// 1.3x this one's flops), for a scan that is 15% of prefill. The results differ from the chunked reference by
// rounding only (f32 here, f64 there).
//
// ABI (byte offsets into the shared memory, f32 data, row-major; a work range [r0, r1) last; 0 means "absent" for z,
// so no tensor may start at byte 0; T = batch·L rows, row r = b·L + t):
//
// ssdDtDecay(dt, ldDt, dtBias, aLog, lo, hi, H, dtOut, decayOut, r0, r1): the rows [r0, r1) of
//   dtOut[r, h] = dt and decayOut[r, h] = exp(dt · A[h]), [T, H] contiguous, computed in f64 (as the reference) and
//   stored in f32. dt is a column window [T, H] (its base plus 4·col0, its full width ldDt); dtBias, aLog [H];
//   lo, hi the clamp (hi may be +Infinity).
//
// ssdScan(x, ldX, Bm, ldB, Cm, ldC, dtv, decay, D, z, ldZ, state, y, batch, L, H, P, G, N, r0, r1):
//   x [T, H·P], Bm and Cm [T, G·N] and z [T, H·P] are column windows like dt; dtv and decay [T, H] from ssdDtDecay;
//   D [H]; state [batch, H, P, N], read as the state before t = 0 and overwritten with the state after the last t
//   (pass zeros for none); y [T, H·P] contiguous output.
//   [r0, r1) are state rows: row i = h·P + p, of every batch. Calls on disjoint ranges may run at once (they write
//   disjoint parts of y and state). Every row runs the same instructions whatever range or tile it falls in, so any
//   split gives bitwise the same y and state.
//
// gatedRmsNorm(y, z, ldZ, weight, eps, E, gs, normBeforeGate, out, r0, r1): rows [r0, r1) of [T, E], per group of gs
//   channels (mamba_ssm's RMSNormGated):
//     normBeforeGate 0: v = y · silu(z); out = v · r · weight,          r = 1/sqrt(mean_group(v²) + eps)
//     normBeforeGate 1: out = y · r · weight · silu(z),                 r = 1/sqrt(mean_group(y²) + eps)
//   y and out [T, E] contiguous (out may not be y); z a column window [T, E]; weight [E]. The sum of squares runs in
//   f64 as the reference's; silu in f32 (math.ts's siluV).
import { madd, hsum } from "./simd";
import { siluV, loadLanes, storeLanes } from "./math";

export function ssdDtDecay(
  dt: usize, ldDt: i32, dtBias: usize, aLog: usize, lo: f64, hi: f64, H: i32, dtOut: usize, decayOut: usize,
  r0: i32, r1: i32,
): void {
  for (let r = r0; r < r1; r++) {
    const src = dt + (<usize>r * <usize>ldDt << 2);
    const o = <usize>r * <usize>H << 2;
    for (let h = 0; h < H; h++) {
      const hOff = <usize>h << 2;
      const v = <f64>load<f32>(src + hOff) + <f64>load<f32>(dtBias + hOff);
      let d = v > 20 ? v : Math.log1p(Math.exp(v)); // softplus, PyTorch's threshold
      d = d < lo ? lo : d > hi ? hi : d;
      const a = -Math.exp(<f64>load<f32>(aLog + hOff));
      store<f32>(dtOut + o + hOff, <f32>d);
      store<f32>(decayOut + o + hOff, <f32>Math.exp(d * a));
    }
  }
}

/** Rows a tile: their state (TILE·N floats: 16 KB at N 128) stays in L1 while the tile walks the sequence. */
const TILE = 32;

export function ssdScan(
  x: usize, ldX: i32, Bm: usize, ldB: i32, Cm: usize, ldC: i32, dtv: usize, decay: usize, D: usize,
  z: usize, ldZ: i32, state: usize, y: usize, batch: i32, L: i32, H: i32, P: i32, G: i32, N: i32, r0: i32, r1: i32,
): void {
  const per = H / G;
  const HP = H * P;
  const rowN = <usize>N << 2;
  for (let b = 0; b < batch; b++) {
    let r = r0;
    while (r < r1) {
      const head = r / P;
      const pa = r - head * P;
      const pb = min(r1 - head * P, min(P, pa + TILE));
      r = head * P + pb;
      const g = head / per;
      const dH = load<f32>(D + (<usize>head << 2));
      const st0 = state + ((<usize>(b * H + head) * <usize>P) * rowN);
      for (let t = 0; t < L; t++) {
        const row = <usize>(b * L + t);
        const dt = load<f32>(dtv + ((row * <usize>H + <usize>head) << 2));
        const dec = f32x4.splat(load<f32>(decay + ((row * <usize>H + <usize>head) << 2)));
        const xRow = x + ((row * <usize>ldX + <usize>(head * P)) << 2);
        const bRow = Bm + ((row * <usize>ldB + <usize>(g * N)) << 2);
        const cRow = Cm + ((row * <usize>ldC + <usize>(g * N)) << 2);
        const yRow = y + ((row * <usize>HP + <usize>(head * P)) << 2);
        const zRow = z ? z + ((row * <usize>ldZ + <usize>(head * P)) << 2) : 0;
        let p = pa;
        // four rows a pass: each B and C vector loaded once for the four
        for (; p + 4 <= pb; p += 4) {
          const pOff = <usize>p << 2;
          const x0 = load<f32>(xRow + pOff), x1 = load<f32>(xRow + pOff, 4), x2 = load<f32>(xRow + pOff, 8), x3 = load<f32>(xRow + pOff, 12);
          const dx0 = f32x4.splat(dt * x0), dx1 = f32x4.splat(dt * x1), dx2 = f32x4.splat(dt * x2), dx3 = f32x4.splat(dt * x3);
          const s0 = st0 + <usize>p * rowN, s1 = s0 + rowN, s2 = s1 + rowN, s3 = s2 + rowN;
          let a0 = f32x4.splat(0), a1 = a0, a2 = a0, a3 = a0;
          let n = 0;
          for (; n + 4 <= N; n += 4) {
            const nOff = <usize>n << 2;
            const bv = v128.load(bRow + nOff), cv = v128.load(cRow + nOff);
            const h0 = madd(dx0, bv, f32x4.mul(dec, v128.load(s0 + nOff)));
            const h1 = madd(dx1, bv, f32x4.mul(dec, v128.load(s1 + nOff)));
            const h2 = madd(dx2, bv, f32x4.mul(dec, v128.load(s2 + nOff)));
            const h3 = madd(dx3, bv, f32x4.mul(dec, v128.load(s3 + nOff)));
            v128.store(s0 + nOff, h0);
            v128.store(s1 + nOff, h1);
            v128.store(s2 + nOff, h2);
            v128.store(s3 + nOff, h3);
            a0 = madd(h0, cv, a0);
            a1 = madd(h1, cv, a1);
            a2 = madd(h2, cv, a2);
            a3 = madd(h3, cv, a3);
          }
          finishRow(a0, s0, n, N, dt * x0, dec, bRow, cRow, dH, x0, zRow, yRow, p);
          finishRow(a1, s1, n, N, dt * x1, dec, bRow, cRow, dH, x1, zRow, yRow, p + 1);
          finishRow(a2, s2, n, N, dt * x2, dec, bRow, cRow, dH, x2, zRow, yRow, p + 2);
          finishRow(a3, s3, n, N, dt * x3, dec, bRow, cRow, dH, x3, zRow, yRow, p + 3);
        }
        // the rows left, one at a time: the same arithmetic a row
        for (; p < pb; p++) {
          const x0 = load<f32>(xRow + (<usize>p << 2));
          const dx0 = f32x4.splat(dt * x0);
          const s0 = st0 + <usize>p * rowN;
          let a0 = f32x4.splat(0);
          let n = 0;
          for (; n + 4 <= N; n += 4) {
            const nOff = <usize>n << 2;
            const bv = v128.load(bRow + nOff), cv = v128.load(cRow + nOff);
            const h0 = madd(dx0, bv, f32x4.mul(dec, v128.load(s0 + nOff)));
            v128.store(s0 + nOff, h0);
            a0 = madd(h0, cv, a0);
          }
          finishRow(a0, s0, n, N, dt * x0, dec, bRow, cRow, dH, x0, zRow, yRow, p);
        }
      }
    }
  }
}

/** The end of one row's step: the state indices from n0 on (N % 4 of them) one at a time, the sum, D·x and the
 *  gate, stored at y[p]. */
// @ts-ignore: decorator
@inline function finishRow(
  acc: v128, s: usize, n0: i32, N: i32, dx: f32, dec: v128, bRow: usize, cRow: usize, dH: f32, xv: f32,
  zRow: usize, yRow: usize, p: i32,
): void {
  let sum = hsum(acc);
  const d = f32x4.extract_lane(dec, 0);
  for (let n = n0; n < N; n++) {
    const nOff = <usize>n << 2;
    const h = d * load<f32>(s + nOff) + dx * load<f32>(bRow + nOff);
    store<f32>(s + nOff, h);
    sum += h * load<f32>(cRow + nOff);
  }
  let out = sum + dH * xv;
  if (zRow) {
    const zv = <f64>load<f32>(zRow + (<usize>p << 2));
    out = <f32>(<f64>out * (zv / (1 + Math.exp(-zv))));
  }
  store<f32>(yRow + (<usize>p << 2), out);
}

export function gatedRmsNorm(
  y: usize, z: usize, ldZ: i32, weight: usize, eps: f64, E: i32, gs: i32, normBeforeGate: i32, out: usize,
  r0: i32, r1: i32,
): void {
  const rowE = <usize>E << 2;
  for (let r = r0; r < r1; r++) {
    const yRow = y + <usize>r * rowE;
    const zRow = z + (<usize>r * <usize>ldZ << 2);
    const oRow = out + <usize>r * rowE;
    for (let g0 = 0; g0 < E; g0 += gs) {
      // the norm's input (y, or y · silu(z)) into out, and its sum of squares in f64, lanes 0-1 and 2-3 apart
      let ssLo = f64x2.splat(0), ssHi = f64x2.splat(0);
      for (let i = 0; i < gs; i += 4) {
        const cnt = min(4, gs - i);
        const p = <usize>(g0 + i) << 2;
        let v = loadLanes(yRow + p, cnt);
        if (!normBeforeGate) v = f32x4.mul(v, siluV(loadLanes(zRow + p, cnt)));
        storeLanes(oRow + p, v, cnt);
        const lo = f64x2.promote_low_f32x4(v);
        const hi = f64x2.promote_low_f32x4(i32x4.shuffle(v, v, 2, 3, 0, 1));
        ssLo = f64x2.add(ssLo, f64x2.mul(lo, lo));
        ssHi = f64x2.add(ssHi, f64x2.mul(hi, hi));
      }
      const ss = f64x2.add(ssLo, ssHi);
      const inv = f32x4.splat(<f32>(1 / Math.sqrt((f64x2.extract_lane(ss, 0) + f64x2.extract_lane(ss, 1)) / <f64>gs + eps)));
      for (let i = 0; i < gs; i += 4) {
        const cnt = min(4, gs - i);
        const p = <usize>(g0 + i) << 2;
        let o = f32x4.mul(f32x4.mul(loadLanes(oRow + p, cnt), inv), loadLanes(weight + p, cnt));
        if (normBeforeGate) o = f32x4.mul(o, siluV(loadLanes(zRow + p, cnt)));
        storeLanes(oRow + p, o, cnt);
      }
    }
  }
}
