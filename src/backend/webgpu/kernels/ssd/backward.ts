/**
 * Backward of Mamba-2's SSM on WebGPU, the straightforward way (the CPU's ssdBackwardF32, ../../../cpu/ssd-backward.ts),
 * a workgroup per (b, h) whose threads split the rows p of the state: it runs the forward once, keeping the state at
 * the start of every chunk of K positions; then, chunk by chunk from the last, recomputes the chunk's K states from
 * its checkpoint and walks time backwards with dS ([P, N]), the gradient reaching the state:
 *   gy = dout·silu(z);  dS' = dS + gy ⊗ C_t;  dC_t += gyᵀ·state_t;  dB_t += dt·dS'ᵀ·x_t;  dx_t = D·gy + dt·dS'·B_t
 *   da = Σ dS'∘state_{t-1};  ddt = Σ dS'·x_t⊗B_t + da·a·A;  dA += da·a·dt;  dS = a·dS'
 * The inputs arrive packed side by side in one buffer (x | B | C | dt | z, copied there by the caller); the
 * per-head gradients of B and C, and the per-(b, h) sums of dA_log, D and dt_bias, go to a scratch buffer that
 * ssd_backward_reduce sums over the heads of a group and ssd_backward_params over the batch rows. Work buffers: the
 * running state, the checkpoints, a chunk's states and dS, per (b, h).
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params, grid } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";
import { check } from "../../../../errors.ts";
import { softplusWgsl } from "./common.ts";

/** positions between two checkpoints of the backward's forward pass */
export const BWD_CHUNK = 16;

/** threads of a backward workgroup (one workgroup per (b, h); its threads split the rows p of the state) */
const WG = 64;

const bwdWgsl = /* wgsl */ `
// bindings: 0 inp [T, W] (x | B | C | dt | z) | 1 consts [3H] dtBias | A_log | D | 2 dy [T, H·P] | 3 state0 [B, H, P, N]
//           4 work (per (b, h): running state, checkpoints, chunk states, dS; per thread: partial dB, dC)
//           5 grads (see the launcher) | 6 params
// A workgroup per (b, h); thread k owns the rows p = k, k + WG, ... of the state and of dS, so the forward, the
// recompute and dS's recurrence need no exchange. Per time step the sums over p (dB_t, dC_t: [N]; da and ddt:
// scalars) go through per-thread partials: dB, dC in the work buffer, da, ddt in workgroup memory.
struct P {
  B: u32, L: u32, H: u32, P: u32, G: u32, N: u32, K: u32, nK: u32, h0: u32, hp: u32,
  W: u32, ox: u32, ob: u32, oc: u32, odt: u32, oz: u32, hasZ: u32, hasState: u32, lo: f32, hi: f32,
  oCk: u32, oCst: u32, oDS: u32, oPart: u32, oGx: u32, oGz: u32, oGdt: u32, oGB: u32, oGC: u32, oGp: u32,
}
const WG = ${WG}u;
@group(0) @binding(0) var<storage, read> inp: array<f32>;
@group(0) @binding(1) var<storage, read> consts: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> state0: array<f32>;
@group(0) @binding(4) var<storage, read_write> work: array<f32>;
@group(0) @binding(5) var<storage, read_write> grads: array<f32>;
@group(0) @binding(6) var<uniform> p: P;
var<workgroup> red: array<f32, ${3 * WG}>; // da | ddt | dD partials

fn sigmoid(v: f32) -> f32 { return 1.0 / (1.0 + exp(-v)); }

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let bh = wg.x; // one workgroup per (b, h) of this piece of heads: h = h0 + bh % hp
  let b = bh / p.hp;
  let hl = bh % p.hp;
  let h = p.h0 + hl;
  let HPl = p.hp * p.P; // the width of this piece's dx and dz
  let g = h / (p.H / p.G);
  let N = p.N;
  let PN = p.P * N;
  let HP = p.H * p.P;
  let A = -exp(consts[p.H + h]);
  let bias = consts[h];
  let Dh = consts[2u * p.H + h];
  let run = bh * PN;
  let ck = p.oCk + bh * p.nK * PN;
  let cst = p.oCst + bh * (p.K + 1u) * PN;
  let dS = p.oDS + bh * PN;
  let part = p.oPart + (bh * WG + tid) * 2u * N;
  // ---- forward over this thread's rows, keeping the state at the start of every chunk ----
  for (var q = tid; q < p.P; q += WG) {
    for (var n = 0u; n < N; n++) { work[run + q * N + n] = select(0.0, state0[(b * p.H + h) * PN + q * N + n], p.hasState != 0u); }
  }
  for (var t = 0u; t < p.L; t++) {
    let r = (b * p.L + t) * p.W;
    let v = inp[r + p.odt + h] + bias;
    let d = clamp(${softplusWgsl("v")}, p.lo, p.hi);
    let a = exp(d * A);
    for (var q = tid; q < p.P; q += WG) {
      if (t % p.K == 0u) { for (var n = 0u; n < N; n++) { work[ck + (t / p.K) * PN + q * N + n] = work[run + q * N + n]; } }
      let dx = d * inp[r + p.ox + h * p.P + q];
      for (var n = 0u; n < N; n++) { work[run + q * N + n] = fma(a, work[run + q * N + n], dx * inp[r + p.ob + g * N + n]); }
    }
  }
  // ---- backward, chunk by chunk from the last ----
  for (var q = tid; q < p.P; q += WG) { for (var n = 0u; n < N; n++) { work[dS + q * N + n] = 0.0; } }
  var dA = 0.0;
  var dBias = 0.0;
  var dD = 0.0;
  for (var cc = 0u; cc < p.nK; cc++) {
    let c = p.nK - 1u - cc;
    let t0 = c * p.K;
    let t1 = min(p.L, t0 + p.K);
    for (var q = tid; q < p.P; q += WG) { for (var n = 0u; n < N; n++) { work[cst + q * N + n] = work[ck + c * PN + q * N + n]; } }
    for (var t = t0; t < t1; t++) {
      let r = (b * p.L + t) * p.W;
      let v = inp[r + p.odt + h] + bias;
      let d = clamp(${softplusWgsl("v")}, p.lo, p.hi);
      let a = exp(d * A);
      let s0 = cst + (t - t0) * PN;
      for (var q = tid; q < p.P; q += WG) {
        let dx = d * inp[r + p.ox + h * p.P + q];
        for (var n = 0u; n < N; n++) { work[s0 + PN + q * N + n] = fma(a, work[s0 + q * N + n], dx * inp[r + p.ob + g * N + n]); }
      }
    }
    for (var tt = t1; tt > t0; tt--) {
      let t = tt - 1u;
      let row = b * p.L + t;
      let r = row * p.W;
      let v = inp[r + p.odt + h] + bias;
      let sp = ${softplusWgsl("v")};
      let d = clamp(sp, p.lo, p.hi);
      let a = exp(d * A);
      let prev = cst + (t - t0) * PN; // state_{t-1}
      let cur = prev + PN; // state_t
      for (var n = 0u; n < 2u * N; n++) { work[part + n] = 0.0; }
      var da = 0.0;
      var ddt = 0.0;
      for (var q = tid; q < p.P; q += WG) {
        let xv = inp[r + p.ox + h * p.P + q];
        let gout = dy[row * HP + h * p.P + q];
        var gy = gout;
        if (p.hasZ != 0u) {
          var ypre = Dh * xv;
          for (var n = 0u; n < N; n++) { ypre = fma(work[cur + q * N + n], inp[r + p.oc + g * N + n], ypre); }
          let zv = inp[r + p.oz + h * p.P + q];
          let sg = sigmoid(zv);
          gy = gout * zv * sg;
          grads[p.oGz + row * HPl + hl * p.P + q] = gout * ypre * sg * (1.0 + zv * (1.0 - sg));
        }
        var gx = Dh * gy;
        for (var n = 0u; n < N; n++) {
          let Bn = inp[r + p.ob + g * N + n];
          let Cn = inp[r + p.oc + g * N + n];
          let dsv = work[dS + q * N + n] + gy * Cn;
          work[part + N + n] = work[part + N + n] + gy * work[cur + q * N + n];
          da = fma(dsv, work[prev + q * N + n], da);
          ddt = fma(dsv * xv, Bn, ddt);
          work[part + n] = work[part + n] + d * dsv * xv;
          gx = fma(d * dsv, Bn, gx);
          work[dS + q * N + n] = dsv * a;
        }
        grads[p.oGx + row * HPl + hl * p.P + q] = gx;
        dD = fma(gy, xv, dD);
      }
      red[tid] = da;
      red[WG + tid] = ddt;
      storageBarrier();
      workgroupBarrier();
      // the sums over the rows: dB_t, dC_t of this head (n split over the threads), and ddt (thread 0)
      let gB = p.oGB + (row * p.hp + hl) * N;
      let gC = p.oGC + (row * p.hp + hl) * N;
      for (var n = tid; n < N; n += WG) {
        var sb = 0.0;
        var sc = 0.0;
        for (var k = 0u; k < WG; k++) {
          let o = p.oPart + (bh * WG + k) * 2u * N;
          sb = sb + work[o + n];
          sc = sc + work[o + N + n];
        }
        grads[gB + n] = sb;
        grads[gC + n] = sc;
      }
      if (tid == 0u) {
        var sa = 0.0;
        var sd = 0.0;
        for (var k = 0u; k < WG; k++) { sa = sa + red[k]; sd = sd + red[WG + k]; }
        sd = sd + sa * a * A;
        dA = dA + sa * a * d;
        var graw = 0.0;
        if (sp >= p.lo && sp <= p.hi) { graw = sd * select(sigmoid(v), 1.0, v > 20.0); }
        grads[p.oGdt + row * p.hp + hl] = graw;
        dBias = dBias + graw;
      }
      storageBarrier();
      workgroupBarrier();
    }
  }
  red[2u * WG + tid] = dD;
  workgroupBarrier();
  if (tid == 0u) {
    var sD = 0.0;
    for (var k = 0u; k < WG; k++) { sD = sD + red[2u * WG + k]; }
    grads[p.oGp + bh * 3u] = dA * A;
    grads[p.oGp + bh * 3u + 1u] = sD;
    grads[p.oGp + bh * 3u + 2u] = dBias;
  }
}
`;

const reduceWgsl = /* wgsl */ `
// bindings: 0 grads (per-head dB or dC of a piece of heads, [T, hp, N] at oSrc) | 1 dst (dB or dC, added into) | 2 params
// dst[row, g, n] += Σ over the piece's heads h of group g of src[row, h, n]
struct P { T: u32, H: u32, G: u32, N: u32, h0: u32, hp: u32, oSrc: u32, ld: u32, off: u32, groupsX: u32 }
@group(0) @binding(0) var<storage, read> grads: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> p: P;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 64u + gid.x;
  let GN = p.G * p.N;
  if (i >= p.T * GN) { return; }
  let row = i / GN;
  let g = (i % GN) / p.N;
  let n = i % p.N;
  let per = p.H / p.G;
  let lo = max(g * per, p.h0);
  let hi = min((g + 1u) * per, p.h0 + p.hp);
  if (lo >= hi) { return; }
  var s = 0.0;
  for (var h = lo; h < hi; h++) { s = s + grads[p.oSrc + (row * p.hp + h - p.h0) * p.N + n]; }
  let o = row * p.ld + p.off + g * p.N + n;
  dst[o] = dst[o] + s;
}
`;

const paramsWgsl = /* wgsl */ `
// bindings: 0 grads (per-(b, h) sums at oGp, [B, hp, 3]) | 1 dA_log [H] | 2 dD [H] | 3 dDtBias [H] (all added into,
// at the piece's heads h0 ..) | 4 params
struct P { B: u32, hp: u32, h0: u32, oGp: u32 }
@group(0) @binding(0) var<storage, read> grads: array<f32>;
@group(0) @binding(1) var<storage, read_write> dA_log: array<f32>;
@group(0) @binding(2) var<storage, read_write> dD: array<f32>;
@group(0) @binding(3) var<storage, read_write> dBias: array<f32>;
@group(0) @binding(4) var<uniform> p: P;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let hl = gid.x;
  if (hl >= p.hp) { return; }
  var a = 0.0;
  var d = 0.0;
  var s = 0.0;
  for (var b = 0u; b < p.B; b++) {
    let o = p.oGp + (b * p.hp + hl) * 3u;
    a = a + grads[o];
    d = d + grads[o + 1u];
    s = s + grads[o + 2u];
  }
  let h = p.h0 + hl;
  dA_log[h] = dA_log[h] + a;
  dD[h] = dD[h] + d;
  dBias[h] = dBias[h] + s;
}
`;

const addWindowWgsl = /* wgsl */ `
// bindings: 0 src | 1 dst | 2 params: dst[r * ldDst + offDst + c] += src[r * ldSrc + offSrc + c], c < width
struct P { rows: u32, width: u32, ldSrc: u32, offSrc: u32, ldDst: u32, offDst: u32, groupsX: u32 }
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> p: P;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (i >= p.rows * p.width) { return; }
  let r = i / p.width;
  let c = i % p.width;
  let o = r * p.ldDst + p.offDst + c;
  dst[o] = dst[o] + src[r * p.ldSrc + p.offSrc + c];
}
`;

const bwdKernel = defineKernel({ name: "ssd_backward", wgsl: () => bwdWgsl, example: null });
const reduceKernel = defineKernel({ name: "ssd_backward_reduce", wgsl: () => reduceWgsl, example: null });
const paramsKernel = defineKernel({ name: "ssd_backward_params", wgsl: () => paramsWgsl, example: null });
const addWindowKernel = defineKernel({ name: "add_window", wgsl: () => addWindowWgsl, example: null });

/** dst window += src window (float32), rows × width. */
export function addWindow(gpu: Gpu, src: Buf, ldSrc: number, offSrc: number, dst: Buf, ldDst: number, offDst: number, rows: number, width: number): void {
  if (rows * width === 0) return;
  const [gx, gy] = grid(Math.ceil((rows * width) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(gpu.kernel(addWindowKernel, null), [src, dst],
    new Params().u32(rows).u32(width).u32(ldSrc).u32(offSrc).u32(ldDst).u32(offDst).u32(gx), [gx, gy]);
}

export interface SsdBackwardDims {
  B: number; L: number; H: number; P: number; G: number; N: number;
  /** the packed input's row width and where x, B, C, dt, z start in it */
  W: number; ox: number; ob: number; oc: number; odt: number; oz: number;
  hasZ: boolean; hasState: boolean; lo: number; hi: number;
}

/** The most bytes the backward gives one scratch buffer (besides the device's binding limit); tests lower it to
 *  force pieces of heads. */
export const ssdBackwardTuning = { bufferBytes: 1 << 30 };

/** Offsets (in floats) of the work and gradient scratch of a piece of hp heads (all batch rows), and their sizes. */
export function ssdBackwardLayout(d: SsdBackwardDims, hp: number) {
  const { B, L, P, N } = d;
  // checkpoints every K positions: about √L of them, and K + 1 states of a chunk, per (b, h)
  const K = Math.max(BWD_CHUNK, Math.ceil(Math.sqrt(L))), nK = Math.ceil(L / K), BH = B * hp, PN = P * N, T = B * L;
  const oCk = BH * PN, oCst = oCk + BH * nK * PN, oDS = oCst + BH * (K + 1) * PN, oPart = oDS + BH * PN;
  const work = oPart + BH * WG * 2 * N;
  const oGx = 0, oGz = oGx + T * hp * P, oGdt = oGz + (d.hasZ ? T * hp * P : 0), oGB = oGdt + T * hp, oGC = oGB + T * hp * N;
  const oGp = oGC + T * hp * N, grads = oGp + BH * 3;
  return { K, nK, hp, oCk, oCst, oDS, oPart, work, oGx, oGz, oGdt, oGB, oGC, oGp, grads };
}

/** The layout of the most heads a piece can take with every scratch buffer under `maxBytes`, or null if not one. */
export function ssdBackwardPlan(d: SsdBackwardDims, maxBytes: number): ReturnType<typeof ssdBackwardLayout> | null {
  const fits = (hp: number) => {
    const l = ssdBackwardLayout(d, hp);
    return l.work * 4 <= maxBytes && l.grads * 4 <= maxBytes;
  };
  if (!fits(1)) return null;
  let lo = 1, hi = d.H; // the sizes grow with hp: the most that fits, by bisection
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (fits(mid)) lo = mid;
    else hi = mid - 1;
  }
  // as few pieces as that, of even sizes
  return ssdBackwardLayout(d, Math.ceil(d.H / Math.ceil(d.H / lo)));
}

export interface SsdBackwardOut {
  /** dB and dC, added into: column windows of width G·N */
  dB: Buf; ldB: number; offB: number;
  dC: Buf; ldC: number; offC: number;
  dA_log: Buf; dD: Buf; dDtBias: Buf;
}

/**
 * Runs the backward for the heads h0 .. h0 + l.hp into `grads` (laid out as ssdBackwardLayout says: dx and dz
 * [T, hp·P] at oGx and oGz, dt [T, hp] at oGdt, for the caller to add into its windows), and adds dB, dC, dA_log, D
 * and dt_bias's gradients of those heads into their tensors.
 */
export function ssdBackward(
  gpu: Gpu, d: SsdBackwardDims, l: ReturnType<typeof ssdBackwardLayout>, h0: number,
  inp: Buf, consts: Buf, dy: Buf, state0: Buf | null, work: Buf, grads: Buf, out: SsdBackwardOut,
): void {
  const hp = l.hp;
  check(d.B * hp <= gpu.limits.maxComputeWorkgroupsPerDimension, `ssdScanBackward: ${d.B} rows × ${hp} heads are more workgroups than one dispatch takes`);
  const p = new Params().u32(d.B).u32(d.L).u32(d.H).u32(d.P).u32(d.G).u32(d.N).u32(l.K).u32(l.nK).u32(h0).u32(hp)
    .u32(d.W).u32(d.ox).u32(d.ob).u32(d.oc).u32(d.odt).u32(d.oz).bool(d.hasZ).bool(d.hasState).f32(d.lo).f32(Math.min(d.hi, 3e38))
    .u32(l.oCk).u32(l.oCst).u32(l.oDS).u32(l.oPart).u32(l.oGx).u32(l.oGz).u32(l.oGdt).u32(l.oGB).u32(l.oGC).u32(l.oGp);
  gpu.dispatch(gpu.kernel(bwdKernel, null), [inp, consts, dy, state0 ?? gpu.dummy, work, grads], p, [d.B * hp]);
  const T = d.B * d.L;
  const [gx, gy] = grid(Math.ceil((T * d.G * d.N) / 64), gpu.limits.maxComputeWorkgroupsPerDimension);
  for (const [dst, ld, off, src] of [[out.dB, out.ldB, out.offB, l.oGB], [out.dC, out.ldC, out.offC, l.oGC]] as const) {
    gpu.dispatch(gpu.kernel(reduceKernel, null), [grads, dst],
      new Params().u32(T).u32(d.H).u32(d.G).u32(d.N).u32(h0).u32(hp).u32(src).u32(ld).u32(off).u32(gx), [gx, gy]);
  }
  gpu.dispatch(gpu.kernel(paramsKernel, null), [grads, out.dA_log, out.dD, out.dDtBias],
    new Params().u32(d.B).u32(hp).u32(h0).u32(l.oGp), [Math.ceil(hp / 64)]);
}
