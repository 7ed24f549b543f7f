/**
 * Word copies and fills inside the compute pass (no pass break as copyBufferToBuffer would need):
 * dst[dstOff + i] = src[srcOff + i] for i < n, or dst[dstOff + i] = value. Offsets and counts in 32-bit words.
 */
import type { Buf, Gpu } from "../gpu.ts";
import { Params, grid } from "../gpu.ts";
import { defineKernel } from "../kernel-def.ts";

const copyWgsl = /* wgsl */ `
// bindings: 0 src | 1 dst | 2 params
struct P { n: u32, srcOff: u32, dstOff: u32, groupsX: u32 }
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<uniform> p: P;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (i < p.n) { dst[p.dstOff + i] = src[p.srcOff + i]; }
}
`;

const fillWgsl = /* wgsl */ `
// bindings: 0 dst | 1 params
struct P { n: u32, dstOff: u32, value: u32, groupsX: u32 }
@group(0) @binding(0) var<storage, read_write> dst: array<u32>;
@group(0) @binding(1) var<uniform> p: P;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (i < p.n) { dst[p.dstOff + i] = p.value; }
}
`;

const copyWordsKernel = defineKernel({ name: "copy_words", wgsl: () => copyWgsl, example: null });

export function copyWords(gpu: Gpu, src: Buf, srcOff: number, dst: Buf, dstOff: number, n: number): void {
  if (n === 0) return;
  const k = gpu.kernel(copyWordsKernel, null);
  const [gx, gy] = grid(Math.ceil(n / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, [src, dst], new Params().u32(n).u32(srcOff).u32(dstOff).u32(gx), [gx, gy]);
}

const fillWordsKernel = defineKernel({ name: "fill_words", wgsl: () => fillWgsl, example: null });

export function fillWords(gpu: Gpu, dst: Buf, dstOff: number, n: number, value = 0): void {
  if (n === 0) return;
  const k = gpu.kernel(fillWordsKernel, null);
  const [gx, gy] = grid(Math.ceil(n / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, [dst], new Params().u32(n).u32(dstOff).u32(value).u32(gx), [gx, gy]);
}

const windowWgsl = /* wgsl */ `
// bindings: 0 src | 1 dst | 2 params: dst[r * ldDst + offDst + c] = src[r * ldSrc + offSrc + c], c < width
struct P { rows: u32, width: u32, ldSrc: u32, offSrc: u32, ldDst: u32, offDst: u32, groupsX: u32 }
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<uniform> p: P;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (i >= p.rows * p.width) { return; }
  let r = i / p.width;
  let c = i % p.width;
  dst[r * p.ldDst + p.offDst + c] = src[r * p.ldSrc + p.offSrc + c];
}
`;

const copyWindowKernel = defineKernel({ name: "copy_window", wgsl: () => windowWgsl, example: null });

/** Copies a column window of a matrix into a column window of another (both as 32-bit words). */
export function copyWindow(gpu: Gpu, src: Buf, ldSrc: number, offSrc: number, dst: Buf, ldDst: number, offDst: number, rows: number, width: number): void {
  if (rows * width === 0) return;
  const k = gpu.kernel(copyWindowKernel, null);
  const [gx, gy] = grid(Math.ceil((rows * width) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, [src, dst], new Params().u32(rows).u32(width).u32(ldSrc).u32(offSrc).u32(ldDst).u32(offDst).u32(gx), [gx, gy]);
}
