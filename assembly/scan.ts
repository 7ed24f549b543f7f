// The selective scan (Mamba's S6 recurrence), forward, with an optional carried state.
// The reference twin is src/backend/cpu/scan.ts (selectiveScanF32); the op is Backend.selectiveScan.
//
// For every batch b, channel e and time t (sequentially in t), with h[N] the state of channel e:
//   dt = softplus(delta[t, e] + deltaBias[e])            (v itself above 20, as PyTorch)
//   h[n] = exp(dt·A[e, n])·h[n] + (dt·u[t, e])·B[t, n]   A = -exp(A_log)
//   y[t, e] = Σ_n h[n]·C[t, n] + D[e]·u[t, e];  y *= silu(z[t, e]) when z is given
// in f32, with math.ts's expV (relative error < 1e-7) for every exp.
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
//   y          [T, E] contiguous output
//   work       scratch of this call's thread: 32·N bytes, 16-byte aligned (A and h of one group of channels).
//              Threads running at once need distinct work areas.
//   e0, e1     the channels this call computes, 0 <= e0 <= e1 <= E, for every batch. Calls on disjoint ranges may
//              run at once (they write disjoint parts of y and state). Each channel runs the same instructions
//              whatever range and lane it falls in, so any split gives bitwise the same y and state.
//
// Vectorized over four channels at a time (lane j = channel e + j); the state of the group lives in `work` as
// [N][4] (h for channel j and state index n at lane j of vector n), so the loop over n loads one vector a step.
// B[t, n] and C[t, n] are broadcast to the four lanes. The time loop is inside the group loop: the group's
// state stays in L1 for the whole sequence.
import { madd } from "./simd";
import { expV, softplusV, siluV, loadLanes, gatherLanes, storeLanes, scatterLanes } from "./math";

export function selectiveScan(
  u: usize, delta: usize, ldDelta: i32, deltaBias: usize, A: usize, aIsLog: i32,
  Bm: usize, ldB: i32, Cm: usize, ldC: i32, D: usize, z: usize, ldZ: i32, state: usize, y: usize, work: usize,
  batch: i32, L: i32, E: i32, N: i32, e0: i32, e1: i32,
): void {
  const workA = work; // [N][4]: A[e + j, n] at lane j of vector n
  const workH = work + (<usize>N << 4); // [N][4]: h, same layout
  const rowN = <usize>N << 2; // bytes between channels in A and state
  for (let b = 0; b < batch; b++) {
    for (let e = e0; e < e1; e += 4) {
      const cnt = min(4, e1 - e);
      // the group's A and initial state, transposed to [N][4]; padded lanes compute on zeros and are never stored
      const aRow = A + <usize>e * rowN;
      for (let n = 0; n < N; n++) {
        const a = gatherLanes(aRow + (<usize>n << 2), rowN, cnt);
        v128.store(workA + (<usize>n << 4), aIsLog ? f32x4.neg(expV(a)) : a);
      }
      const stateRow = state + (<usize>b * <usize>E + <usize>e) * rowN;
      for (let n = 0; n < N; n++) {
        const h = state ? gatherLanes(stateRow + (<usize>n << 2), rowN, cnt) : f32x4.splat(0);
        v128.store(workH + (<usize>n << 4), h);
      }
      const eOff = <usize>e << 2;
      const biasV = loadLanes(deltaBias + eOff, cnt);
      const dV = loadLanes(D + eOff, cnt);
      for (let t = 0; t < L; t++) {
        const row = <usize>(b * L + t);
        const uV = loadLanes(u + ((row * <usize>E) << 2) + eOff, cnt);
        const dt = softplusV(f32x4.add(loadLanes(delta + ((row * <usize>ldDelta) << 2) + eOff, cnt), biasV));
        const du = f32x4.mul(dt, uV);
        const bRow = Bm + ((row * <usize>ldB) << 2);
        const cRow = Cm + ((row * <usize>ldC) << 2);
        let acc = f32x4.splat(0);
        for (let n = 0; n < N; n++) {
          const nOff = <usize>n << 4;
          const dA = expV(f32x4.mul(dt, v128.load(workA + nOff)));
          const h = madd(dA, v128.load(workH + nOff), f32x4.mul(du, v128.load32_splat(bRow + (<usize>n << 2))));
          v128.store(workH + nOff, h);
          acc = madd(h, v128.load32_splat(cRow + (<usize>n << 2)), acc);
        }
        let out = madd(dV, uV, acc);
        if (z) out = f32x4.mul(out, siluV(loadLanes(z + ((row * <usize>ldZ) << 2) + eOff, cnt)));
        storeLanes(y + ((row * <usize>E) << 2) + eOff, out, cnt);
      }
      if (state) {
        for (let n = 0; n < N; n++) scatterLanes(stateRow + (<usize>n << 2), rowN, v128.load(workH + (<usize>n << 4)), cnt);
      }
    }
  }
}

/** A = -exp(A_log) over count f32 (byte offsets; dst may be src), with the scan's own exp: for aIsLog = 0. */
export function negExpF32(src: usize, dst: usize, count: i32): void {
  for (let i = 0; i < count; i += 4) {
    const p = <usize>i << 2;
    storeLanes(dst + p, f32x4.neg(expV(loadLanes(src + p, min(4, count - i)))), min(4, count - i));
  }
}
