// The selective scan (Mamba's S6 recurrence), forward, with an optional carried state.
// The reference twin is src/backend/cpu/scan.ts (selectiveScanF32); the op is Backend.selectiveScan.
//
// For every batch b, channel e and time t (sequentially in t), with h[N] the state of channel e:
//   dt = softplus(delta[t, e] + deltaBias[e])            (v itself above 20, as PyTorch)
//   h[n] = exp(dt·A[e, n])·h[n] + (dt·u[t, e])·B[t, n]   A = -exp(A_log)
//   y[t, e] = Σ_n h[n]·C[t, n] + D[e]·u[t, e];  y *= silu(z[t, e]) when z is given
// in f32, with math.ts's expV (relative error < 1.5e-7) for every exp.
//
// ABI: selectiveScan(u, delta, ldDelta, deltaBias, A, aIsLog, Bm, ldB, Cm, ldC, D, z, ldZ, state, y, work,
//                    batch, L, E, N, e0, e1)
//   Pointers are byte offsets into the shared memory, f32 data, row-major. 0 means "absent" for z and state, so no
//   tensor may start at byte 0. T = batch·L rows, row r = b·L + t.
//   u          [T, E] contiguous (the conv's output)
//   delta      column window [T, E]: element (r, e) at delta + 4·(r·ldDelta + e), i.e. pass the matrix's base plus
//              4·col0 and its full width ldDelta (in elements). Bm, Cm ([T, N]) and z ([T, E]) are windows alike.
//   deltaBias  [E]
//   A          [E, N]: A_log when aIsLog = 1 (the kernel takes -exp of it for every group of channels), or
//              A = -exp(A_log) as negExpF32 writes it when aIsLog = 0 (the same values, so the same results;
//              it saves N exps a channel per call, which matters at L = 1)
//   D          [E]
//   z          window [T, E], or 0: no gate
//   state      [B, E, N], or 0. Read as the state before t = 0 (0: zeros) and overwritten with the state after
//              the last t, as the reference does.
//   y          [T, E] contiguous output (also the scratch of dt: rows [b·L, b·L + L) of channels [e0, e1) are
//              written twice; y must not overlap an input)
//   work       scratch of this call's thread: 32·N bytes, 16-byte aligned (A and h of one group of channels).
//              Threads running at once need distinct work areas.
//   e0, e1     the channels this call computes, 0 <= e0 <= e1 <= E, for every batch. Calls on disjoint ranges may
//              run at once (they write disjoint parts of y and state). Each channel runs the same instructions
//              whatever range and lane it falls in, so any split gives bitwise the same y and state.
//
// Vectorized over four channels at a time (lane j = channel e + j); the state of the group lives in `work` as
// [N][4] (h for channel j and state index n at lane j of vector n), so the loop over n loads one vector a step.
// B[t, n] and C[t, n] are broadcast to the four lanes. The time loop is inside the group loop: the group's
// state stays in L1 for the whole sequence, and the batch loop is inside it too: the group's A is transposed once.
// dt = softplus(...) is computed first for every row, row by row, into y; the recurrence then reads it back.
//
// Measured (bench/wasm-kernels.ts and a variant kept out of the tree, one thread, E 1536, N 16): vectorizing over
// n instead (one channel at a time, h[n..n+4] in a vector, four channels' sums reduced by a 4×4 transpose) ran
// as fast at L = 256 and 16-18% slower at L = 1, so the channels it is.
import { madd } from "./simd";
import {
  expV, expK, softplusV, siluV, loadLanes, gatherLanes, storeLanes, scatterLanes,
  c, EXP_MIN, LOG2E, ROUNDER, NEG_LN2_HI, NEG_LN2_LO, P6, P5, P4, P3, P2, P1, ONE,
} from "./math";

export function selectiveScan(
  u: usize, delta: usize, ldDelta: i32, deltaBias: usize, A: usize, aIsLog: i32,
  Bm: usize, ldB: i32, Cm: usize, ldC: i32, D: usize, z: usize, ldZ: i32, state: usize, y: usize, work: usize,
  batch: i32, L: i32, E: i32, N: i32, e0: i32, e1: i32,
): void {
  const workA = work; // [N][4]: A[e + j, n] at lane j of vector n
  const workH = work + (<usize>N << 4); // [N][4]: h, same layout
  const rowN = <usize>N << 2; // bytes between channels in A and state
  const rowE = <usize>E << 2;
  if (L <= 0) return; // no step: the state stays as it is
  // expV's constants, loaded once (from memory, so that V8 keeps them in registers or on the stack)
  const kMin = c(EXP_MIN), kLog2e = c(LOG2E), kRound = c(ROUNDER), kHi = c(NEG_LN2_HI), kLo = c(NEG_LN2_LO);
  const k6 = c(P6), k5 = c(P5), k4 = c(P4), k3 = c(P3), k2 = c(P2), k1 = c(P1), k0 = c(ONE);
  // dt for every row and channel first, into y (which the recurrence then overwrites), row by row: contiguous
  // accesses, and the softplus of the steps overlap, where inside the recurrence each would hold up its step
  for (let row: usize = 0; row < <usize>(batch * L); row++) {
    const dRow = delta + (row * <usize>ldDelta << 2);
    const yRow = y + row * rowE;
    for (let e = e0; e < e1; e += 4) {
      const cnt = min(4, e1 - e);
      const eOff = <usize>e << 2;
      storeLanes(yRow + eOff, softplusV(f32x4.add(loadLanes(dRow + eOff, cnt), loadLanes(deltaBias + eOff, cnt))), cnt);
    }
  }
  for (let e = e0; e < e1; e += 4) {
    const cnt = min(4, e1 - e);
    const eOff = <usize>e << 2;
    // the group's A, transposed to [N][4], once for every batch; padded lanes compute on zeros and are never stored
    loadGroup(A + <usize>e * rowN, workA, N, cnt);
    if (aIsLog) {
      for (let n = 0; n < N; n++) {
        const p = workA + (<usize>n << 4);
        v128.store(p, f32x4.neg(expV(v128.load(p))));
      }
    }
    const dV = loadLanes(D + eOff, cnt);
    for (let b = 0; b < batch; b++) {
      const rowB = <usize>(b * L);
      const stateRow = state + (<usize>b * <usize>E + <usize>e) * rowN;
      if (state) loadGroup(stateRow, workH, N, cnt);
      else memory.fill(workH, 0, <usize>N << 4);
      // u and dt of the next step are loaded one step ahead: their rows lie E floats apart, often outside L1
      let uNext = loadLanes(u + rowB * rowE + eOff, cnt);
      let dtNext = loadLanes(y + rowB * rowE + eOff, cnt);
      for (let t = 0; t < L; t++) {
        const row = rowB + <usize>t;
        const yRow = y + row * rowE + eOff;
        const uV = uNext, dt = dtNext;
        const zV = z ? loadLanes(z + ((row * <usize>ldZ) << 2) + eOff, cnt) : f32x4.splat(0);
        if (t + 1 < L) {
          uNext = loadLanes(u + (row + 1) * rowE + eOff, cnt);
          dtNext = loadLanes(yRow + rowE, cnt);
        }
        const du = f32x4.mul(dt, uV);
        const bRow = Bm + ((row * <usize>ldB) << 2);
        const cRow = Cm + ((row * <usize>ldC) << 2);
        let acc = f32x4.splat(0);
        let n = 0;
        // two state indices a pass: their exps interleave (22% faster than one at a time with fused multiply-add)
        for (; n + 2 <= N; n += 2) {
          const nOff = <usize>n << 4;
          const dA0 = expK(f32x4.mul(dt, v128.load(workA + nOff)), kMin, kLog2e, kRound, kHi, kLo, k6, k5, k4, k3, k2, k1, k0);
          const dA1 = expK(f32x4.mul(dt, v128.load(workA + nOff, 16)), kMin, kLog2e, kRound, kHi, kLo, k6, k5, k4, k3, k2, k1, k0);
          const bp = bRow + (<usize>n << 2), cp = cRow + (<usize>n << 2);
          const h0 = madd(dA0, v128.load(workH + nOff), f32x4.mul(du, v128.load32_splat(bp)));
          const h1 = madd(dA1, v128.load(workH + nOff, 16), f32x4.mul(du, v128.load32_splat(bp, 4)));
          v128.store(workH + nOff, h0);
          v128.store(workH + nOff, h1, 16);
          acc = madd(h0, v128.load32_splat(cp), acc);
          acc = madd(h1, v128.load32_splat(cp, 4), acc);
        }
        for (; n < N; n++) { // odd N (the same arithmetic: expV is expK with the table's constants)
          const nOff = <usize>n << 4;
          const dA = expV(f32x4.mul(dt, v128.load(workA + nOff)));
          const h = madd(dA, v128.load(workH + nOff), f32x4.mul(du, v128.load32_splat(bRow + (<usize>n << 2))));
          v128.store(workH + nOff, h);
          acc = madd(h, v128.load32_splat(cRow + (<usize>n << 2)), acc);
        }
        let out = madd(dV, uV, acc);
        if (z) out = f32x4.mul(out, siluV(zV));
        storeLanes(yRow, out, cnt);
      }
      if (state) storeGroup(workH, stateRow, N, cnt);
    }
  }
}

/** dst[n] (16 bytes each) = (src[j·N + n] for j < cnt, zeros after), n < N: rows of cnt channels to [N][4]. */
// @ts-ignore: decorator
@inline function loadGroup(src: usize, dst: usize, N: i32, cnt: i32): void {
  const rowN = <usize>N << 2;
  let n = 0;
  if (cnt == 4) {
    // four 4×4 blocks at a time, transposed in registers
    for (; n + 4 <= N; n += 4) {
      const p = src + (<usize>n << 2);
      const r0 = v128.load(p), r1 = v128.load(p + rowN), r2 = v128.load(p + 2 * rowN), r3 = v128.load(p + 3 * rowN);
      const t0 = i32x4.shuffle(r0, r1, 0, 4, 1, 5), t1 = i32x4.shuffle(r0, r1, 2, 6, 3, 7);
      const t2 = i32x4.shuffle(r2, r3, 0, 4, 1, 5), t3 = i32x4.shuffle(r2, r3, 2, 6, 3, 7);
      const q = dst + (<usize>n << 4);
      v128.store(q, i32x4.shuffle(t0, t2, 0, 1, 4, 5));
      v128.store(q, i32x4.shuffle(t0, t2, 2, 3, 6, 7), 16);
      v128.store(q, i32x4.shuffle(t1, t3, 0, 1, 4, 5), 32);
      v128.store(q, i32x4.shuffle(t1, t3, 2, 3, 6, 7), 48);
    }
  }
  for (; n < N; n++) v128.store(dst + (<usize>n << 4), gatherLanes(src + (<usize>n << 2), rowN, cnt));
}

/** The inverse of loadGroup: dst[j·N + n] = lane j of src[n], for j < cnt. */
// @ts-ignore: decorator
@inline function storeGroup(src: usize, dst: usize, N: i32, cnt: i32): void {
  const rowN = <usize>N << 2;
  let n = 0;
  if (cnt == 4) {
    for (; n + 4 <= N; n += 4) {
      const q = src + (<usize>n << 4);
      const r0 = v128.load(q), r1 = v128.load(q, 16), r2 = v128.load(q, 32), r3 = v128.load(q, 48);
      const t0 = i32x4.shuffle(r0, r1, 0, 4, 1, 5), t1 = i32x4.shuffle(r0, r1, 2, 6, 3, 7);
      const t2 = i32x4.shuffle(r2, r3, 0, 4, 1, 5), t3 = i32x4.shuffle(r2, r3, 2, 6, 3, 7);
      const p = dst + (<usize>n << 2);
      v128.store(p, i32x4.shuffle(t0, t2, 0, 1, 4, 5));
      v128.store(p + rowN, i32x4.shuffle(t0, t2, 2, 3, 6, 7));
      v128.store(p + 2 * rowN, i32x4.shuffle(t1, t3, 0, 1, 4, 5));
      v128.store(p + 3 * rowN, i32x4.shuffle(t1, t3, 2, 3, 6, 7));
    }
  }
  for (; n < N; n++) scatterLanes(dst + (<usize>n << 2), rowN, v128.load(src + (<usize>n << 4)), cnt);
}

/** A = -exp(A_log) over count f32 (byte offsets; dst may be src), with the scan's own exp: for aIsLog = 0. */
export function negExpF32(src: usize, dst: usize, count: i32): void {
  for (let i = 0; i < count; i += 4) {
    const n = min(4, count - i), p = <usize>i << 2;
    storeLanes(dst + p, f32x4.neg(expV(loadLanes(src + p, n))), n);
  }
}
