// The fused residual add + RMSNorm.
// The reference twin is src/backend/cpu/norm.ts (addRmsNormF32); the op is Backend.addRmsNorm.
//
// For every row r of [T, D]:
//   residualOut[r] = x[r] + residual[r]                       (x[r] alone when residual is absent)
//   out[r] = residualOut[r] / sqrt(mean(residualOut[r]²) + eps) * weight
// residualOut is the f32 sum, as in the reference; the sum of squares and the scaling run in f64 as the reference's
// JavaScript numbers do, so out differs from the reference only by the order of the sum of squares (four partial
// sums here): at most an ulp of f32 in practice.
//
// ABI: addRmsNorm(x, residual, weight, eps, D, residualOut, out, r0, r1)
//   Pointers are byte offsets into the shared memory, f32 data, row-major; 0 means "absent" for residual, so no
//   tensor may start at byte 0.
//   x, residual, residualOut, out  [T, D] contiguous; residualOut and out may be the same memory as x or residual
//                                  (each element is read before it is written), but not as each other
//   weight                         [D]
//   eps                            f64 (the config's layer_norm_epsilon as JavaScript holds it)
//   r0, r1                         the rows this call computes, 0 <= r0 <= r1 <= T; calls on disjoint ranges may run
//                                  at once, and every row's result is the same whatever the split
import { loadLanes, storeLanes } from "./math";

export function addRmsNorm(
  x: usize, residual: usize, weight: usize, eps: f64, D: i32, residualOut: usize, out: usize, r0: i32, r1: i32,
): void {
  const row = <usize>D << 2;
  for (let r = r0; r < r1; r++) {
    const o = <usize>r * row;
    // residualOut = x + residual; the sum of squares in f64, lanes 0-1 and 2-3 apart
    let ssLo = f64x2.splat(0), ssHi = f64x2.splat(0);
    for (let d = 0; d < D; d += 4) {
      const cnt = min(4, D - d);
      const p = o + (<usize>d << 2);
      let v = loadLanes(x + p, cnt);
      if (residual) v = f32x4.add(v, loadLanes(residual + p, cnt));
      storeLanes(residualOut + p, v, cnt);
      const lo = f64x2.promote_low_f32x4(v);
      const hi = f64x2.promote_low_f32x4(i32x4.shuffle(v, v, 2, 3, 0, 1));
      ssLo = f64x2.add(ssLo, f64x2.mul(lo, lo));
      ssHi = f64x2.add(ssHi, f64x2.mul(hi, hi));
    }
    const ss = f64x2.add(ssLo, ssHi);
    const inv = 1 / Math.sqrt((f64x2.extract_lane(ss, 0) + f64x2.extract_lane(ss, 1)) / <f64>D + eps);
    const invV = f64x2.splat(inv);
    // out = (residualOut · inv) · weight in f64, rounded once to f32
    for (let d = 0; d < D; d += 4) {
      const cnt = min(4, D - d);
      const p = o + (<usize>d << 2);
      const v = loadLanes(residualOut + p, cnt);
      const w = loadLanes(weight + (<usize>d << 2), cnt);
      const lo = f64x2.mul(f64x2.mul(f64x2.promote_low_f32x4(v), invV), f64x2.promote_low_f32x4(w));
      const hi = f64x2.mul(
        f64x2.mul(f64x2.promote_low_f32x4(i32x4.shuffle(v, v, 2, 3, 0, 1)), invV),
        f64x2.promote_low_f32x4(i32x4.shuffle(w, w, 2, 3, 0, 1)),
      );
      storeLanes(out + p, i32x4.shuffle(f32x4.demote_f64x2_zero(lo), f32x4.demote_f64x2_zero(hi), 0, 1, 4, 5), cnt);
    }
  }
}
