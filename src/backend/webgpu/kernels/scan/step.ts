/**
 * Selective scan of one position (step mode, L = 1, any batch): the output pass of output.ts for a sequence of
 * one step, with a thread per state (b, e, n) instead of per channel. A step is all memory traffic (the state
 * [B, E, N] read and written once), and a thread per channel reads its N states at a stride of N floats: at batch
 * 64 of 130m the output pass took 33 us a layer for 12.6 MB. Here the threads of a channel read and write its
 * states side by side, and add their C·h terms in workgroup memory.
 *   delta = softplus(delta_raw + bias);  h' = exp(delta·A) ∘ h + delta·u·B;  y = (C·h' + D·u) · silu(z)
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params, grid } from "../../gpu.ts";
import type { ScanInputs } from "./chunk.ts";
import { SOFTPLUS_WGSL } from "../wgsl-common.ts";
import { defineKernel } from "../../kernel-def.ts";

const WG = 256;
/** The largest state size the step kernel takes (a channel's lanes fit one workgroup); selectiveScan runs larger
 *  ones through the output pass. */
export const STEP_MAX_N = WG;

/** Lanes per channel: the power of two at or above N (at most the workgroup). */
export function stepLanes(N: number): number {
  let np = 1;
  while (np < N) np *= 2;
  return np;
}

const wgsl = (N: number, NP: number) => /* wgsl */ `
// bindings: 0 u [B, E] | 1 delta [B, ldD] | 2 packed [E, N + 2] (A·log2e, dt bias, D) | 3 BC [B, ldBC]
//           4 z [B, ldZ] | 5 stateIn [B, E, N] | 6 y [B, E] out | 7 stateOut [B, E, N] out | 8 params
// grid: B·E / CH workgroups, (x, y)
const N = ${N}u;
const NP = ${NP}u;   // lanes per channel
const CH = ${WG / NP}u; // channels per workgroup

struct P {
  B: u32, E: u32, ldD: u32, offD: u32, ldBC: u32, offB: u32, offC: u32, ldZ: u32, offZ: u32,
  hasZ: u32, hasState: u32, writeState: u32, groupsX: u32,
}
@group(0) @binding(0) var<storage, read> u: array<f32>;
@group(0) @binding(1) var<storage, read> delta: array<f32>;
@group(0) @binding(2) var<storage, read> packed: array<f32>;
@group(0) @binding(3) var<storage, read> BC: array<f32>;
@group(0) @binding(4) var<storage, read> z: array<f32>;
@group(0) @binding(5) var<storage, read> stateIn: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;
@group(0) @binding(7) var<storage, read_write> stateOut: array<f32>;
@group(0) @binding(8) var<uniform> p: P;

var<workgroup> red: array<f32, ${WG}u>;

${SOFTPLUS_WGSL}

@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let n = lid.x % NP;
  let ch = (wg.y * p.groupsX + wg.x) * CH + lid.x / NP; // (b, e) flattened
  let live = ch < p.B * p.E;
  let b = ch / p.E;
  let e = ch % p.E;
  var uv = 0.0;
  var term = 0.0;
  if (live) {
    let pk = e * (N + 2u);
    let dt = softplus(delta[b * p.ldD + p.offD + e] + packed[pk + N]);
    uv = u[b * p.E + e];
    if (n < N) {
      var h = 0.0;
      if (p.hasState != 0u) { h = stateIn[ch * N + n]; }
      h = fma(exp2(dt * packed[pk + n]), h, dt * uv * BC[b * p.ldBC + p.offB + n]);
      if (p.writeState != 0u) { stateOut[ch * N + n] = h; }
      term = h * BC[b * p.ldBC + p.offC + n];
    }
  }
  red[lid.x] = term;
  workgroupBarrier();
  for (var s = NP / 2u; s > 0u; s >>= 1u) {
    if (n < s) { red[lid.x] += red[lid.x + s]; }
    workgroupBarrier();
  }
  if (live && n == 0u) {
    var out = fma(packed[e * (N + 2u) + N + 1u], uv, red[lid.x]);
    if (p.hasZ != 0u) {
      let zv = z[b * p.ldZ + p.offZ + e];
      out *= zv / (1.0 + exp(-zv));
    }
    y[b * p.E + e] = out;
  }
}
`;

/** N states, NP lanes a channel (stepLanes). */
const scanStepKernel = defineKernel({
  name: "scan_step", wgsl: (s: { N: number; NP: number }) => wgsl(s.N, s.NP), label: (s) => `scan_step_${s.N}`, example: { N: 16, NP: 4 },
});

// one position of B sequences: u, delta, BC, z rows [B, ...] -> y [B, E]; stateIn / stateOut [B, E, N] or null
export function scanStep(gpu: Gpu, B: number, E: number, N: number, a: ScanInputs, stateIn: Buf | null, stateOut: Buf | null, y: Buf): void {
  const NP = stepLanes(N); // <= WG: callers check N <= STEP_MAX_N
  const k = gpu.kernel(scanStepKernel, { N, NP });
  const [gx, gy] = grid(Math.ceil((B * E * NP) / WG), gpu.limits.maxComputeWorkgroupsPerDimension);
  const p = new Params().u32(B).u32(E).u32(a.ldD).u32(a.offD).u32(a.ldBC).u32(a.offB).u32(a.offC).u32(a.ldZ).u32(a.offZ)
    .bool(!!a.z).bool(!!stateIn).bool(!!stateOut).u32(gx);
  gpu.dispatch(k, [a.u, a.delta, a.packed, a.BC, a.z ?? gpu.dummy, stateIn ?? gpu.dummy, y, stateOut ?? gpu.dummyOut], p, [gx, gy]);
}
