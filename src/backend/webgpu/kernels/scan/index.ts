/**
 * The fused selective scan: one dispatch when the sequence is a single chunk (step mode, or batch × channels
 * large enough to fill the GPU), else three: chunk summaries, their associative combine, and the output pass.
 * Scratch is B · nC · (N + 1) · E floats, independent of N · L: no [B, L, E, N] buffer exists at any point.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { type ScanInputs, scanChunk } from "./chunk.ts";
import { scanCombine } from "./combine.ts";
import type { ScanGeometry } from "./geometry.ts";
import { scanOutput } from "./output.ts";
import { STEP_MAX_N, scanStep } from "./step.ts";

export { scanGeometry, type ScanGeometry } from "./geometry.ts";
export type { ScanInputs } from "./chunk.ts";
export { packScanParams } from "./pack.ts";

// -> y: [B, L, E]; stateIn / stateOut: [B, E, N] (distinct buffers) or null
export function selectiveScan(gpu: Gpu, g: ScanGeometry, a: ScanInputs, stateIn: Buf | null, stateOut: Buf | null, y: Buf): void {
  if (g.L === 1 && g.N <= STEP_MAX_N) {
    scanStep(gpu, g.B, g.E, g.N, a, stateIn, stateOut, y); // step mode: a thread per state
    return;
  }
  if (g.nC === 1) {
    const start = stateIn ? { buf: stateIn, sB: g.E * g.N, sC: 0, sE: g.N, sN: 1 } : null;
    scanOutput(gpu, g, a, start, y, stateOut);
    return;
  }
  const S = gpu.alloc(g.B * g.nC * g.N * g.E * 4, "the scan's chunk states");
  const dsum = gpu.alloc(g.B * g.nC * g.E * 4, "the scan's chunk sums");
  scanChunk(gpu, g, a, S, dsum);
  scanCombine(gpu, g, a.packed, dsum, stateIn, S);
  scanOutput(gpu, g, a, { buf: S, sB: g.nC * g.N * g.E, sC: g.N * g.E, sE: 1, sN: g.E }, y, stateOut);
  gpu.release(S);
  gpu.release(dsum);
}
