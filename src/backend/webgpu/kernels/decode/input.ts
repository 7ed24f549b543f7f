/**
 * WGSL shared by the fused decode kernels that start from the residual stream (kernel 1 of every layer, and the
 * head): rebuild the B input rows in workgroup memory, then RMS-normalize them there. Not a kernel by itself.
 *
 * Kernel 2 of a layer leaves out_proj as G partial sums, one per channel group (its bias in group 0), so the
 * layer's output is residual + Σ_g parts[g]. Every workgroup of the next kernel needs the whole normalized vector,
 * so each one adds the partials itself: G · B · D reads, from L2 (just written), cheaper than a dispatch that would
 * add them once. Decode kernels are latency-bound, so these loads are issued PG · PI at a time.
 *
 * The including kernel declares: constants WG (threads) and MAXB (row stride of `red`), workgroup arrays
 * `us` (at least B · D) and `red` (at least WG · MAXB), and `fn normWeight(d: u32) -> f32`; sumInput needs the
 * bindings `parts` and `res` (writable when `writeRes`), gatherInput `tbl(i)` and `ids`.
 */

/** sumInput: us[i] = res[resIn + i] (when hasRes) + Σ_g parts[g · n + i], i < n = B · D; with `writeRes` the sum
 *  is also stored at res[resOut + i] when asked (the next layer's residual). */
export function sumInputWgsl(writeRes: boolean): string {
  return /* wgsl */ `
const PG = 8u; // partial groups read together
const PI = 4u; // values a thread reads from each

fn sumInput(t: u32, n: u32, G: u32, hasRes: bool, resIn: u32, storeRes: bool, resOut: u32) {
  for (var i0 = t; i0 < n; i0 += WG * PI) {
    var s = array<f32, PI>(); // explicit zeros: a var in a loop is not reliably re-zeroed on every trip
    if (hasRes) {
      for (var k = 0u; k < PI; k++) {
        let i = i0 + k * WG;
        if (i < n) { s[k] = res[resIn + i]; }
      }
    }
    for (var g0 = 0u; g0 < G; g0 += PG) {
      var v = array<f32, PG * PI>();
      for (var j = 0u; j < PG; j++) {
        for (var k = 0u; k < PI; k++) {
          let i = i0 + k * WG;
          if (g0 + j < G && i < n) { v[j * PI + k] = parts[(g0 + j) * n + i]; }
        }
      }
      for (var j = 0u; j < PG; j++) {
        for (var k = 0u; k < PI; k++) { s[k] += v[j * PI + k]; }
      }
    }
    for (var k = 0u; k < PI; k++) {
      let i = i0 + k * WG;
      if (i < n) {
        us[i] = s[k];
        ${writeRes ? "if (storeRes) { res[resOut + i] = s[k]; }" : ""}
      }
    }
  }
}
`;
}

/** gatherInput: us[b, d] = table[ids[b], d] (zeros for an id outside the V rows), also stored at res[resOut + ·]
 *  when asked: the first layer's input is the embedding. */
export const gatherInputWgsl = /* wgsl */ `
const PI = 4u; // values a thread reads together

fn gatherInput(t: u32, B: u32, D: u32, V: u32, storeRes: bool, resOut: u32) {
  var rowOf: array<u32, MAXB>;
  for (var b = 0u; b < MAXB; b++) { if (b < B) { rowOf[b] = u32(ids[b]); } }
  let n = B * D;
  for (var i0 = t; i0 < n; i0 += WG * PI) {
    var v = array<f32, PI>(); // explicit zeros: a var in a loop is not reliably re-zeroed on every trip
    for (var k = 0u; k < PI; k++) {
      let i = i0 + k * WG;
      if (i < n) {
        let id = rowOf[i / D];
        if (id < V) { v[k] = tbl(id * D + i % D); }
      }
    }
    for (var k = 0u; k < PI; k++) {
      let i = i0 + k * WG;
      if (i < n) {
        us[i] = v[k];
        if (storeRes) { res[resOut + i] = v[k]; }
      }
    }
  }
}
`;

/** normRows: RMS-normalizes the B rows of us in place, us[b, d] *= inverseSqrt(mean(us[b, ·]²) + eps) · normWeight(d);
 *  starts and ends with a barrier (us is complete before, and read freely after). */
export const normRowsWgsl = /* wgsl */ `
fn normRows(t: u32, B: u32, D: u32, eps: f32) {
  workgroupBarrier();
  var ss: array<f32, MAXB>;
  for (var b = 0u; b < B; b++) {
    for (var d = t; d < D; d += WG) {
      let v = us[b * D + d];
      ss[b] = fma(v, v, ss[b]);
    }
  }
  for (var b = 0u; b < MAXB; b++) { red[t * MAXB + b] = ss[b]; }
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (t < s) {
      for (var b = 0u; b < B; b++) { red[t * MAXB + b] += red[(t + s) * MAXB + b]; }
    }
    workgroupBarrier();
  }
  for (var i = t; i < B * D; i += WG) {
    let b = i / D;
    let d = i % D;
    us[i] *= inverseSqrt(red[b] / f32(D) + eps) * normWeight(d);
  }
  workgroupBarrier();
}
`;
