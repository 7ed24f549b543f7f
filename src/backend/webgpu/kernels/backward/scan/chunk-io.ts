/**
 * What both chunk kernels of the scan backward (chunk.ts, chunk-lanes.ts) bind and how they are dispatched: the
 * same buffers, parameter block and grid (G, nC, B); they differ in how a workgroup walks its chunk.
 */
import type { Buf, Gpu, Kernel } from "../../../gpu.ts";
import { Params } from "../../../gpu.ts";
import type { ScanBwdGeometry, ScanBwdInputs } from "./geometry.ts";

/** Where the phase writes: du, ddelta and dz are added into (windows by ld, off). */
export interface ScanBwdOutputs {
  du: Buf;
  dDelta: Buf; ldDD: number; offDD: number;
  dz: Buf | null; ldDZ: number; offDZ: number;
  /** du, dDelta and dz hold zeros: a kernel may write them instead of adding into them (the lanes kernel does) */
  overwrite: boolean;
}

/**
 * The parameter block and bindings, as WGSL. vecBC: B and C bound as vec4s (the lanes kernel, where every row of
 * BC and both windows start on a multiple of 4 floats), so a lane reads 4 states' values in one load.
 */
export const chunkIoWgsl = (vecBC = false) => /* wgsl */ `
// bindings: 0 u [B·L, E] | 1 delta [B·L, ldD] | 2 BC [B·L, ldBC] | 3 z [B·L, ldZ] | 4 dy [B·L, E]
//           5 SX (S | X | packed [E, N + 2]) | 6 du [B·L, E] in/out | 7 dDelta [B·L, ldDD] in/out
//           8 dz [B·L, ldDZ] in/out | 9 part (dB|dC [B·L, Gp, 2N], dA_log [B·nC, E, N], dD|dbias [B·nC, 2, E]) out
//           10 params
// grid: (G, nC, B)
struct P {
  B: u32, L: u32, E: u32, nC: u32, chunkLen: u32,
  ldD: u32, offD: u32, ldBC: u32, offB: u32, offC: u32, ldZ: u32, offZ: u32, hasZ: u32, hasChunks: u32,
  oS: u32, oX: u32, oP: u32, ldDD: u32, offDD: u32, ldDZ: u32, offDZ: u32, Gp: u32, oA: u32, oDE: u32,
  hasState: u32, // S[b, 0] is the forward's initial state (else chunk 0 starts from zeros, not read)
}
@group(0) @binding(0) var<storage, read> u: array<f32>;
@group(0) @binding(1) var<storage, read> delta: array<f32>;
@group(0) @binding(2) var<storage, read> BC: array<${vecBC ? "vec4<f32>" : "f32"}>;
@group(0) @binding(3) var<storage, read> z: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read> SX: array<f32>;
@group(0) @binding(6) var<storage, read_write> du: array<f32>;
@group(0) @binding(7) var<storage, read_write> dDelta: array<f32>;
@group(0) @binding(8) var<storage, read_write> dz: array<f32>;
@group(0) @binding(9) var<storage, read_write> part: array<f32>;
@group(0) @binding(10) var<uniform> p: P;
`;

/** Dispatches a chunk kernel over (G, nC, B) with the bindings of CHUNK_IO_WGSL. */
export function dispatchChunk(
  gpu: Gpu, k: Kernel, g: ScanBwdGeometry, a: ScanBwdInputs, dy: Buf, SX: Buf, o: ScanBwdOutputs, part: Buf,
): void {
  const p = new Params().u32(g.B).u32(g.L).u32(g.E).u32(g.nC).u32(g.chunkLen)
    .u32(a.ldD).u32(a.offD).u32(a.ldBC).u32(a.offB).u32(a.offC).u32(a.ldZ).u32(a.offZ).bool(!!a.z).bool(g.nC > 1 || g.hasState)
    .u32(g.oS).u32(g.oX).u32(g.oP).u32(o.ldDD).u32(o.offDD).u32(o.ldDZ).u32(o.offDZ).u32(g.Gp).u32(g.oA).u32(g.oDE)
    .bool(g.hasState);
  gpu.dispatch(k, [a.u, a.delta, a.BC, a.z ?? gpu.dummy, dy, SX, o.du, o.dDelta, o.dz ?? gpu.dummyOut, part],
    p, [g.G, g.nC, g.B]);
}

/**
 * One backward step's gate, as WGSL statements (the same math in both kernels; scan-backward.ts of the CPU
 * backend): with gout (dy), zv (z), uv (u), skip (D) and the statements `cyLines` that define cy = C·h in
 * scope, sets gy = dy · silu(z) and gDz = dz, then the step's dD term and the masked factors of dB and dC.
 * hasZ: whether the forward had a gate, when the kernel is generated for one case (no branch), or undefined to
 * test p.hasZ at run time.
 */
export function gateWgsl(cyLines: string, indent: string, hasZ?: boolean): string {
  const gate = [
    `${cyLines}`,
    "let y = fma(skip, uv, cy);",
    "let sig = 1.0 / (1.0 + exp(-zv));",
    "gy = gout * zv * sig;",
    "gDz = gout * y * sig * (1.0 + zv * (1.0 - sig));",
  ];
  return [
    "var gy = gout;",
    "var gDz = 0.0;",
    ...(hasZ === undefined ? ["if (p.hasZ != 0u) {", ...gate.map((l) => `  ${l}`), "}"] : hasZ ? gate : []),
    "dDacc = fma(gy, uv, dDacc);",
    "let dtuL = dt * uv * lm;",
    "let gyL = gy * lm;",
  ].join(`\n${indent}`);
}

/**
 * One backward step of state k, as WGSL statements: G = ∂loss/∂h (the carry x plus this step's output), the
 * decay a, its dA term, the carry to the step before, this step's dB and dC terms (rB, rC), and h set back to
 * the state before the step, `hPrev`.
 */
export function stateStepWgsl(k: string | number, hPrev: string, indent: string): string {
  return [
    `let G_${k} = fma(gy, C_${k}, x_${k});`,
    `let a_${k} = exp2(dt * A2_${k});`,
    `let q_${k} = G_${k} * a_${k} * ${hPrev};`,
    `dA_${k} = fma(dt, q_${k}, dA_${k});`,
    `x_${k} = G_${k} * a_${k};`,
    `let rB_${k} = dtuL * G_${k};`,
    `let rC_${k} = gyL * h_${k};`,
    `h_${k} = ${hPrev};`,
  ].join(`\n${indent}`);
}
