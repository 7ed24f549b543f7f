/**
 * Block sums: out[outOff + g] = Σ f(x[xOff + i]) over block g of BLOCK consecutive values, f(x) = x or x².
 * Each thread adds BLOCK / 256 values, then the workgroup adds its 256 sums as a tree: the same inputs always
 * give the same bits. Applied again to its own output until one value is left, it is a whole-array sum.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { grid } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";

export const BLOCK = 4096;

// x | out; a workgroup a block, its 256 sums added as a tree in workgroup memory
const parts: WgslParts = {
  consts: [["BLOCK", `${BLOCK}u`]],
  params: [["n", "u32"], ["xOff", "u32"], ["outOff", "u32"], ["square", "u32"], ["groupsX", "u32"]],
  bindings: [["x", "var<storage, read> x: array<f32>"], ["out", "var<storage, read_write> out: array<f32>"]],
  decls: "var<workgroup> red: array<f32, 256>;",
  fn: /* wgsl */ `
fn blockSum(lid: vec3<u32>, wg: vec3<u32>) {
  let g = wg.y * p.groupsX + wg.x;
  let base = g * BLOCK;
  if (base >= p.n) { return; } // uniform across the workgroup
  var s = 0.0;
  for (var j = 0u; j < BLOCK; j += 256u) {
    let i = base + j + lid.x;
    if (i < p.n) {
      let v = x[p.xOff + i];
      s += select(v, v * v, p.square != 0u);
    }
  }
  red[lid.x] = s;
  workgroupBarrier();
  for (var k = 128u; k > 0u; k >>= 1u) {
    if (lid.x < k) { red[lid.x] += red[lid.x + k]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) { out[p.outOff + g] = red[0]; }
}`,
};

/** How many block sums n values give. */
export const blocks = (n: number) => Math.ceil(n / BLOCK);

const bwdBlockSumKernel = defineKernel({ name: "bwd_block_sum", wgsl: () => standaloneWgsl(parts, "256", "blockSum(lid, wg)"), example: null });

// x: n values from word xOff -> out: blocks(n) values from word outOff
export function blockSum(gpu: Gpu, x: Buf, xOff: number, n: number, square: boolean, out: Buf, outOff: number): void {
  if (n === 0) return;
  const k = gpu.kernel(bwdBlockSumKernel, null);
  const [gx, gy] = grid(blocks(n), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(parts, { x, out }), paramBlock(parts.params, { n, xOff, outOff, square, groupsX: gx }), [gx, gy]);
}
