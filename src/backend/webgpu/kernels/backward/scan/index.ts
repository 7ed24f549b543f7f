/**
 * The selective scan backward on the GPU, the paper's recomputation design (section 3.3): no state of the forward
 * is stored but one per chunk.
 *   1. the forward's own chunk pass and combine (kernels/scan) give every chunk's start state S [B, nC, N, E]
 *      (from the forward's initial state when it had one);
 *   2. carry.ts + combine.ts give the gradient X [B, nC, N, E] reaching each chunk from its right;
 *   3. chunk-lanes.ts (or chunk.ts without subgroups) recomputes each chunk's states from S and walks it
 *      backwards, writing du, ddelta, dz and partial sums of dB, dC, dA_log, dD and the dt bias;
 *   4. reduce-groups.ts adds the partials, in order, into the gradients.
 * Scratch: SX (2 · B · nC · N · E + E · (N + 2) floats), dsum (B · nC · E), the partials (B · L · Gp · 2N + ...).
 */
import type { Buf, Gpu } from "../../../gpu.ts";
import { scanChunk } from "../../scan/chunk.ts";
import { scanCombine } from "../../scan/combine.ts";
import { packScanParams } from "../../scan/pack.ts";
import { copyWords } from "../../copy.ts";
import { reduceGroups } from "../reduce-groups.ts";
import { scanBwdCarry } from "./carry.ts";
import { scanBwdCombine } from "./combine.ts";
import { scanBwdChunk } from "./chunk.ts";
import type { ScanBwdOutputs } from "./chunk-io.ts";
import { scanBwdChunkLanes } from "./chunk-lanes.ts";
import type { ScanBwdGeometry, ScanBwdInputs } from "./geometry.ts";

export { BLOCKS_CHOICES, LANES_CHOICES, LANES_NB, LANES_QT } from "./chunk-lanes.ts";
export {
  lanesMinBytes, lanesPossible, maxSubTile, scanBwdGeometry, scanBwdLanesGeometry, scanBwdReduceWidth, type ScanBwdGeometry,
  type ScanBwdInputs,
} from "./geometry.ts";
export type { ScanBwdOutputs } from "./chunk-io.ts";

/** Where the reduced gradients go: dB, dC as windows (ld, off), the rest dense. */
export interface ScanBwdReduced {
  dB: Buf; ldB: number; offB: number;
  dC: Buf; ldC: number; offC: number;
  dA_log: Buf; dD: Buf; dDeltaBias: Buf;
}

/** The per-channel parameters (A_log [E, N], dt bias [E], D [E]) as f32 buffers. */
export interface ScanBwdParams { A_log: Buf; deltaBias: Buf; D: Buf }

/** state: the forward's initial state [B, E, N] (g.hasState), or null for zeros. */
export function selectiveScanBackward(
  gpu: Gpu, g: ScanBwdGeometry, a: ScanBwdInputs, prm: ScanBwdParams, dy: Buf, out: ScanBwdOutputs, red: ScanBwdReduced,
  state: Buf | null = null,
): void {
  const { B, E, N, nC } = g;
  const packed = gpu.alloc(E * (N + 2) * 4, "the scan's packed parameters");
  packScanParams(gpu, prm.A_log, prm.deltaBias, prm.D, E, N, packed);
  const SX = gpu.alloc(g.sxFloats * 4, "the scan backward's chunk states");
  copyWords(gpu, packed, 0, SX, g.oP, E * (N + 2));
  if (nC > 1) {
    // 1. start states: the forward's chunk pass (chunk-local end states and Σ delta) and combine
    const dsum = gpu.alloc(B * nC * E * 4, "the scan's chunk sums");
    const fwd = { B, L: g.L, E, N, nC, chunkLen: g.chunkLen };
    scanChunk(gpu, fwd, { ...a, packed }, SX, dsum);
    scanCombine(gpu, fwd, packed, dsum, state, SX);
    // 2. the gradient carried into each chunk from its right
    scanBwdCarry(gpu, g, a, dy, SX);
    scanBwdCombine(gpu, g, dsum, SX);
    gpu.release(dsum);
  } else if (state) {
    // one chunk: the combine over a single chunk just writes S[b, 0] = the initial state, transposed to [N, E]
    scanCombine(gpu, { B, L: g.L, E, N, nC: 1, chunkLen: g.chunkLen }, packed, gpu.dummy, state, SX);
  }
  gpu.release(packed);
  // 3. every gradient, chunk by chunk
  const part = gpu.alloc(g.partFloats * 4, "the scan backward's partial sums");
  if (g.kernel === "lanes") scanBwdChunkLanes(gpu, g, a, dy, SX, out, part);
  else scanBwdChunk(gpu, g, a, dy, SX, out, part);
  gpu.release(SX);
  // 4. the partial sums, in order
  const rows = B * g.L;
  const G = g.Gp;
  if (red.dB === red.dC && red.ldB === red.ldC && red.offC === red.offB + N) {
    // dB and dC side by side (x_proj's output): one pass over rows of 2N, each group's row read whole
    reduceGroups(gpu, part, { G, off: 0, sR: G * 2 * N, sG: 2 * N, cw: 1, sC1: 1, sC2: 0 }, red.dB, rows, 2 * N, red.ldB, red.offB);
  } else {
    reduceGroups(gpu, part, { G, off: 0, sR: G * 2 * N, sG: 2 * N, cw: 1, sC1: 1, sC2: 0 }, red.dB, rows, N, red.ldB, red.offB);
    reduceGroups(gpu, part, { G, off: N, sR: G * 2 * N, sG: 2 * N, cw: 1, sC1: 1, sC2: 0 }, red.dC, rows, N, red.ldC, red.offC);
  }
  reduceGroups(gpu, part, { G: B * nC, off: g.oA, sR: 0, sG: E * N, cw: 1, sC1: 1, sC2: 0 }, red.dA_log, 1, E * N, E * N, 0);
  reduceGroups(gpu, part, { G: B * nC, off: g.oDE, sR: 0, sG: 2 * E, cw: 1, sC1: 1, sC2: 0 }, red.dD, 1, E, E, 0);
  reduceGroups(gpu, part, { G: B * nC, off: g.oDE + E, sR: 0, sG: 2 * E, cw: 1, sC1: 1, sC2: 0 }, red.dDeltaBias, 1, E, E, 0);
  gpu.release(part);
}
