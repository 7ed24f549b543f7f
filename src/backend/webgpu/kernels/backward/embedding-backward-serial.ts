/**
 * The embedding scatter-add for ids the host has not seen (a tensor made on the GPU): one thread per column d
 * walks every token in order, dTable[ids[t], d] += dOut[t, d]. Deterministic (each column has one owner) but
 * only D threads wide; ids uploaded with fromI32 take the CSR kernel of embedding-backward.ts instead.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";

// bindings: 0 ids [T] i32 | 1 dOut [T, D] | 2 dTable [V, D] in/out | 3 params
const embeddingSerialParts: WgslParts = {
  consts: [],
  params: [["T", "u32"], ["D", "u32"], ["V", "u32"]],
  bindings: [
    ["ids", "var<storage, read> ids: array<i32>"],
    ["dOut", "var<storage, read> dOut: array<f32>"],
    ["dTable", "var<storage, read_write> dTable: array<f32>"],
  ],
  decls: "",
  fn: /* wgsl */ `
fn embeddingSerial(gid: vec3<u32>) {
  let d = gid.x;
  if (d >= p.D) { return; }
  for (var t = 0u; t < p.T; t++) {
    let id = u32(ids[t]);
    if (id < p.V) { dTable[id * p.D + d] += dOut[t * p.D + d]; }
  }
}`,
};

const bwdEmbeddingSerialKernel = defineKernel({
  name: "bwd_embedding_serial", wgsl: () => standaloneWgsl(embeddingSerialParts, "64", "embeddingSerial(gid)"), example: null,
});

// ids: i32 [T], dOut: [T, D] -> dTable [V, D] +=
export function embeddingBackwardSerial(gpu: Gpu, ids: Buf, T: number, dOut: Buf, V: number, D: number, dTable: Buf): void {
  if (T * D === 0) return;
  const k = gpu.kernel(bwdEmbeddingSerialKernel, null);
  gpu.dispatch(k, bindingsByName(embeddingSerialParts, { ids, dOut, dTable }),
    paramBlock(embeddingSerialParts.params, { T, D, V }), [Math.ceil(D / 64)]);
}
