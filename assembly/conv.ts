// Causal depthwise conv1d followed by SiLU, with an optional carried history.
// The reference twin is src/backend/cpu/conv.ts (causalConv1dSiluF32); the op is Backend.causalConv1dSilu.
//
// For every batch b, channel e and time t, with H = K - 1 and seq = [the H inputs before t = 0, x[0..L)]:
//   out[t, e] = silu(bias[e] + Σ_k weight[e, k]·seq[t + k, e])       (the sum in k order, from the bias)
// seq's first H rows come from state (zeros when absent); afterwards state holds the last H rows of seq.
//
// ABI: causalConv1dSilu(x, ldX, weight, bias, state, out, batch, L, E, K, e0, e1)
//   Pointers are byte offsets into the shared memory, f32 data, row-major; 0 means "absent" for bias and state,
//   so no tensor may start at byte 0. T = batch·L rows, row r = b·L + t.
//   x       column window [T, E]: element (r, e) at x + 4·(r·ldX + e) (pass the matrix's base plus 4·col0, and its
//           full width ldX in elements: x is the first E columns of in_proj's output)
//   weight  [E, K] (conv1d.weight [E, 1, K])
//   bias    [E], or 0
//   state   [B, K-1, E], or 0: read as the K-1 inputs before t = 0 (0: zeros), then overwritten with the last K-1
//           inputs of seq, as the reference does
//   out     [T, E] contiguous output
//   e0, e1  the channels this call computes, 0 <= e0 <= e1 <= E, for every batch. Calls on disjoint ranges may run
//           at once. Each channel runs the same instructions whatever range and lane it falls in, so any split
//           gives bitwise the same out and state.
//
// Vectorized over four channels at a time. K = 4 (every Mamba checkpoint) keeps the weights and a sliding window
// of the last four inputs in registers; other K read the window from memory with the weights gathered each step.
import { madd } from "./simd";
import { siluV, loadLanes, gatherLanes, storeLanes } from "./math";

export function causalConv1dSilu(
  x: usize, ldX: i32, weight: usize, bias: usize, state: usize, out: usize,
  batch: i32, L: i32, E: i32, K: i32, e0: i32, e1: i32,
): void {
  if (K == 4) conv4(x, ldX, weight, bias, state, out, batch, L, E, e0, e1);
  else convAnyK(x, ldX, weight, bias, state, out, batch, L, E, K, e0, e1);
}

function conv4(
  x: usize, ldX: i32, weight: usize, bias: usize, state: usize, out: usize,
  batch: i32, L: i32, E: i32, e0: i32, e1: i32,
): void {
  const rowX = <usize>ldX << 2;
  const rowE = <usize>E << 2;
  for (let b = 0; b < batch; b++) {
    const stateB = state + <usize>(b * 3) * rowE;
    for (let e = e0; e < e1; e += 4) {
      const cnt = min(4, e1 - e);
      const eOff = <usize>e << 2;
      // w_k: weight[e + j, k] at lane j; the group's weights are 16 floats in a row, [4][K = 4], transposed
      const wRow = weight + (eOff << 2);
      let w0: v128, w1: v128, w2: v128, w3: v128;
      if (cnt == 4) {
        const r0 = v128.load(wRow), r1 = v128.load(wRow, 16), r2 = v128.load(wRow, 32), r3 = v128.load(wRow, 48);
        const t0 = i32x4.shuffle(r0, r1, 0, 4, 1, 5), t1 = i32x4.shuffle(r0, r1, 2, 6, 3, 7);
        const t2 = i32x4.shuffle(r2, r3, 0, 4, 1, 5), t3 = i32x4.shuffle(r2, r3, 2, 6, 3, 7);
        w0 = i32x4.shuffle(t0, t2, 0, 1, 4, 5);
        w1 = i32x4.shuffle(t0, t2, 2, 3, 6, 7);
        w2 = i32x4.shuffle(t1, t3, 0, 1, 4, 5);
        w3 = i32x4.shuffle(t1, t3, 2, 3, 6, 7);
      } else {
        w0 = gatherLanes(wRow, 16, cnt);
        w1 = gatherLanes(wRow + 4, 16, cnt);
        w2 = gatherLanes(wRow + 8, 16, cnt);
        w3 = gatherLanes(wRow + 12, 16, cnt);
      }
      const bV = bias ? loadLanes(bias + eOff, cnt) : f32x4.splat(0);
      // the window seq[t], seq[t + 1], seq[t + 2] before x[t] arrives
      let s0 = f32x4.splat(0), s1 = f32x4.splat(0), s2 = f32x4.splat(0);
      if (state) {
        s0 = loadLanes(stateB + eOff, cnt);
        s1 = loadLanes(stateB + rowE + eOff, cnt);
        s2 = loadLanes(stateB + 2 * rowE + eOff, cnt);
      }
      let xp = x + <usize>(b * L) * rowX + eOff;
      let op = out + <usize>(b * L) * rowE + eOff;
      for (let t = 0; t < L; t++) {
        const s3 = loadLanes(xp, cnt);
        let acc = madd(w0, s0, bV);
        acc = madd(w1, s1, acc);
        acc = madd(w2, s2, acc);
        acc = madd(w3, s3, acc);
        storeLanes(op, siluV(acc), cnt);
        s0 = s1;
        s1 = s2;
        s2 = s3;
        xp += rowX;
        op += rowE;
      }
      if (state) {
        storeLanes(stateB + eOff, s0, cnt);
        storeLanes(stateB + rowE + eOff, s1, cnt);
        storeLanes(stateB + 2 * rowE + eOff, s2, cnt);
      }
    }
  }
}

function convAnyK(
  x: usize, ldX: i32, weight: usize, bias: usize, state: usize, out: usize,
  batch: i32, L: i32, E: i32, K: i32, e0: i32, e1: i32,
): void {
  const H = K - 1;
  const rowX = <usize>ldX << 2;
  const rowE = <usize>E << 2;
  const rowK = <usize>K << 2;
  for (let b = 0; b < batch; b++) {
    const stateB = state + <usize>(b * H) * rowE;
    const xB = x + <usize>(b * L) * rowX;
    for (let e = e0; e < e1; e += 4) {
      const cnt = min(4, e1 - e);
      const eOff = <usize>e << 2;
      const wRow = weight + <usize>e * rowK;
      const bV = bias ? loadLanes(bias + eOff, cnt) : f32x4.splat(0);
      for (let t = 0; t < L; t++) {
        let acc = bV;
        for (let k = 0; k < K; k++) {
          const src = t + k - H; // < 0: a row of the history
          let v = f32x4.splat(0);
          if (src >= 0) v = loadLanes(xB + <usize>src * rowX + eOff, cnt);
          else if (state) v = loadLanes(stateB + <usize>(H + src) * rowE + eOff, cnt);
          acc = madd(gatherLanes(wRow + (<usize>k << 2), rowK, cnt), v, acc);
        }
        storeLanes(out + <usize>(b * L + t) * rowE + eOff, siluV(acc), cnt);
      }
      // new history row j = seq[L + j]: an input when L + j >= H, else the old row L + j (> j: not yet overwritten)
      if (state) {
        for (let j = 0; j < H; j++) {
          const src = L + j - H;
          const v = src >= 0
            ? loadLanes(xB + <usize>src * rowX + eOff, cnt)
            : loadLanes(stateB + <usize>(L + j) * rowE + eOff, cnt);
          storeLanes(stateB + <usize>j * rowE + eOff, v, cnt);
        }
      }
    }
  }
}
