/**
 * Selective scan of one position (step mode, L = 1, any batch): the output pass of output.ts for a sequence of
 * one step, with a thread per state (b, e, n) instead of per channel. A step is all memory traffic (the state
 * [B, E, N] read and written once), and a thread per channel reads its N states at a stride of N floats: at batch
 * 64 of 130m the output pass took 33 us a layer for 12.6 MB. Here the threads of a channel read and write its
 * states side by side, and add their C·h terms in workgroup memory.
 *   delta = softplus(delta_raw + bias);  h' = exp(delta·A) ∘ h + delta·u·B;  y = (C·h' + D·u) · silu(z)
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { grid } from "../../gpu.ts";
import type { ScanInputs } from "./chunk.ts";
import { SOFTPLUS_WGSL } from "../wgsl-common.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";

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

// u [B, E] | delta [B, ldD] | packed [E, N + 2] (A·log2e, dt bias, D) | BC [B, ldBC] | z [B, ldZ] | stateIn [B, E, N]
// | y [B, E] out | stateOut [B, E, N] out; grid: B·E / CH workgroups, (x, y)
function makeParts(N: number): WgslParts {
  const NP = stepLanes(N);
  return {
    consts: [["N", `${N}u`], ["NP", `${NP}u`], ["CH", `${WG / NP}u`]], // states; lanes a channel; channels a workgroup
    params: [
      ["B", "u32"], ["E", "u32"], ["ldD", "u32"], ["offD", "u32"], ["ldBC", "u32"], ["offB", "u32"], ["offC", "u32"], ["ldZ", "u32"],
      ["offZ", "u32"], ["hasZ", "u32"], ["hasState", "u32"], ["writeState", "u32"], ["groupsX", "u32"],
    ],
    bindings: [
      ["u", "var<storage, read> u: array<f32>"],
      ["delta", "var<storage, read> delta: array<f32>"],
      ["packed", "var<storage, read> packed: array<f32>"],
      ["BC", "var<storage, read> BC: array<f32>"],
      ["z", "var<storage, read> z: array<f32>"],
      ["stateIn", "var<storage, read> stateIn: array<f32>"],
      ["y", "var<storage, read_write> y: array<f32>"],
      ["stateOut", "var<storage, read_write> stateOut: array<f32>"],
    ],
    decls: `var<workgroup> red: array<f32, ${WG}u>;\n${SOFTPLUS_WGSL}`,
    fn: /* wgsl */ `
fn scanStep(lid: vec3<u32>, wg: vec3<u32>) {
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
}`,
  };
}
const partsByN = new Map<number, WgslParts>();
/** The kernel's parts for state size N, made once. */
function parts(N: number): WgslParts {
  let made = partsByN.get(N);
  if (!made) partsByN.set(N, made = makeParts(N));
  return made;
}

/** N states (a power of two at or above N lanes a channel: stepLanes). */
const scanStepKernel = defineKernel({
  name: "scan_step", wgsl: (N: number) => standaloneWgsl(parts(N), `${WG}`, "scanStep(lid, wg)"), label: (N) => `scan_step_${N}`, example: 16,
});

// one position of B sequences: u, delta, BC, z rows [B, ...] -> y [B, E]; stateIn / stateOut [B, E, N] or null
export function scanStep(gpu: Gpu, B: number, E: number, N: number, a: ScanInputs, stateIn: Buf | null, stateOut: Buf | null, y: Buf): void {
  const NP = stepLanes(N); // <= WG: callers check N <= STEP_MAX_N
  const k = gpu.kernel(scanStepKernel, N);
  const [gx, gy] = grid(Math.ceil((B * E * NP) / WG), gpu.limits.maxComputeWorkgroupsPerDimension);
  const kp = parts(N);
  const p = paramBlock(kp.params, {
    B, E, ldD: a.ldD, offD: a.offD, ldBC: a.ldBC, offB: a.offB, offC: a.offC, ldZ: a.ldZ, offZ: a.offZ,
    hasZ: !!a.z, hasState: !!stateIn, writeState: !!stateOut, groupsX: gx,
  });
  const bufs = { u: a.u, delta: a.delta, packed: a.packed, BC: a.BC, z: a.z ?? gpu.dummy, stateIn: stateIn ?? gpu.dummy, y, stateOut: stateOut ?? gpu.dummyOut };
  gpu.dispatch(k, bindingsByName(kp, bufs), p, [gx, gy]);
}
