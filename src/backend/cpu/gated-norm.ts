/**
 * The two norms of the later families, forward and backward:
 *  - Mamba-2's gated RMSNorm (mamba_ssm's RMSNormGated), per row and per group of gs channels:
 *      gate after (normBeforeGate false): v = y · silu(z);  out = v · r · w,  r = 1/sqrt(mean_group(v²) + eps)
 *      gate before (normBeforeGate true): out = y · r · w · silu(z),          r = 1/sqrt(mean_group(y²) + eps)
 *  - Falcon-Mamba's RMS norm without weights over column windows (dt | B | C): out = x · r per window.
 * Backward of n = v · r (r over a group of m values): dv = r · (dn − n · mean(dn · n)).
 * silu'(z) = σ(z) · (1 + z · (1 − σ(z))). Sums run in float64.
 */
import type { Strided } from "./tensor.ts";

const sigmoid = (v: number) => 1 / (1 + Math.exp(-v));

/**
 * The input of the norm for one group of row t (y, or v = y · silu(z) when the gate comes after), written to
 * v[0 .. gs); returns r = 1/sqrt(mean(v²) + eps).
 */
function groupInput(
  y: Float32Array, z: Strided, E: number, eps: number, gs: number, normBeforeGate: boolean, t: number, g0: number,
  v: Float64Array,
): number {
  let ss = 0;
  for (let i = 0; i < gs; i++) {
    const c = g0 + i;
    const zv = z.data[t * z.ld + z.off + c]!;
    const a = normBeforeGate ? y[t * E + c]! : y[t * E + c]! * zv * sigmoid(zv);
    v[i] = a;
    ss += a * a;
  }
  return 1 / Math.sqrt(ss / gs + eps);
}

/** Calls f for each window of each row of x: [T, W] (windows of the given widths, Σ = W) with the window's start,
 *  its width m and r = 1/sqrt(mean(x²) + eps) over it. */
function forEachWindow(x: Float32Array, widths: readonly number[], eps: number, f: (c0: number, m: number, r: number) => void): void {
  const W = widths.reduce((a, b) => a + b, 0);
  const T = x.length / W;
  for (let t = 0; t < T; t++) {
    let c0 = t * W;
    for (const m of widths) {
      let ss = 0;
      for (let i = 0; i < m; i++) ss += x[c0 + i]! * x[c0 + i]!;
      f(c0, m, 1 / Math.sqrt(ss / m + eps));
      c0 += m;
    }
  }
}

// y: [T, E], z: [T, E] window, weight: [E] -> out: [T, E]
export function gatedRmsNormF32(
  y: Float32Array, z: Strided, weight: Float32Array, eps: number, gs: number, normBeforeGate: boolean, out: Float32Array,
): void {
  const E = z.width, T = z.rows;
  const v = new Float64Array(gs);
  for (let t = 0; t < T; t++) {
    for (let g0 = 0; g0 < E; g0 += gs) {
      const r = groupInput(y, z, E, eps, gs, normBeforeGate, t, g0, v);
      for (let i = 0; i < gs; i++) {
        const c = g0 + i;
        let o = v[i]! * r * weight[c]!;
        if (normBeforeGate) {
          const zv = z.data[t * z.ld + z.off + c]!;
          o *= zv * sigmoid(zv);
        }
        out[t * E + c] = o;
      }
    }
  }
}

// dOut: [T, E]; dy: [T, E], dz: [T, E] window, dWeight: [E] (all +=)
export function gatedRmsNormBackwardF32(
  y: Float32Array, z: Strided, weight: Float32Array, eps: number, gs: number, normBeforeGate: boolean, dOut: Float32Array,
  dy: Float32Array, dz: Strided, dWeight: Float32Array,
): void {
  const E = z.width, T = z.rows;
  const n = new Float64Array(gs); // the normalized values
  const dn = new Float64Array(gs);
  const dw = new Float64Array(E);
  for (let t = 0; t < T; t++) {
    for (let g0 = 0; g0 < E; g0 += gs) {
      const r = groupInput(y, z, E, eps, gs, normBeforeGate, t, g0, n);
      let dot = 0;
      for (let i = 0; i < gs; i++) {
        const c = g0 + i;
        n[i] = n[i]! * r;
        const go = dOut[t * E + c]!;
        const w = weight[c]!;
        if (normBeforeGate) {
          // out = n · w · silu(z)
          const zv = z.data[t * z.ld + z.off + c]!;
          const sg = sigmoid(zv);
          dw[c] = dw[c]! + go * n[i]! * zv * sg;
          const zi = t * dz.ld + dz.off + c;
          dz.data[zi] = dz.data[zi]! + go * n[i]! * w * sg * (1 + zv * (1 - sg));
          dn[i] = go * w * zv * sg;
        } else {
          dw[c] = dw[c]! + go * n[i]!;
          dn[i] = go * w;
        }
        dot += dn[i]! * n[i]!;
      }
      const mean = dot / gs;
      for (let i = 0; i < gs; i++) {
        const c = g0 + i;
        const dv = r * (dn[i]! - n[i]! * mean); // gradient of the normed input (v, or y before the gate)
        if (normBeforeGate) {
          dy[t * E + c] = dy[t * E + c]! + dv;
        } else {
          // v = y · silu(z)
          const zv = z.data[t * z.ld + z.off + c]!;
          const sg = sigmoid(zv);
          dy[t * E + c] = dy[t * E + c]! + dv * zv * sg;
          const zi = t * dz.ld + dz.off + c;
          dz.data[zi] = dz.data[zi]! + dv * y[t * E + c]! * sg * (1 + zv * (1 - sg));
        }
      }
    }
  }
  for (let c = 0; c < E; c++) dWeight[c] = dWeight[c]! + dw[c]!;
}

// x: [T, W], widths: Σ = W -> out: [T, W]
export function segmentRmsNormF32(x: Float32Array, widths: readonly number[], eps: number, out: Float32Array): void {
  forEachWindow(x, widths, eps, (c0, m, r) => {
    for (let i = 0; i < m; i++) out[c0 + i] = x[c0 + i]! * r;
  });
}

// x: [T, W] (the input of the forward), dOut: [T, W]; dx: [T, W] (+=)
export function segmentRmsNormBackwardF32(x: Float32Array, widths: readonly number[], eps: number, dOut: Float32Array, dx: Float32Array): void {
  forEachWindow(x, widths, eps, (c0, m, r) => {
    let dot = 0;
    for (let i = 0; i < m; i++) dot += dOut[c0 + i]! * x[c0 + i]! * r;
    const mean = dot / m;
    for (let i = 0; i < m; i++) dx[c0 + i] = dx[c0 + i]! + r * (dOut[c0 + i]! - x[c0 + i]! * r * mean);
  });
}
