/**
 * How the scan backward splits a sequence and where its scratch lives. A chunk of chunkLen steps keeps one saved
 * state [N] per channel (its start state, from the forward's chunk pass and combine) and one carried gradient
 * [N]; inside a chunk the backward walks sub-tiles of subTile steps from the end, recomputing each sub-tile's
 * states from the chunk's start and keeping them in workgroup memory (subTile · N · 32 floats), never in a
 * [B, L, E, N] buffer. Scratch: SX = [S | X | packed] with S, X: [B, nC, N, E], packed: [E, N + 2].
 */
import type { Buf } from "../../../gpu.ts";

export const SCAN_BWD_WG = 32; // channels per workgroup of the chunk kernel

export interface ScanBwdGeometry {
  B: number;
  L: number;
  E: number;
  N: number;
  nC: number;
  chunkLen: number;
  subTile: number;
  G: number; // channel groups: ceil(E / SCAN_BWD_WG)
  // offsets in SX, in floats
  oS: number;
  oX: number;
  oP: number;
  sxFloats: number;
  // offsets in the partial sums buffer, in floats: dB|dC [B·L, G, 2N], dA_log [B·nC, E, N], dD|dDeltaBias [B·nC, 2, E]
  oA: number;
  oDE: number;
  partFloats: number;
}

/** The inputs as buffers and windows: B and C are column windows of one buffer `BC`. */
export interface ScanBwdInputs {
  u: Buf;
  delta: Buf; ldD: number; offD: number;
  BC: Buf; ldBC: number; offB: number; offC: number;
  z: Buf | null; ldZ: number; offZ: number;
}

/** The largest sub-tile whose states fit in `wgBytes` of workgroup memory beside the reduction buffer. */
export function maxSubTile(N: number, wgBytes: number): number {
  const red = 2 * N * (SCAN_BWD_WG + 1) * 4;
  return Math.min(8, Math.floor((wgBytes - red) / (N * SCAN_BWD_WG * 4)));
}

/** chunkLen 0 = the default, 4 sub-tiles per chunk. */
export function scanBwdGeometry(B: number, L: number, E: number, N: number, subTile: number, chunkLen = 0): ScanBwdGeometry {
  const cl = Math.max(1, Math.min(L, chunkLen > 0 ? chunkLen : 4 * subTile));
  const nC = Math.ceil(L / cl);
  const G = Math.ceil(E / SCAN_BWD_WG);
  const states = nC > 1 ? B * nC * N * E : 0;
  const oS = 0, oX = states, oP = 2 * states;
  const oA = B * L * G * 2 * N;
  const oDE = oA + B * nC * E * N;
  return {
    B, L, E, N, nC, chunkLen: cl, subTile, G, oS, oX, oP, sxFloats: oP + E * (N + 2), oA, oDE, partFloats: oDE + B * nC * 2 * E,
  };
}
