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
  B: u32, L: u32, H: u32, P: u32, G: u32, N: u32, K: u32, nK: u32,
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
  let bh = wg.x; // one workgroup per (b, h)
  let b = bh / p.H;
  let h = bh % p.H;
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
    for (var n = 0u; n < N; n++) { work[run + q * N + n] = select(0.0, state0[bh * PN + q * N + n], p.hasState != 0u); }
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
          grads[p.oGz + row * HP + h * p.P + q] = gout * ypre * sg * (1.0 + zv * (1.0 - sg));
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
        grads[p.oGx + row * HP + h * p.P + q] = gx;
        dD = fma(gy, xv, dD);
      }
      red[tid] = da;
      red[WG + tid] = ddt;
      storageBarrier();
      workgroupBarrier();
      // the sums over the rows: dB_t, dC_t of this head (n split over the threads), and ddt (thread 0)
      let gB = p.oGB + (row * p.H + h) * N;
      let gC = p.oGC + (row * p.H + h) * N;
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
        grads[p.oGdt + row * p.H + h] = graw;
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
// bindings: 0 grads (per-head dB, dC in; per-group dB, dC out, at their offsets) | 1 params
// dB[row, g, n] = Σ_{h in g} dB_head[row, h, n], the same for dC
struct P { T: u32, H: u32, G: u32, N: u32, oGB: u32, oGC: u32, oBs: u32, oCs: u32, groupsX: u32 }
@group(0) @binding(0) var<storage, read_write> grads: array<f32>;
@group(0) @binding(1) var<uniform> p: P;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 64u + gid.x;
  let GN = p.G * p.N;
  if (i >= p.T * GN) { return; }
  let row = i / GN;
  let g = (i % GN) / p.N;
  let n = i % p.N;
  let per = p.H / p.G;
  var sb = 0.0;
  var sc = 0.0;
  for (var k = 0u; k < per; k++) {
    let o = (row * p.H + g * per + k) * p.N + n;
    sb = sb + grads[p.oGB + o];
    sc = sc + grads[p.oGC + o];
  }
  grads[p.oBs + i] = sb;
  grads[p.oCs + i] = sc;
}
`;

const paramsWgsl = /* wgsl */ `
// bindings: 0 grads (per-(b, h) sums at oGp) | 1 dA_log [H] | 2 dD [H] | 3 dDtBias [H] (all added into) | 4 params
struct P { B: u32, H: u32, oGp: u32 }
@group(0) @binding(0) var<storage, read> grads: array<f32>;
@group(0) @binding(1) var<storage, read_write> dA_log: array<f32>;
@group(0) @binding(2) var<storage, read_write> dD: array<f32>;
@group(0) @binding(3) var<storage, read_write> dBias: array<f32>;
@group(0) @binding(4) var<uniform> p: P;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let h = gid.x;
  if (h >= p.H) { return; }
  var a = 0.0;
  var d = 0.0;
  var s = 0.0;
  for (var b = 0u; b < p.B; b++) {
    let o = p.oGp + (b * p.H + h) * 3u;
    a = a + grads[o];
    d = d + grads[o + 1u];
    s = s + grads[o + 2u];
  }
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

/** Offsets (in floats) of the work and gradient scratch, and their sizes. */
export function ssdBackwardLayout(d: SsdBackwardDims) {
  const { B, L, H, P, G, N } = d;
  const K = BWD_CHUNK, nK = Math.ceil(L / K), BH = B * H, PN = P * N, T = B * L;
  const oCk = BH * PN, oCst = oCk + BH * nK * PN, oDS = oCst + BH * (K + 1) * PN, oPart = oDS + BH * PN;
  const work = oPart + BH * WG * 2 * N;
  const oGx = 0, oGz = oGx + T * H * P, oGdt = oGz + (d.hasZ ? T * H * P : 0), oGB = oGdt + T * H, oGC = oGB + T * H * N;
  const oGp = oGC + T * H * N, oBs = oGp + BH * 3, oCs = oBs + T * G * N, grads = oCs + T * G * N;
  return { K, nK, oCk, oCst, oDS, oPart, work, oGx, oGz, oGdt, oGB, oGC, oGp, oBs, oCs, grads };
}

/**
 * Runs the backward into `grads` (laid out as ssdBackwardLayout says: dx [T, H·P] at oGx, dz at oGz, dt [T, H] at
 * oGdt, dB and dC per group [T, G·N] at oBs and oCs) and adds dA_log, D and dt_bias's gradients into their tensors.
 */
export function ssdBackward(
  gpu: Gpu, d: SsdBackwardDims, inp: Buf, consts: Buf, dy: Buf, state0: Buf | null, work: Buf, grads: Buf,
  dA_log: Buf, dD: Buf, dDtBias: Buf,
): void {
  const l = ssdBackwardLayout(d);
  check(d.B * d.H <= gpu.limits.maxComputeWorkgroupsPerDimension, `ssdScanBackward: ${d.B} rows × ${d.H} heads are more workgroups than one dispatch takes`);
  const p = new Params().u32(d.B).u32(d.L).u32(d.H).u32(d.P).u32(d.G).u32(d.N).u32(l.K).u32(l.nK)
    .u32(d.W).u32(d.ox).u32(d.ob).u32(d.oc).u32(d.odt).u32(d.oz).bool(d.hasZ).bool(d.hasState).f32(d.lo).f32(Math.min(d.hi, 3e38))
    .u32(l.oCk).u32(l.oCst).u32(l.oDS).u32(l.oPart).u32(l.oGx).u32(l.oGz).u32(l.oGdt).u32(l.oGB).u32(l.oGC).u32(l.oGp);
  gpu.dispatch(gpu.kernel(bwdKernel, null), [inp, consts, dy, state0 ?? gpu.dummy, work, grads], p, [d.B * d.H]);
  const T = d.B * d.L;
  const [gx, gy] = grid(Math.ceil((T * d.G * d.N) / 64), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(gpu.kernel(reduceKernel, null), [grads],
    new Params().u32(T).u32(d.H).u32(d.G).u32(d.N).u32(l.oGB).u32(l.oGC).u32(l.oBs).u32(l.oCs).u32(gx), [gx, gy]);
  gpu.dispatch(gpu.kernel(paramsKernel, null), [grads, dA_log, dD, dDtBias],
    new Params().u32(d.B).u32(d.H).u32(l.oGp), [Math.ceil(d.H / 64)]);
}
