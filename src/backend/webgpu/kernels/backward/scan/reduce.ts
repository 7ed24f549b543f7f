/**
 * WGSL generator for the scan backward's per-step channel sum of dB and dC (used by chunk.ts): every lane (one
 * channel) holds V = 2N terms; the workgroup writes their sums over channels as partials part[row, slot, 2N].
 *
 * W ≥ 2 (subgroups): a reduce-scatter over blocks of W lanes with subgroupShuffleXor. At the stage of offset o
 * (W/2, W/4, .., 1) each lane keeps one half of its K terms and sends the other half to lane ^ o, which adds it
 * to its own: K/2 shuffles and adds, no barrier, no workgroup memory. After log2(W) stages lane l of a block
 * holds the block sums of terms [l·K', (l+1)·K'), K' = V'/W (V' = V rounded up to a multiple of W, zeros
 * after V): with W = 32 and N = 16 that is 31 shuffles and one coalesced write per step for the 32 sums, where
 * a subgroupAdd per term would take 32 · 5 shuffles. The tree is fixed, so the sums are deterministic. A block
 * is W consecutive local ids (subgroups are consecutive lanes of a 1-D workgroup), one partial slot each.
 *
 * W = 0 (no subgroups): the terms go through workgroup memory, [2N, 33] floats (padded rows), between two
 * barriers, and lane k adds column k in lane order.
 */
import { SCAN_BWD_WG } from "./geometry.ts";

/**
 * WGSL statements of a reduce-scatter over lane bits `hi`, hi/2, ..., `lo` (powers of two) with
 * subgroupShuffleXor: at each bit a lane keeps one half of its terms (the upper when its bit in `laneVar` is set)
 * and adds the partner's same half. `vals`: WGSL expressions, a multiple of 2·hi/lo of them (each stage halves
 * them). Returns the statements and the names of the K terms left in each lane: the lane whose scattered bits
 * read c (most significant first) holds the block sums of terms [c·K, (c+1)·K).
 */
export function reduceScatter(vals: readonly string[], hi: number, lo: number, laneVar: string): { lines: string[]; terms: string[] } {
  const lines: string[] = [];
  let cur = [...vals];
  let stage = 0;
  for (let o = hi; o >= lo; o /= 2, stage++) {
    const half = cur.length / 2;
    lines.push(`let up${stage} = (${laneVar} & ${o}u) != 0u;`);
    const next: string[] = [];
    for (let i = 0; i < half; i++) {
      const a = cur[i]!, b = cur[i + half]!, name = `rs${stage}_${i}`;
      lines.push(`let ${name} = select(${a}, ${b}, up${stage}) + subgroupShuffleXor(select(${b}, ${a}, up${stage}), ${o}u);`);
      next.push(name);
    }
    cur = next;
  }
  return { lines, terms: cur };
}

/** Module-scope declarations the reduction needs. */
export function reduceDecls(N: number, W: number): string {
  if (W > 0) return "";
  return `const RS = ${SCAN_BWD_WG + 1}u; // row stride of red (padded against bank conflicts)
var<workgroup> red: array<f32, ${2 * N}u * RS>; // red[k · RS + lane]: this step's dB (k < N) and dC (k ≥ N) terms`;
}

/**
 * Statements that sum the terms `vals` (2N WGSL expressions of this lane) over the workgroup's channels and
 * write them to part at row `row`; in scope: row, lane, sgl (subgroup_invocation_id, W > 0), wg, p.Gp.
 * Must run in uniform control flow.
 */
export function reduceStep(N: number, W: number, vals: readonly string[]): string {
  const V = 2 * N;
  if (vals.length !== V) throw new Error("reduceStep: expected 2N terms");
  if (W === 0) {
    const writes = vals.map((v, k) => `red[${k}u * RS + lane] = ${v};`).join("\n      ");
    return `workgroupBarrier(); // the previous step's sums have read red
      ${writes}
      workgroupBarrier();
      for (var k = lane; k < ${V}u; k += ${SCAN_BWD_WG}u) {
        var s = 0.0;
        for (var l = 0u; l < ${SCAN_BWD_WG}u; l++) { s += red[k * RS + l]; }
        part[(row * p.Gp + wg.x) * ${V}u + k] = s;
      }`;
  }
  const Vp = Math.ceil(V / W) * W;
  const { lines, terms: cur } = reduceScatter(Array.from({ length: Vp }, (_, k) => (k < V ? vals[k]! : "0.0")), W / 2, 1, "sgl");
  const K = cur.length; // Vp / W sums per lane
  lines.push(`let slot = wg.x * ${SCAN_BWD_WG / W}u + lane / ${W}u;`);
  lines.push(`let k0 = (sgl % ${W}u) * ${K}u;`);
  for (let i = 0; i < K; i++) {
    const guard = Vp > V ? `if (k0 + ${i}u < ${V}u) ` : "";
    lines.push(`${guard}{ part[(row * p.Gp + slot) * ${V}u + k0 + ${i}u] = ${cur[i]}; }`);
  }
  return lines.join("\n      ");
}
