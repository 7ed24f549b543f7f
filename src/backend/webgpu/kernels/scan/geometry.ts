/**
 * How the selective scan splits a sequence: nC chunks of chunkLen steps, enough that B · nC · E threads fill the
 * GPU even when batch × channels alone would not (B = 1 prefill), yet no more than needed, since every extra
 * chunk adds N · E carried numbers to write and combine.
 */
export const SCAN_WG = 128; // threads per workgroup, one channel each

export interface ScanGeometry {
  B: number;
  L: number;
  E: number;
  N: number;
  nC: number;
  chunkLen: number;
}

/** targetThreads: how many channel-chunk threads to aim for; minChunk: the shortest chunk worth a split. */
export function scanGeometry(B: number, L: number, E: number, N: number, targetThreads: number, minChunk = 32): ScanGeometry {
  const want = Math.ceil(targetThreads / (B * E));
  const most = Math.max(1, Math.floor(L / minChunk));
  let nC = Math.max(1, Math.min(want, most, 65535));
  const chunkLen = Math.ceil(L / nC);
  nC = Math.ceil(L / chunkLen);
  return { B, L, E, N, nC, chunkLen };
}
