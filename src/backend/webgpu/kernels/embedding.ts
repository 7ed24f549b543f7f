/** Embedding gather: out[t] = table[ids[t]], the table f32, packed f16/bf16 or Q8_0/Q4_0 blocks. One thread per output value. */
import type { Buf, Gpu } from "../gpu.ts";
import { grid } from "../gpu.ts";
import { type WeightStorage, weightBinding, weightReader } from "./weights.ts";
import { defineKernel } from "../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "./compose.ts";

// table [V, D] (f32, packed halves or quantized blocks) | ids [T] i32 | out [T, D]; a thread an output value
const parts = (ws: WeightStorage): WgslParts => ({
  consts: [],
  params: [["T", "u32"], ["D", "u32"], ["V", "u32"], ["groupsX", "u32"]],
  bindings: [
    ["w", `var<storage, read> w: array<${weightBinding(ws)}>`],
    ["ids", "var<storage, read> ids: array<i32>"],
    ["out", "var<storage, read_write> out: array<f32>"],
  ],
  decls: weightReader(ws),
  fn: /* wgsl */ `
fn embedding(gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (i >= p.T * p.D) { return; }
  let t = i / p.D;
  let d = i % p.D;
  let id = u32(ids[t]);
  // ids are validated before they reach the GPU; an id past the table reads zeros rather than another row
  var v = 0.0;
  if (id < p.V) { v = weight(id * p.D + d); }
  out[i] = v;
}`,
});
const PARTS: Record<WeightStorage, WgslParts> = {
  f32: parts("f32"), f16: parts("f16"), bf16: parts("bf16"), q8_0: parts("q8_0"), q4_0: parts("q4_0"),
};

const embeddingKernel = defineKernel({
  name: "embedding", wgsl: (ws: WeightStorage) => standaloneWgsl(PARTS[ws], "256", "embedding(gid)"), label: (ws) => `embedding_${ws}`,
  example: "f32",
});

// table: [V, D], ids: [T] -> out: [T, D]
export function embedding(gpu: Gpu, table: Buf, ws: WeightStorage, V: number, D: number, ids: Buf, T: number, out: Buf): void {
  const k = gpu.kernel(embeddingKernel, ws);
  const [gx, gy] = grid(Math.ceil((T * D) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(PARTS[ws], { w: table, ids, out }),
    paramBlock(PARTS[ws].params, { T, D, V, groupsX: gx }), [gx, gy]);
}
