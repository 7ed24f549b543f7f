/**
 * Backward of the embedding gather, a scatter-add dTable[ids[t]] += dOut[t], without float atomics: the host
 * knows the ids before they are uploaded, so it lists the positions of every distinct id (a CSR: distinct ids,
 * offsets, positions in increasing t). One thread per (distinct id, column) adds its id's rows in order and owns
 * its output value: deterministic, and the work is T · D however the ids repeat. The count of distinct ids comes
 * in the CSR itself, not in the uniform block: it changes from batch to batch, and a block (with its bind group)
 * for each value would be new GPU objects on many training steps.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { grid } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";

// bindings: 0 csr (u32: nU | rowIds [nU] | offsets [nU + 1] | positions [T]) | 1 dOut [T, D] | 2 dTable [V, D] in/out
//           3 params; grid: nU · D threads, folded into y by num_workgroups.x
const embeddingBackwardParts: WgslParts = {
  consts: [],
  params: [["D", "u32"]],
  bindings: [
    ["csr", "var<storage, read> csr: array<u32>"],
    ["dOut", "var<storage, read> dOut: array<f32>"],
    ["dTable", "var<storage, read_write> dTable: array<f32>"],
  ],
  decls: "",
  fn: /* wgsl */ `
fn embeddingBackward(gid: vec3<u32>, groups: vec3<u32>) {
  let i = gid.y * groups.x * 256u + gid.x;
  let nU = csr[0];
  if (i >= nU * p.D) { return; }
  let u = i / p.D;
  let d = i % p.D;
  let start = csr[1u + nU + u];
  let end = csr[1u + nU + u + 1u];
  let posBase = 2u * nU + 2u;
  var s = 0.0;
  for (var j = start; j < end; j++) { s += dOut[csr[posBase + j] * p.D + d]; }
  let o = csr[1u + u] * p.D + d;
  dTable[o] = dTable[o] + s;
}`,
};

/**
 * The CSR of the positions of each distinct id: [nU | ids (sorted) | offsets | positions], as u32. A counting sort
 * (ids are non-negative; the caller checks them against the table): O(T + largest id), positions of an id in
 * increasing t. It runs on the host every training step, where a comparison sort of 16k positions took
 * milliseconds.
 */
export function positionsById(ids: Int32Array): { csr: Uint32Array; nU: number } {
  const T = ids.length;
  let top = 0;
  for (let t = 0; t < T; t++) {
    const id = ids[t]!;
    if (id < 0) throw new RangeError(`positionsById: negative id ${id} at position ${t}`);
    if (id > top) top = id;
  }
  const next = new Uint32Array(top + 1); // counts, then each id's next free slot
  for (let t = 0; t < T; t++) next[ids[t]!]!++;
  let nU = 0;
  for (let id = 0; id <= top; id++) if (next[id]! > 0) nU++;
  const csr = new Uint32Array(2 * nU + 2 + T);
  csr[0] = nU;
  const posBase = 2 * nU + 2;
  let u = 0, start = 0;
  for (let id = 0; id <= top; id++) {
    const n = next[id]!;
    if (n === 0) continue;
    csr[1 + u] = id;
    csr[1 + nU + u] = start;
    next[id] = start;
    start += n;
    u++;
  }
  csr[1 + 2 * nU] = T;
  for (let t = 0; t < T; t++) csr[posBase + next[ids[t]!]!++] = t;
  return { csr, nU };
}

const bwdEmbeddingKernel = defineKernel({
  name: "bwd_embedding", wgsl: () => standaloneWgsl(embeddingBackwardParts, "256", "embeddingBackward(gid, nwg)"), example: null,
});

// csr of T ids (nU of them distinct, as csr[0] says), dOut: [T, D] -> dTable [V, D] += at the listed rows
export function embeddingBackward(gpu: Gpu, csr: Buf, nU: number, dOut: Buf, D: number, dTable: Buf): void {
  if (nU * D === 0) return;
  const k = gpu.kernel(bwdEmbeddingKernel, null);
  const [gx, gy] = grid(Math.ceil((nU * D) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(embeddingBackwardParts, { csr, dOut, dTable }),
    paramBlock(embeddingBackwardParts.params, { D }), [gx, gy]);
}
