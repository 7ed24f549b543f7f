/** dst += alpha · src over n values (the optimizer's and gradient accumulation's elementwise add), in place. */
import type { Buf, Gpu } from "../../gpu.ts";
import { grid } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";

// src, dst: [n]; one thread a value, the grid folded into y past the per-dimension limit
const parts: WgslParts = {
  consts: [],
  params: [["n", "u32"], ["alpha", "f32"], ["groupsX", "u32"]],
  bindings: [["src", "var<storage, read> src: array<f32>"], ["dst", "var<storage, read_write> dst: array<f32>"]],
  decls: "",
  fn: /* wgsl */ `
fn axpy(gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (i < p.n) { dst[i] = fma(p.alpha, src[i], dst[i]); }
}`,
};

const bwdAxpyKernel = defineKernel({
  name: "bwd_axpy", wgsl: () => standaloneWgsl(parts, "256", "axpy(gid)"), example: null,
});

// src, dst: [n] -> dst += alpha · src
export function axpy(gpu: Gpu, src: Buf, dst: Buf, alpha: number, n: number): void {
  if (n === 0) return;
  const k = gpu.kernel(bwdAxpyKernel, null);
  const [gx, gy] = grid(Math.ceil(n / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(parts, { src, dst }), paramBlock(parts.params, { n, alpha, groupsX: gx }), [gx, gy]);
}
