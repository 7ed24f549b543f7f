/**
 * Mamba-2's SSM (SSD), sequentially over t: one thread per (b, h, p) keeps the state row state[b, h, p, :] (N
 * values) in registers, as the CPU's twin does (../../../cpu/ssd.ts, ssdSequentialF32):
 *   dt = clamp(softplus(dt_raw + dtBias[h]), lo, hi);  s = exp(dt·A[h])·s + dt·x·B[t, g];  y = s·C[t, g] + D[h]·x
 *   y *= silu(z) when a gate is given; g = h / (H / G).
 * The state is read at the start and written at the end by the same thread, so it is updated in place.
 */
import type { Gpu } from "../../gpu.ts";
import { Params, grid } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type SsdScanKernelArgs, flagFieldsWgsl, scanInputsWgsl, softplusWgsl, windowFieldsWgsl, windowParams } from "./common.ts";

const wgsl = (N: number) => /* wgsl */ `
// bindings: 0 x window | 1 dt window | 2 B window | 3 C window | 4 z window | 5 consts [3H]: dtBias | A_log | D
//           6 y [B·L, H·P] | 7 state [B, H, P, N] (read and written) | 8 params
struct P {
  B: u32, L: u32, H: u32, P: u32, G: u32,
  ${windowFieldsWgsl}
  ${flagFieldsWgsl} groupsX: u32,
}
const N = ${N}u;
${scanInputsWgsl}
@group(0) @binding(6) var<storage, read_write> y: array<f32>;
@group(0) @binding(7) var<storage, read_write> state: array<f32>;
@group(0) @binding(8) var<uniform> p: P;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 64u + gid.x;
  if (i >= p.B * p.H * p.P) { return; }
  let pp = i % p.P;
  let h = (i / p.P) % p.H;
  let b = i / (p.P * p.H);
  let g = h / (p.H / p.G);
  let so = i * N;
  var s: array<f32, ${N}>;
  for (var n = 0u; n < N; n++) { s[n] = select(0.0, state[so + n], p.hasState != 0u); }
  let bias = consts[h];
  let A = -exp(consts[p.H + h]);
  let Dh = consts[2u * p.H + h];
  let HP = p.H * p.P;
  for (var t = 0u; t < p.L; t++) {
    let row = b * p.L + t;
    let v = dt[row * p.lddt + p.offdt + h] + bias;
    let sp = ${softplusWgsl("v")};
    let d = clamp(sp, p.lo, p.hi);
    let a = exp(d * A);
    let xv = x[row * p.ldx + p.offx + h * p.P + pp];
    let dx = d * xv;
    let bo = row * p.ldb + p.offb + g * N;
    let co = row * p.ldc + p.offc + g * N;
    var acc = 0.0;
    for (var n = 0u; n < N; n++) {
      s[n] = fma(a, s[n], dx * Bm[bo + n]);
      acc = fma(s[n], Cm[co + n], acc);
    }
    var out = acc + Dh * xv;
    if (p.hasZ != 0u) {
      let zv = z[row * p.ldz + p.offz + h * p.P + pp];
      out = out * zv / (1.0 + exp(-zv));
    }
    y[row * HP + h * p.P + pp] = out;
  }
  if (p.hasState != 0u) {
    for (var n = 0u; n < N; n++) { state[so + n] = s[n]; }
  }
}
`;

const ssdScanKernel = defineKernel({
  name: "ssd_scan_sequential", wgsl: (s: { N: number }) => wgsl(s.N), example: { N: 16 },
});

export type { SsdScanKernelArgs };

export function ssdScanSequential(gpu: Gpu, a: SsdScanKernelArgs): void {
  const k = gpu.kernel(ssdScanKernel, { N: a.N });
  const [gx, gy] = grid(Math.ceil((a.B * a.H * a.P) / 64), gpu.limits.maxComputeWorkgroupsPerDimension);
  const p = windowParams(new Params().u32(a.B).u32(a.L).u32(a.H).u32(a.P).u32(a.G), a).u32(gx);
  gpu.dispatch(k, [a.x, a.dt, a.Bm, a.Cm, a.z ?? gpu.dummy, a.consts, a.y, a.state ?? gpu.dummyOut], p, [gx, gy]);
}
