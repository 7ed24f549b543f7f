/**
 * What the SSD kernels share (the sequential scan, the chunked scan, the backward): their arguments (column windows
 * of wider matrices, the per-head constants), the parameters and bindings those become, and dt's softplus.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";

export interface SsdScanKernelArgs {
  x: Buf; ldx: number; offx: number;
  dt: Buf; lddt: number; offdt: number;
  Bm: Buf; ldb: number; offb: number;
  Cm: Buf; ldc: number; offc: number;
  z: Buf | null; ldz: number; offz: number;
  consts: Buf; // [3H]: dtBias, A_log, D (A = -exp(A_log))
  state: Buf | null; // [B, H, P, N], updated in place
  y: Buf; // [B·L, H·P]
  B: number; L: number; H: number; P: number; G: number; N: number;
  lo: number; hi: number;
}

/** Appends the windows and the flags to p, in the order of windowFieldsWgsl and flagFieldsWgsl. */
export function windowParams(p: Params, a: Omit<SsdScanKernelArgs, "consts">): Params {
  return p.u32(a.ldx).u32(a.offx).u32(a.lddt).u32(a.offdt).u32(a.ldb).u32(a.offb).u32(a.ldc).u32(a.offc).u32(a.ldz).u32(a.offz)
    .bool(!!a.z).bool(!!a.state).f32(a.lo).f32(Math.min(a.hi, 3e38));
}

// the fields windowParams writes (inside a struct P)
export const windowFieldsWgsl = "ldx: u32, offx: u32, lddt: u32, offdt: u32, ldb: u32, offb: u32, ldc: u32, offc: u32, ldz: u32, offz: u32,";
export const flagFieldsWgsl = "hasZ: u32, hasState: u32, lo: f32, hi: f32,";

// the inputs of a forward scan, bindings 0 to 5
export const scanInputsWgsl = /* wgsl */ `@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dt: array<f32>;
@group(0) @binding(2) var<storage, read> Bm: array<f32>;
@group(0) @binding(3) var<storage, read> Cm: array<f32>;
@group(0) @binding(4) var<storage, read> z: array<f32>;
@group(0) @binding(5) var<storage, read> consts: array<f32>;`;

/** mamba_ssm's softplus of the WGSL expression v (a name: it is repeated), linear past 20 as torch's */
export const softplusWgsl = (v: string) => `select(log(1.0 + exp(${v})), ${v}, ${v} > 20.0)`;

const constsKernel = defineKernel({
  name: "ssd_consts",
  wgsl: () => /* wgsl */ `
// bindings: 0 dtBias [H] | 1 A_log [H] | 2 D [H] | 3 consts [3H] | 4 params: dtBias | A_log | D side by side
struct P { H: u32 }
@group(0) @binding(0) var<storage, read> dtBias: array<f32>;
@group(0) @binding(1) var<storage, read> A_log: array<f32>;
@group(0) @binding(2) var<storage, read> D: array<f32>;
@group(0) @binding(3) var<storage, read_write> consts: array<f32>;
@group(0) @binding(4) var<uniform> p: P;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let h = gid.x;
  if (h >= p.H) { return; }
  consts[h] = dtBias[h];
  consts[p.H + h] = A_log[h];
  consts[2u * p.H + h] = D[h];
}
`,
  example: null,
});

/** The scan's per-head constants side by side in one dispatch: consts [3H] = dtBias | A_log | D. */
export function gatherConsts(gpu: Gpu, dtBias: Buf, A_log: Buf, D: Buf, H: number, consts: Buf): void {
  gpu.dispatch(gpu.kernel(constsKernel, null), [dtBias, A_log, D, consts], new Params().u32(H), [Math.ceil(H / 64)]);
}
