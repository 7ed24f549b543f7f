/**
 * Softmax cross-entropy, one workgroup per row of logits [T, V] (V up to the 50280 of the GPT-NeoX vocabulary:
 * 256 threads stride the row three times — max and argmax, Σ exp, then dLogits):
 *   loss_t = log Σ_j exp(x_j − max) + max − x_y,   dLogits[t] = k · (softmax(x) − onehot(y)),  k = scale / count
 *   correct_t = 1 when y is the argmax (ties: the lowest id)
 * Rows with target −1 count for nothing and get zero gradients. Per-row results go to rowOut [2, T]
 * (loss_t / count, correct_t), summed afterwards by block-sum.ts. `count` (the rows that count) is read from
 * info[0], written beforehand by the count kernel below.
 */
import type { Buf, Gpu } from "../../gpu.ts";
import { grid } from "../../gpu.ts";
import { defineKernel } from "../../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../compose.ts";
import { treeSumWgsl } from "../wgsl-common.ts";

// bindings: 0 logits [T, V] | 1 targets [T] i32 | 2 info [1] (count) | 3 dLogits [T, V] out | 4 rowOut [2, T] out | 5 params
const ceRowsParts: WgslParts = {
  consts: [],
  params: [["T", "u32"], ["V", "u32"], ["scale", "f32"], ["groupsX", "u32"]],
  bindings: [
    ["x", "var<storage, read> x: array<f32>"],
    ["targets", "var<storage, read> targets: array<i32>"],
    ["info", "var<storage, read> info: array<f32>"],
    ["dx", "var<storage, read_write> dx: array<f32>"],
    ["rowOut", "var<storage, read_write> rowOut: array<f32>"],
  ],
  decls: /* wgsl */ `
var<workgroup> mx: array<f32, 256>;
var<workgroup> arg: array<u32, 256>;
var<workgroup> sm: array<f32, 256>;`,
  fn: /* wgsl */ `
fn ceRows(lid: vec3<u32>, wg: vec3<u32>) {
  let row = wg.y * p.groupsX + wg.x;
  if (row >= p.T) { return; } // uniform across the workgroup
  let o = row * p.V;
  let y = targets[row];
  if (y < 0 || u32(y) >= p.V) {
    for (var j = lid.x; j < p.V; j += 256u) { dx[o + j] = 0.0; }
    if (lid.x == 0u) { rowOut[row] = 0.0; rowOut[p.T + row] = 0.0; }
    return;
  }
  // max and the lowest index holding it: each thread scans j ascending and keeps strict improvements
  var m = -3.4028234663852886e38;
  var a = 0xffffffffu;
  for (var j = lid.x; j < p.V; j += 256u) {
    let v = x[o + j];
    if (v > m || a == 0xffffffffu) { m = v; a = j; }
  }
  mx[lid.x] = m;
  arg[lid.x] = a;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid.x < s) {
      let m2 = mx[lid.x + s];
      let a2 = arg[lid.x + s];
      if (a2 != 0xffffffffu && (arg[lid.x] == 0xffffffffu || m2 > mx[lid.x] || (m2 == mx[lid.x] && a2 < arg[lid.x]))) {
        mx[lid.x] = m2;
        arg[lid.x] = a2;
      }
    }
    workgroupBarrier();
  }
  let rowMax = mx[0];
  let rowArg = arg[0];
  var s = 0.0;
  for (var j = lid.x; j < p.V; j += 256u) { s += exp(x[o + j] - rowMax); }
  sm[lid.x] = s;
  workgroupBarrier();
  ${treeSumWgsl("sm", "lid.x")}
  let total = sm[0];
  let count = info[0];
  let scale = p.scale / count;
  let yi = u32(y);
  for (var j = lid.x; j < p.V; j += 256u) {
    let q = exp(x[o + j] - rowMax) / total;
    dx[o + j] = scale * (q - select(0.0, 1.0, j == yi));
  }
  if (lid.x == 0u) {
    rowOut[row] = (log(total) + rowMax - x[o + yi]) / count;
    rowOut[p.T + row] = select(0.0, 1.0, rowArg == yi);
  }
}`,
};

// bindings: 0 targets [T] i32 | 1 info [1] out (how many targets are >= 0, as f32) | 2 params
const ceCountParts: WgslParts = {
  consts: [],
  params: [["T", "u32"]],
  bindings: [
    ["targets", "var<storage, read> targets: array<i32>"],
    ["info", "var<storage, read_write> info: array<f32>"],
  ],
  decls: /* wgsl */ `
var<workgroup> red: array<u32, 256>;`,
  fn: /* wgsl */ `
fn ceCount(lid: vec3<u32>) {
  var c = 0u;
  for (var t = lid.x; t < p.T; t += 256u) { c += select(0u, 1u, targets[t] >= 0); }
  red[lid.x] = c;
  workgroupBarrier();
  ${treeSumWgsl("red", "lid.x")}
  if (lid.x == 0u) { info[0] = f32(red[0]); }
}`,
};

const bwdCeCountKernel = defineKernel({
  name: "bwd_ce_count", wgsl: () => standaloneWgsl(ceCountParts, "256", "ceCount(lid)"), example: null,
});

// targets: i32 [T] -> info[0] = the number of targets >= 0
export function countTargets(gpu: Gpu, targets: Buf, T: number, meta: Buf): void {
  const k = gpu.kernel(bwdCeCountKernel, null);
  gpu.dispatch(k, bindingsByName(ceCountParts, { targets, info: meta }), paramBlock(ceCountParts.params, { T }), [1]);
}

const bwdCeRowsKernel = defineKernel({
  name: "bwd_ce_rows", wgsl: () => standaloneWgsl(ceRowsParts, "256", "ceRows(lid, wg)"), example: null,
});

// logits: [T, V], targets: i32 [T], info[0] = count -> dLogits [T, V], rowOut [2, T]
export function crossEntropyRows(gpu: Gpu, logits: Buf, targets: Buf, meta: Buf, T: number, V: number, scale: number, dLogits: Buf, rowOut: Buf): void {
  const k = gpu.kernel(bwdCeRowsKernel, null);
  const [gx, gy] = grid(T, gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(ceRowsParts, { x: logits, targets, info: meta, dx: dLogits, rowOut }),
    paramBlock(ceRowsParts.params, { T, V, scale, groupsX: gx }), [gx, gy]);
}
