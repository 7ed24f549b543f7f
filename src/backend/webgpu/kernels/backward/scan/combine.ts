/**
 * Selective scan backward, phase 2 of 3: the carries between chunks, right to left, for every (b, n, e):
 *   X[nC − 1] = 0,   X[c − 1] = Y[c] + exp(A · dsum[c]) · X[c]
 * (Y from carry.ts, dsum = Σ delta over chunk c from the forward's chunk pass), in place over the X region.
 * X[c] is then the gradient reaching chunk c's last state from everything after the chunk. Loads are issued 8
 * chunks at a time, ahead of the dependent arithmetic.
 */
import type { Buf, Gpu } from "../../../gpu.ts";
import { grid } from "../../../gpu.ts";
import type { ScanBwdGeometry } from "./geometry.ts";
import { defineKernel } from "../../../kernel-def.ts";
import { type WgslParts, bindingsByName, paramBlock, standaloneWgsl } from "../../compose.ts";

// bindings: 0 dsum [B, nC, E] (chunks 0 .. nC-2) | 1 SX (S | X | packed [E, N + 2]) in/out | 2 params
const scanCombineBackwardParts: WgslParts = {
  consts: [],
  params: [["B", "u32"], ["E", "u32"], ["N", "u32"], ["nC", "u32"], ["oX", "u32"], ["oP", "u32"], ["groupsX", "u32"]],
  bindings: [
    ["dsum", "var<storage, read> dsum: array<f32>"],
    ["SX", "var<storage, read_write> SX: array<f32>"],
  ],
  decls: /* wgsl */ `
const AHEAD = 8u;`,
  fn: /* wgsl */ `
fn scanCombineBackward(gid: vec3<u32>) {
  let i = gid.y * p.groupsX * 256u + gid.x; // (b, n, e), e fastest
  if (i >= p.B * p.N * p.E) { return; }
  let e = i % p.E;
  let n = (i / p.E) % p.N;
  let b = i / (p.E * p.N);
  let A2 = SX[p.oP + e * (p.N + 2u) + n];
  let stride = p.N * p.E;
  let base = p.oX + b * p.nC * stride + n * p.E + e;
  let last = p.nC - 1u;
  // chunk nC - 1: nothing comes from its right
  var x = SX[base + last * stride];
  SX[base + last * stride] = 0.0;
  // chunks last-1 .. 1, AHEAD at a time: their loads issued before the dependent arithmetic
  var c = last;
  while (c > 1u) {
    let m = min(AHEAD, c - 1u); // chunks c-1 .. c-m
    var ys: array<f32, AHEAD>;
    var ds: array<f32, AHEAD>;
    for (var j = 0u; j < AHEAD; j++) {
      if (j < m) {
        let cc = c - 1u - j;
        ys[j] = SX[base + cc * stride];
        ds[j] = dsum[(b * p.nC + cc) * p.E + e];
      }
    }
    for (var j = 0u; j < m; j++) {
      SX[base + (c - 1u - j) * stride] = x;
      x = fma(exp2(A2 * ds[j]), x, ys[j]);
    }
    c -= m;
  }
  SX[base] = x;
}`,
};

const bwdScanCombineKernel = defineKernel({
  name: "bwd_scan_combine", wgsl: () => standaloneWgsl(scanCombineBackwardParts, "256", "scanCombineBackward(gid)"), example: null,
});

export function scanBwdCombine(gpu: Gpu, g: ScanBwdGeometry, dsum: Buf, SX: Buf): void {
  const k = gpu.kernel(bwdScanCombineKernel, null);
  const [gx, gy] = grid(Math.ceil((g.B * g.N * g.E) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, bindingsByName(scanCombineBackwardParts, { dsum, SX }),
    paramBlock(scanCombineBackwardParts.params, { B: g.B, E: g.E, N: g.N, nC: g.nC, oX: g.oX, oP: g.oP, groupsX: gx }), [gx, gy]);
}
