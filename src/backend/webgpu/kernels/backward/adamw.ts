/**
 * One AdamW update in place, one thread per parameter (PyTorch's AdamW, decoupled weight decay first):
 *   g = gradScale · grad;  m = β1 m + (1 − β1) g;  v = β2 v + (1 − β2) g²
 *   param = param · (1 − lr · wd) − lr · (m / bc1) / (sqrt(v / bc2) + eps),   bc = 1 − β^step
 * The scalars that change every step (lr, bias corrections, the clipping scale) come in a small storage buffer
 * written for the call, not in the uniform block: uniform blocks and bind groups are cached by content, so
 * per-step values there would create new GPU objects on every step of a long run.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { grid } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";

// grad [n] | param, m, v [n] in/out | step [lr, bc1, bc2, gradScale]; a thread a parameter
const parts: WgslParts = {
  consts: [],
  params: [["n", "u32"], ["groupsX", "u32"], ["beta1", "f32"], ["beta2", "f32"], ["eps", "f32"], ["weightDecay", "f32"]],
  bindings: [
    ["grad", "var<storage, read> grad: array<f32>"],
    ["param", "var<storage, read_write> param: array<f32>"],
    ["m", "var<storage, read_write> m: array<f32>"],
    ["v", "var<storage, read_write> v: array<f32>"],
    ["step", "var<storage, read> step: array<f32, 4>"],
  ],
  decls: "",
  fn: /* wgsl */ `
fn adamw(gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (i >= p.n) { return; }
  let lr = step[0];
  let g = grad[i] * step[3];
  let mi = p.beta1 * m[i] + (1.0 - p.beta1) * g;
  let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
  m[i] = mi;
  v[i] = vi;
  param[i] = param[i] * (1.0 - lr * p.weightDecay) - lr * (mi / step[1]) / (sqrt(vi / step[2]) + p.eps);
}`,
};

export interface AdamWScalars {
  lr: number; beta1: number; beta2: number; eps: number;
  weightDecay: number;
  bc1: number; bc2: number; // bias corrections 1 − β^step
  gradScale: number;
}

const bwdAdamwKernel = defineKernel({
  name: "bwd_adamw", wgsl: () => standaloneWgsl(parts, "256", "adamw(gid)"), example: null,
});

// grad, param, m, v: [n]; param, m, v updated in place
export function adamw(gpu: Gpu, grad: Buf, param: Buf, m: Buf, v: Buf, n: number, s: AdamWScalars): void {
  if (n === 0) return;
  const k = gpu.kernel(bwdAdamwKernel, null);
  const [gx, gy] = grid(Math.ceil(n / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  const p = paramBlock(parts.params, { n, groupsX: gx, beta1: s.beta1, beta2: s.beta2, eps: s.eps, weightDecay: s.weightDecay });
  const step = gpu.upload(new Float32Array([s.lr, s.bc1, s.bc2, s.gradScale]), "the optimizer's step scalars");
  gpu.dispatch(k, bindingsByName(parts, { grad, param, m, v, step }), p, [gx, gy]);
  gpu.release(step); // dispatches run in order: reusing it later is safe
}
