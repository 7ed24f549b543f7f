/** Embedding gather: out[t] = table[ids[t]], the table f32 or packed f16/bf16. One thread per output value. */
import type { Buf, Gpu } from "../gpu.ts";
import { Params, grid } from "../gpu.ts";
import { type WeightStorage, weightBinding, weightReader } from "./weights.ts";
import { defineKernel } from "../kernel-def.ts";

const wgsl = (ws: WeightStorage) => /* wgsl */ `
// bindings: 0 table [V, D] | 1 ids [T] i32 | 2 out [T, D] | 3 params
struct P { T: u32, D: u32, V: u32, groupsX: u32 }
@group(0) @binding(0) var<storage, read> w: array<${weightBinding(ws)}>;
@group(0) @binding(1) var<storage, read> ids: array<i32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: P;

${weightReader(ws)}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x;
  if (i >= p.T * p.D) { return; }
  let t = i / p.D;
  let d = i % p.D;
  let id = u32(ids[t]);
  // ids are validated before they reach the GPU; an id past the table reads zeros rather than another row
  var v = 0.0;
  if (id < p.V) { v = weight(id * p.D + d); }
  out[i] = v;
}
`;

const embeddingKernel = defineKernel({ name: "embedding", wgsl, label: (ws) => `embedding_${ws}`, example: "f32" as WeightStorage });

// table: [V, D], ids: [T] -> out: [T, D]
export function embedding(gpu: Gpu, table: Buf, ws: WeightStorage, V: number, D: number, ids: Buf, T: number, out: Buf): void {
  const k = gpu.kernel(embeddingKernel, ws);
  const [gx, gy] = grid(Math.ceil((T * D) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, [table, ids, out], new Params().u32(T).u32(D).u32(V).u32(gx), [gx, gy]);
}
