/**
 * The norms of Mamba-2 and Falcon-Mamba, reading each group twice (sums, then the scaled values): the gated norm's
 * forward and backward a workgroup per (row, group), Falcon-Mamba's a thread per (row, window):
 *  - gated RMSNorm (mamba_ssm's RMSNormGated), groups of gs channels:
 *      gate after:  v = y · silu(z); out = v / sqrt(mean(v²) + eps) · w
 *      gate before: out = y / sqrt(mean(y²) + eps) · w · silu(z)
 *  - Falcon-Mamba's RMS norm without weights over up to four column windows of each row.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params, grid } from "../../gpu.ts";
import { type KernelDef, defineKernel } from "../../kernel-def.ts";
import { check } from "../../../../errors.ts";
import { colsum, colsumChunks } from "../backward/colsum.ts";
import { reduceGroups, stacked } from "../backward/reduce-groups.ts";
import { treeSumWgsl } from "../wgsl-common.ts";

// The gated norms' parameters, and the start of their workgroups: one per (row t, group from c0).
const gatedParamsWgsl = /* wgsl */ `struct P { T: u32, E: u32, gs: u32, ldz: u32, offz: u32, before: u32, eps: f32, groupsX: u32 }`;
const gatedGroupWgsl = /* wgsl */ `  let G = p.E / p.gs;
  let i = wg.y * p.groupsX + wg.x;
  if (i >= p.T * G) { return; } // uniform: a whole workgroup
  let t = i / G;
  let c0 = (i % G) * p.gs;`;

// The segment norms' parameters (windows [s_k, s_{k+1}) for k < count), and the start of their threads: one per
// (row t, window k), the window at a, m wide.
const segmentParamsWgsl = /* wgsl */ `struct P { T: u32, W: u32, count: u32, s0: u32, s1: u32, s2: u32, s3: u32, s4: u32, eps: f32, groupsX: u32 }`;
const segmentStartWgsl = /* wgsl */ `fn start(k: u32) -> u32 {
  switch (k) { case 0u: { return p.s0; } case 1u: { return p.s1; } case 2u: { return p.s2; } case 3u: { return p.s3; } default: { return p.s4; } }
}`;
const segmentWindowWgsl = /* wgsl */ `  let i = gid.y * p.groupsX * 64u + gid.x;
  if (i >= p.T * p.count) { return; }
  let t = i / p.count;
  let k = i % p.count;
  let a = t * p.W + start(k);
  let m = start(k + 1u) - start(k);`;

const gatedWgsl = /* wgsl */ `
// bindings: 0 y [T, E] | 1 z window | 2 weight [E] | 3 out [T, E] | 4 params
${gatedParamsWgsl}
@group(0) @binding(0) var<storage, read> y: array<f32>;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: P;

fn silu(v: f32) -> f32 { return v / (1.0 + exp(-v)); }

// the value normalized: y gated (gate after the norm: y itself)
fn val(t: u32, c: u32) -> f32 {
  let yv = y[t * p.E + c];
  if (p.before != 0u) { return yv; }
  return yv * silu(z[t * p.ldz + p.offz + c]);
}

// a workgroup per (row t, group from c0): its 256 threads read the group's channels side by side (a thread a row
// walking its group alone read 6 KB apart from its neighbours: 19.2 ms of mamba2-130m's 144 ms forward on an H100,
// run 86), and sum their squares through workgroup memory
var<workgroup> red: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
${gatedGroupWgsl}
  var ss = 0.0;
  for (var k = l; k < p.gs; k += 256u) { let v = val(t, c0 + k); ss = fma(v, v, ss); }
  red[l] = ss;
  workgroupBarrier();
  ${treeSumWgsl("red", "l")}
  let r = inverseSqrt(red[0] / f32(p.gs) + p.eps);
  for (var k = l; k < p.gs; k += 256u) {
    let c = c0 + k;
    var o = val(t, c) * r * weight[c];
    if (p.before != 0u) { o = o * silu(z[t * p.ldz + p.offz + c]); }
    out[t * p.E + c] = o;
  }
}
`;

const segmentWgsl = /* wgsl */ `
// bindings: 0 x [T, W] | 1 out [T, W] | 2 params; windows [s_k, s_{k+1}) for k < count
${segmentParamsWgsl}
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: P;

${segmentStartWgsl}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
${segmentWindowWgsl}
  var ss = 0.0;
  for (var j = 0u; j < m; j++) { let v = x[a + j]; ss = fma(v, v, ss); }
  let r = inverseSqrt(ss / f32(m) + p.eps);
  for (var j = 0u; j < m; j++) { out[a + j] = x[a + j] * r; }
}
`;

const gatedKernel = defineKernel({ name: "gated_rmsnorm", wgsl: () => gatedWgsl, example: null });
const segmentKernel = defineKernel({ name: "segment_rmsnorm", wgsl: () => segmentWgsl, example: null });

// y: [T, E], z: [T, E] window, weight: [E] -> out: [T, E]
export function gatedRmsNorm(
  gpu: Gpu, a: { y: Buf; z: Buf; ldz: number; offz: number; weight: Buf; out: Buf; T: number; E: number; gs: number; before: boolean; eps: number },
): void {
  const k = gpu.kernel(gatedKernel, null);
  const [gx, gy] = grid(a.T * (a.E / a.gs), gpu.limits.maxComputeWorkgroupsPerDimension);
  const p = new Params().u32(a.T).u32(a.E).u32(a.gs).u32(a.ldz).u32(a.offz).bool(a.before).f32(a.eps).u32(gx);
  gpu.dispatch(k, [a.y, a.z, a.weight, a.out], p, [gx, gy]);
}

/** The most windows segmentRmsNorm takes. */
export const MAX_SEGMENTS = 4;

// a segment kernel over x: [T, W] in windows of the given widths (Σ = W), one thread per (row, window)
function dispatchSegments(gpu: Gpu, kernel: KernelDef<null>, bufs: Buf[], T: number, widths: readonly number[], eps: number): void {
  const W = widths.reduce((s, v) => s + v, 0);
  const starts = [0];
  for (const w of widths) starts.push(starts[starts.length - 1]! + w);
  while (starts.length < MAX_SEGMENTS + 1) starts.push(W);
  const k = gpu.kernel(kernel, null);
  const [gx, gy] = grid(Math.ceil((T * widths.length) / 64), gpu.limits.maxComputeWorkgroupsPerDimension);
  const p = new Params().u32(T).u32(W).u32(widths.length);
  for (const s of starts) p.u32(s);
  gpu.dispatch(k, bufs, p.f32(eps).u32(gx), [gx, gy]);
}

// x: [T, W], widths (at most MAX_SEGMENTS, Σ = W) -> out: [T, W]
export function segmentRmsNorm(gpu: Gpu, x: Buf, out: Buf, T: number, widths: readonly number[], eps: number): void {
  dispatchSegments(gpu, segmentKernel, [x, out], T, widths, eps);
}

const segmentBackwardWgsl = /* wgsl */ `
// bindings: 0 x [T, W] | 1 dOut [T, W] | 2 dx [T, W] (added into) | 3 params; windows as segment_rmsnorm's
// n = x · r, r = 1/sqrt(mean(x²) + eps) per window:  dx += r · (dOut − n · mean(dOut · n))
${segmentParamsWgsl}
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dOut: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;
@group(0) @binding(3) var<uniform> p: P;

${segmentStartWgsl}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
${segmentWindowWgsl}
  var ss = 0.0;
  var dot = 0.0;
  for (var j = 0u; j < m; j++) { let v = x[a + j]; ss = fma(v, v, ss); dot = fma(dOut[a + j], v, dot); }
  let r = inverseSqrt(ss / f32(m) + p.eps);
  let mean = dot * r / f32(m);
  for (var j = 0u; j < m; j++) { dx[a + j] = dx[a + j] + r * (dOut[a + j] - x[a + j] * r * mean); }
}
`;

const segmentBackwardKernel = defineKernel({
  name: "segment_rmsnorm_backward", wgsl: () => segmentBackwardWgsl, example: null,
});

// x: [T, W] (the forward's input), dOut: [T, W]; dx: [T, W] (+=)
export function segmentRmsNormBackward(gpu: Gpu, x: Buf, dOut: Buf, dx: Buf, T: number, widths: readonly number[], eps: number): void {
  dispatchSegments(gpu, segmentBackwardKernel, [x, dOut, dx], T, widths, eps);
}

const gatedBackwardWgsl = /* wgsl */ `
// bindings: 0 y [T, E] | 1 z window | 2 weight [E] | 3 dOut [T, E] | 4 dy [T, E] (added into) | 5 dz window (added
// into) | 6 dwPart [T, E] (each row's share of dWeight, written) | 7 params. A workgroup per (row, group), as the
// forward (a thread per (row, group) walked its group alone):
//   n = v·r (v = y·silu(z), or y with the gate after the norm);  dn = dOut·w (·silu(z));  dv = r·(dn − n·mean(dn·n))
// where mean(dn·n) = r·Σ dn·v / gs: both sums, Σ v² and Σ dn·v, in one pass over the group
${gatedParamsWgsl}
@group(0) @binding(0) var<storage, read> y: array<f32>;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> dOut: array<f32>;
@group(0) @binding(4) var<storage, read_write> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dz: array<f32>;
@group(0) @binding(6) var<storage, read_write> dwPart: array<f32>;
@group(0) @binding(7) var<uniform> p: P;

fn sig(v: f32) -> f32 { return 1.0 / (1.0 + exp(-v)); }
fn zAt(t: u32, c: u32) -> f32 { return z[t * p.ldz + p.offz + c]; }
fn val(t: u32, c: u32) -> f32 {
  let yv = y[t * p.E + c];
  if (p.before != 0u) { return yv; }
  let zv = zAt(t, c);
  return yv * zv * sig(zv);
}

// dn_c = dOut·w (·silu(z) with the gate after the norm)
fn dnAt(t: u32, c: u32) -> f32 {
  let dn = dOut[t * p.E + c] * weight[c];
  if (p.before == 0u) { return dn; }
  let zv = zAt(t, c);
  return dn * zv * sig(zv);
}

var<workgroup> red: array<vec2<f32>, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
${gatedGroupWgsl}
  var acc = vec2<f32>(0.0);
  for (var k = l; k < p.gs; k += 256u) {
    let v = val(t, c0 + k);
    acc += vec2<f32>(v * v, dnAt(t, c0 + k) * v);
  }
  red[l] = acc;
  workgroupBarrier();
  ${treeSumWgsl("red", "l")}
  let r = inverseSqrt(red[0].x / f32(p.gs) + p.eps);
  let mean = r * red[0].y / f32(p.gs);
  for (var k = l; k < p.gs; k += 256u) {
    let c = c0 + k;
    let n = val(t, c) * r;
    let go = dOut[t * p.E + c];
    let zv = zAt(t, c);
    let sg = sig(zv);
    let zi = t * p.ldz + p.offz + c;
    var dn = go * weight[c];
    if (p.before != 0u) {
      dwPart[t * p.E + c] = go * n * zv * sg;
      dz[zi] = dz[zi] + go * n * weight[c] * sg * (1.0 + zv * (1.0 - sg));
      dn = dn * zv * sg;
      dy[t * p.E + c] = dy[t * p.E + c] + r * (dn - n * mean);
    } else {
      dwPart[t * p.E + c] = go * n;
      let dv = r * (dn - n * mean);
      dy[t * p.E + c] = dy[t * p.E + c] + dv * zv * sg;
      dz[zi] = dz[zi] + dv * y[t * p.E + c] * sg * (1.0 + zv * (1.0 - sg));
    }
  }
}
`;

const gatedBackwardKernel = defineKernel({
  name: "gated_rmsnorm_backward", wgsl: () => gatedBackwardWgsl, example: null,
});

// y: [T, E], z: [T, E] window, dOut: [T, E]; dy (+=), dz window (+=), dWeight (+=); part: a [T, E] scratch
export function gatedRmsNormBackward(
  gpu: Gpu, a: {
    y: Buf; z: Buf; ldz: number; offz: number; weight: Buf; dOut: Buf; dy: Buf; dz: Buf; ldDz: number; offDz: number;
    dWeight: Buf; part: Buf; T: number; E: number; gs: number; before: boolean; eps: number;
  },
): void {
  check(a.ldz === a.ldDz && a.offz === a.offDz, "gatedRmsNormBackward: z and dz must be windows of the same place in matrices of one width");
  const [gx, gy] = grid(a.T * (a.E / a.gs), gpu.limits.maxComputeWorkgroupsPerDimension);
  const p = new Params().u32(a.T).u32(a.E).u32(a.gs).u32(a.ldz).u32(a.offz).bool(a.before).f32(a.eps).u32(gx);
  gpu.dispatch(gpu.kernel(gatedBackwardKernel, null), [a.y, a.z, a.weight, a.dOut, a.dy, a.dz, a.part], p, [gx, gy]);
  // dWeight += Σ_t part[t]: column sums over chunks of rows, then the chunks added in order (a thread a column walked
  // all T rows alone)
  const { chunkRows, nChunks } = colsumChunks(a.T);
  const chunks = gpu.alloc(nChunks * a.E * 4, "the gated norm's weight gradient by chunk of rows");
  colsum(gpu, a.part, a.E, 0, a.T, a.E, null, chunks, chunkRows, nChunks);
  reduceGroups(gpu, chunks, stacked(nChunks, a.E), a.dWeight, 1, a.E, a.E, 0);
  gpu.release(chunks);
}
