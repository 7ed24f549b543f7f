/**
 * Column sums over row chunks, the first stage of a bias or norm-weight gradient (Σ over T rows of a [T, W]
 * matrix): part[chunk, c] = Σ_{r in chunk} a[r · lda + offa + c] · (b[r · W + c] · s[r] when hasB, else 1).
 * A workgroup of 64 columns × 4 row lanes per (column tile, chunk); the 4 lanes' sums are added in a fixed order.
 * reduce-groups.ts then adds the chunks in order into the gradient.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";

// bindings: 0 a [rows, lda] | 1 b [rows, W] | 2 s [rows] | 3 part [nChunks, W] out | 4 params
// grid: (ceil(W / 64), nChunks)
const colsumParts: WgslParts = {
  consts: [],
  params: [["rows", "u32"], ["W", "u32"], ["lda", "u32"], ["offa", "u32"], ["hasB", "u32"], ["chunkRows", "u32"]],
  bindings: [
    ["a", "var<storage, read> a: array<f32>"],
    ["b", "var<storage, read> b: array<f32>"],
    ["s", "var<storage, read> s: array<f32>"],
    ["part", "var<storage, read_write> part: array<f32>"],
  ],
  decls: /* wgsl */ `
var<workgroup> red: array<f32, 256>;`,
  fn: /* wgsl */ `
fn colsum(lid: vec3<u32>, wg: vec3<u32>) {
  let c = wg.x * 64u + lid.x;
  let chunk = wg.y;
  let r0 = chunk * p.chunkRows;
  let r1 = min(r0 + p.chunkRows, p.rows);
  var acc = 0.0;
  if (c < p.W) {
    for (var r = r0 + lid.y; r < r1; r += 4u) {
      var v = a[r * p.lda + p.offa + c];
      if (p.hasB != 0u) { v *= b[r * p.W + c] * s[r]; }
      acc += v;
    }
  }
  red[lid.y * 64u + lid.x] = acc;
  workgroupBarrier();
  if (lid.y == 0u && c < p.W) {
    part[chunk * p.W + c] = (red[lid.x] + red[64u + lid.x]) + (red[128u + lid.x] + red[192u + lid.x]);
  }
}`,
};

/** Rows per chunk and chunk count for a column sum over `rows` rows. */
export function colsumChunks(rows: number): { chunkRows: number; nChunks: number } {
  const chunkRows = Math.max(64, Math.min(1024, Math.ceil(rows / 64 / 4) * 4));
  return { chunkRows, nChunks: Math.max(1, Math.ceil(rows / chunkRows)) };
}

const bwdColsumKernel = defineKernel({
  name: "bwd_colsum", wgsl: () => standaloneWgsl(colsumParts, "64, 4", "colsum(lid, wg)"), example: null,
});

// a: [rows, W] window; b: [rows, W] and s: [rows] or null -> part: [nChunks, W]
export function colsum(
  gpu: Gpu, a: Buf, lda: number, offa: number, rows: number, W: number, bs: { b: Buf; s: Buf } | null,
  part: Buf, chunkRows: number, nChunks: number,
): void {
  const k = gpu.kernel(bwdColsumKernel, null);
  gpu.dispatch(k, bindingsByName(colsumParts, { a, b: bs?.b ?? gpu.dummy, s: bs?.s ?? gpu.dummy, part }),
    paramBlock(colsumParts.params, { rows, W, lda, offa, hasB: !!bs, chunkRows }), [Math.ceil(W / 64), nChunks]);
}
