/**
 * Word copies and fills inside the compute pass (no pass break as copyBufferToBuffer would need):
 * dst[dstOff + i] = src[srcOff + i] for i < n, or dst[dstOff + i] = value. Offsets and counts in 32-bit words.
 */
import type { Buf, Gpu } from "../gpu.ts";
import { grid } from "../gpu.ts";
import { defineKernel } from "../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "./compose.ts";

// one thread a word: i = gid.y · groupsX · 256 + gid.x (the grid folded into y past the per-dimension limit)
const copyParts: WgslParts = {
  consts: [],
  params: [["n", "u32"], ["srcOff", "u32"], ["dstOff", "u32"], ["groupsX", "u32"]],
  bindings: [["src", "var<storage, read> src: array<u32>"], ["dst", "var<storage, read_write> dst: array<u32>"]],
  decls: "",
  fn: /* wgsl */ `
fn copyWords(gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (i < p.n) { dst[p.dstOff + i] = src[p.srcOff + i]; }
}`,
};

const fillParts: WgslParts = {
  consts: [],
  params: [["n", "u32"], ["dstOff", "u32"], ["value", "u32"], ["groupsX", "u32"]],
  bindings: [["dst", "var<storage, read_write> dst: array<u32>"]],
  decls: "",
  fn: /* wgsl */ `
fn fillWords(gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (i < p.n) { dst[p.dstOff + i] = p.value; }
}`,
};

// dst[r * ldDst + offDst + c] = src[r * ldSrc + offSrc + c], c < width
const windowParts: WgslParts = {
  consts: [],
  params: [["rows", "u32"], ["width", "u32"], ["ldSrc", "u32"], ["offSrc", "u32"], ["ldDst", "u32"], ["offDst", "u32"], ["groupsX", "u32"]],
  bindings: [["src", "var<storage, read> src: array<u32>"], ["dst", "var<storage, read_write> dst: array<u32>"]],
  decls: "",
  fn: /* wgsl */ `
fn copyWindow(gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (i >= p.rows * p.width) { return; }
  let r = i / p.width;
  let c = i % p.width;
  dst[r * p.ldDst + p.offDst + c] = src[r * p.ldSrc + p.offSrc + c];
}`,
};

const copyWordsKernel = defineKernel({
  name: "copy_words", wgsl: () => standaloneWgsl(copyParts, "256", "copyWords(gid)"), example: null,
});

export function copyWords(gpu: Gpu, src: Buf, srcOff: number, dst: Buf, dstOff: number, n: number): void {
  if (n === 0) return;
  const k = gpu.kernel(copyWordsKernel, null);
  const [gx, gy] = grid(Math.ceil(n / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(copyParts, { src, dst }),
    paramBlock(copyParts.params, { n, srcOff, dstOff, groupsX: gx }), [gx, gy]);
}

const fillWordsKernel = defineKernel({
  name: "fill_words", wgsl: () => standaloneWgsl(fillParts, "256", "fillWords(gid)"), example: null,
});

export function fillWords(gpu: Gpu, dst: Buf, dstOff: number, n: number, value = 0): void {
  if (n === 0) return;
  const k = gpu.kernel(fillWordsKernel, null);
  const [gx, gy] = grid(Math.ceil(n / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(fillParts, { dst }),
    paramBlock(fillParts.params, { n, dstOff, value, groupsX: gx }), [gx, gy]);
}

const copyWindowKernel = defineKernel({
  name: "copy_window", wgsl: () => standaloneWgsl(windowParts, "256", "copyWindow(gid)"), example: null,
});

/** Copies a column window of a matrix into a column window of another (both as 32-bit words). */
export function copyWindow(gpu: Gpu, src: Buf, ldSrc: number, offSrc: number, dst: Buf, ldDst: number, offDst: number, rows: number, width: number): void {
  if (rows * width === 0) return;
  const k = gpu.kernel(copyWindowKernel, null);
  const [gx, gy] = grid(Math.ceil((rows * width) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(windowParts, { src, dst }),
    paramBlock(windowParts.params, { rows, width, ldSrc, offSrc, ldDst, offDst, groupsX: gx }), [gx, gy]);
}
