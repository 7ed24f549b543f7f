/**
 * How the scan backward splits a sequence and where its scratch lives. A chunk of chunkLen steps keeps one saved
 * state [N] per channel (its start state, from the forward's chunk pass and combine) and one carried gradient
 * [N]; inside a chunk the backward walks sub-tiles of subTile steps from the end, recomputing each sub-tile's
 * states from the chunk's start and keeping them in workgroup memory (subTile · N · 32 floats), never in a
 * [B, L, E, N] buffer. Scratch: SX = [S | X | packed] with S, X: [B, nC, N, E], packed: [E, N + 2].
 *
 * dB and dC are summed over channels in groups of W lanes (reduce.ts): W = 32 is one partial per workgroup and
 * row; a smaller subgroup (W < 32) leaves 32 / W partials per workgroup; W = 0 sums in workgroup memory (no
 * subgroups). The partials [B·L, Gp, 2N] are added in order by reduce-groups.ts.
 */
import type { Buf, Gpu } from "../../../gpu.ts";
import { BLOCKS_CHOICES, LANES_CHOICES, LANES_NB, LANES_QT, lanesShape, lanesWorkgroupBytes } from "./chunk-lanes.ts";

export const SCAN_BWD_WG = 32; // channels per workgroup of the chunk kernel

export interface ScanBwdGeometry {
  /** the chunk kernel: "lanes" (chunk-lanes.ts: a channel's states over 2 or more lanes) or "channel" (chunk.ts) */
  kernel: "lanes" | "channel";
  lanes: number; // lanes a channel: QT of the lanes kernel, 1 for the channel kernel
  blocks: number; // W-lane blocks a workgroup of the lanes kernel (NB), 1 for the channel kernel
  B: number;
  L: number;
  E: number;
  N: number;
  nC: number;
  chunkLen: number;
  subTile: number;
  hasState: boolean; // the forward started from a given state: S[b, 0] holds it (S exists even for one chunk)
  G: number; // channel groups (workgroups along E): ceil(E / channels per workgroup)
  W: number; // lanes summed by one subgroup reduction (power of two ≤ 32), 0 = workgroup memory
  Gp: number; // dB|dC partials per row: G · (32 / W), or G when W = 0 or for the lanes kernel
  // offsets in SX, in floats
  oS: number;
  oX: number;
  oP: number;
  sxFloats: number;
  // offsets in the partial sums buffer, in floats: dB|dC [B·L, Gp, 2N], dA_log [B·nC, E, N], dD|dDeltaBias [B·nC, 2, E]
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

/** The workgroup memory of the workgroup-memory reduction (W = 0), in bytes: [2N, 33] floats. */
const redBytes = (N: number, W: number) => (W > 0 ? 0 : 2 * N * (SCAN_BWD_WG + 1) * 4);

/** The largest sub-tile whose states fit in `wgBytes` of workgroup memory beside the reduction buffer. */
export function maxSubTile(N: number, wgBytes: number, W = 0): number {
  return Math.min(8, Math.floor((wgBytes - redBytes(N, W)) / (N * SCAN_BWD_WG * 4)));
}

/**
 * The reduction width for this device: the smallest subgroup size it may run (so a W-lane block never spans
 * two subgroups), at most 32; 0 (workgroup memory) without the subgroups feature or a known size.
 * request: a width to force (0 = workgroup memory; a power of two ≤ the device's smallest subgroup), or
 * undefined / negative for the default.
 */
export function scanBwdReduceWidth(gpu: Gpu, request?: number): number {
  const min = gpu.subgroupMinSize;
  const most = min >= 2 && (min & (min - 1)) === 0 ? Math.min(SCAN_BWD_WG, min) : 0;
  if (request === undefined || request < 0) return most;
  if (request === 0 || most === 0) return 0;
  let w = 1;
  while (w * 2 <= Math.min(request, most)) w *= 2;
  return w >= 2 ? w : 0;
}

/**
 * chunkLen 0 = the default: 2 sub-tiles per chunk where 4 would leave fewer than ~4096 workgroups (small B · E:
 * the chunks are the parallelism), else 4 (fewer chunk states to write, combine and read).
 */
export function scanBwdGeometry(
  B: number, L: number, E: number, N: number, subTile: number, chunkLen = 0, W = 0, hasState = false,
): ScanBwdGeometry {
  const G = Math.ceil(E / SCAN_BWD_WG);
  const auto = B * G * Math.ceil(L / (4 * subTile)) < 4096 ? 2 * subTile : 4 * subTile;
  const cl = Math.max(1, Math.min(L, chunkLen > 0 ? chunkLen : auto));
  return layout("channel", 1, 1, B, L, E, N, subTile, cl, W, hasState, G, W > 0 ? G * (SCAN_BWD_WG / W) : G);
}

/** Sub-tiles a segment of the lanes kernel may have (its saved states live in workgroup memory). */
const LANES_MAX_SUBTILES = 16;

/** The lanes kernel with QT lanes a channel can run here: subgroup blocks of QT to 32 lanes; QT one of LANES_CHOICES. */
export const lanesPossible = (W: number, QT = LANES_QT, NB = LANES_NB) =>
  LANES_CHOICES.includes(QT) && BLOCKS_CHOICES.includes(NB) && W >= QT && W <= SCAN_BWD_WG;

/**
 * The geometry of the lanes kernel (chunk-lanes.ts): sub-tiles of `subTile` steps (unrolled), segments of
 * `chunkLen` steps (rounded up to whole sub-tiles, at most 16 and what workgroup memory holds). 0 = about 32
 * steps, shorter where that leaves fewer than ~1024 workgroups. On the H200 with 2 lanes a channel, segments of 32
 * steps (4 sub-tiles of 8) were the fastest of 16, 24, 32, 48 and 64 at every anchor shape, sub-tiles of 8 faster
 * than 4; with 4 lanes, 64 steps had been the fastest.
 * Throws nothing: the caller checks lanesPossible.
 */
export function scanBwdLanesGeometry(
  B: number, L: number, E: number, N: number, subTile: number, wgBytes: number, chunkLen = 0, W = 32, hasState = false,
  QT = LANES_QT, NB = LANES_NB,
): ScanBwdGeometry {
  const { CW } = lanesShape(N, W, QT, NB);
  const G = Math.ceil(E / CW);
  let most = 1;
  while (most < LANES_MAX_SUBTILES && lanesWorkgroupBytes(N, W, subTile, most * 2, QT, NB) <= wgBytes) most *= 2;
  let ks: number;
  if (chunkLen > 0) ks = Math.min(most, Math.max(1, Math.ceil(chunkLen / subTile)));
  else {
    ks = Math.min(most, Math.max(1, Math.round(32 / subTile)));
    while (ks > 1 && B * G * Math.ceil(L / (ks * subTile)) < 1024) ks = Math.ceil(ks / 2);
  }
  const cl = Math.max(1, Math.min(L, ks * subTile));
  return layout("lanes", QT, NB, B, L, E, N, subTile, cl, W, hasState, G, G);
}

/** The lanes kernel's workgroup memory with one sub-tile a segment: more than the device allows means it cannot run. */
export const lanesMinBytes = (N: number, W: number, subTile: number, QT = LANES_QT, NB = LANES_NB) =>
  lanesWorkgroupBytes(N, W, subTile, 1, QT, NB);

function layout(
  kernel: "lanes" | "channel", lanes: number, blocks: number, B: number, L: number, E: number, N: number, subTile: number, cl: number, W: number,
  hasState: boolean, G: number, Gp: number,
): ScanBwdGeometry {
  const nC = Math.ceil(L / cl);
  const states = nC > 1 || hasState ? B * nC * N * E : 0;
  const oS = 0, oX = states, oP = 2 * states;
  const oA = B * L * Gp * 2 * N;
  const oDE = oA + B * nC * E * N;
  return {
    kernel, lanes, blocks, B, L, E, N, nC, chunkLen: cl, subTile, hasState, G, W, Gp, oS, oX, oP, sxFloats: oP + E * (N + 2), oA, oDE,
    partFloats: oDE + B * nC * 2 * E,
  };
}
