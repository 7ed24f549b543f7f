/**
 * The second stage of every deterministic reduction of the backward pass: partial sums written by G groups
 * (row chunks, batch-chunks, channel groups) are added in group order and the total added into a gradient:
 *   out[r · ldo + offo + c] += Σ_{g < G} part[off + r · sR + g · sG + (c / cw) · sC1 + (c % cw) · sC2]
 * for r < rows, c < width. One thread per output value; no float atomics anywhere.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { grid } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";

// bindings: 0 part | 1 out in/out | 2 params
const reduceGroupsParts: WgslParts = {
  consts: [],
  params: [["rows", "u32"], ["width", "u32"], ["G", "u32"], ["ldo", "u32"], ["offo", "u32"], ["off", "u32"], ["sR", "u32"], ["sG", "u32"], ["cw", "u32"], ["sC1", "u32"], ["sC2", "u32"], ["groupsX", "u32"]],
  bindings: [
    ["part", "var<storage, read> part: array<f32>"],
    ["out", "var<storage, read_write> out: array<f32>"],
  ],
  decls: "",
  fn: /* wgsl */ `
fn reduceGroups(gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (i >= p.rows * p.width) { return; }
  let r = i / p.width;
  let c = i % p.width;
  let base = p.off + r * p.sR + (c / p.cw) * p.sC1 + (c % p.cw) * p.sC2;
  var s = 0.0;
  // four groups' loads in flight at once; the sum is still taken in group order
  var g = 0u;
  for (; g + 4u <= p.G; g += 4u) {
    let a0 = part[base + g * p.sG];
    let a1 = part[base + (g + 1u) * p.sG];
    let a2 = part[base + (g + 2u) * p.sG];
    let a3 = part[base + (g + 3u) * p.sG];
    s = (((s + a0) + a1) + a2) + a3;
  }
  for (; g < p.G; g++) { s += part[base + g * p.sG]; }
  let o = r * p.ldo + p.offo + c;
  out[o] = out[o] + s;
}`,
};

/** Where the partial sums sit: part[off + r·sR + g·sG + (c / cw)·sC1 + (c % cw)·sC2]. */
export interface PartLayout {
  G: number; off: number; sR: number; sG: number; cw: number; sC1: number; sC2: number;
}

/** The common layout part[off + g · width + c] (one row): G partial copies of a [width] gradient. */
export const stacked = (G: number, width: number, off = 0): PartLayout => ({ G, off, sR: 0, sG: width, cw: 1, sC1: 1, sC2: 0 });

const bwdReduceGroupsKernel = defineKernel({
  name: "bwd_reduce_groups", wgsl: () => standaloneWgsl(reduceGroupsParts, "256", "reduceGroups(gid)"), example: null,
});

// part -> out [rows, width] window (row stride ldo, first column offo) += Σ_g part
export function reduceGroups(gpu: Gpu, part: Buf, l: PartLayout, out: Buf, rows: number, width: number, ldo: number, offo: number): void {
  if (rows * width === 0) return;
  const k = gpu.kernel(bwdReduceGroupsKernel, null);
  const [gx, gy] = grid(Math.ceil((rows * width) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(reduceGroupsParts, { part, out }),
    paramBlock(reduceGroupsParts.params, { rows, width, G: l.G, ldo, offo, off: l.off, sR: l.sR, sG: l.sG, cw: l.cw, sC1: l.sC1, sC2: l.sC2, groupsX: gx }), [gx, gy]);
}
