/**
 * The embedding scatter-add for ids the host has not seen (a tensor made on the GPU): one thread per column d
 * walks every token in order, dTable[ids[t], d] += dOut[t, d]. Deterministic (each column has one owner) but
 * only D threads wide; ids uploaded with fromI32 take the CSR kernel of embedding-backward.ts instead.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { Params } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";

const wgsl = /* wgsl */ `
// bindings: 0 ids [T] i32 | 1 dOut [T, D] | 2 dTable [V, D] in/out | 3 params
struct P { T: u32, D: u32, V: u32 }
@group(0) @binding(0) var<storage, read> ids: array<i32>;
@group(0) @binding(1) var<storage, read> dOut: array<f32>;
@group(0) @binding(2) var<storage, read_write> dTable: array<f32>;
@group(0) @binding(3) var<uniform> p: P;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let d = gid.x;
  if (d >= p.D) { return; }
  for (var t = 0u; t < p.T; t++) {
    let id = u32(ids[t]);
    if (id < p.V) { dTable[id * p.D + d] += dOut[t * p.D + d]; }
  }
}
`;

const bwdEmbeddingSerialKernel = defineKernel({ name: "bwd_embedding_serial", wgsl: () => wgsl, example: null });

// ids: i32 [T], dOut: [T, D] -> dTable [V, D] +=
export function embeddingBackwardSerial(gpu: Gpu, ids: Buf, T: number, dOut: Buf, V: number, D: number, dTable: Buf): void {
  if (T * D === 0) return;
  const k = gpu.kernel(bwdEmbeddingSerialKernel, null);
  gpu.dispatch(k, [ids, dOut, dTable], new Params().u32(T).u32(D).u32(V), [Math.ceil(D / 64)]);
}
