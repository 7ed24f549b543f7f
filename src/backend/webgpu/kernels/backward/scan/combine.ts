/**
 * Selective scan backward, phase 2 of 3: the carries between chunks, right to left, for every (b, n, e):
 *   X[nC − 1] = 0,   X[c − 1] = Y[c] + exp(A · dsum[c]) · X[c]
 * (Y from carry.ts, dsum = Σ delta over chunk c from the forward's chunk pass), in place over the X region.
 * X[c] is then the gradient reaching chunk c's last state from everything after the chunk. Loads are issued 8
 * chunks at a time, ahead of the dependent arithmetic.
 */
import type { Buf, Gpu } from "../../../gpu.ts";
import { Params, grid } from "../../../gpu.ts";
import type { ScanBwdGeometry } from "./geometry.ts";
import { defineKernel } from "../../../kernel-def.ts";

const wgsl = /* wgsl */ `
// bindings: 0 dsum [B, nC, E] (chunks 0 .. nC-2) | 1 SX (S | X | packed [E, N + 2]) in/out | 2 params
const AHEAD = 8u;

struct P { B: u32, E: u32, N: u32, nC: u32, oX: u32, oP: u32, groupsX: u32 }
@group(0) @binding(0) var<storage, read> dsum: array<f32>;
@group(0) @binding(1) var<storage, read_write> SX: array<f32>;
@group(0) @binding(2) var<uniform> p: P;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
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
}
`;

const bwdScanCombineKernel = defineKernel({ name: "bwd_scan_combine", wgsl: () => wgsl, example: null });

export function scanBwdCombine(gpu: Gpu, g: ScanBwdGeometry, dsum: Buf, SX: Buf): void {
  const k = gpu.kernel(bwdScanCombineKernel, null);
  const [gx, gy] = grid(Math.ceil((g.B * g.N * g.E) / 256), gpu.limits.maxComputeWorkgroupsPerDimension);
  gpu.dispatch(k, [dsum, SX], new Params().u32(g.B).u32(g.E).u32(g.N).u32(g.nC).u32(g.oX).u32(g.oP).u32(gx), [gx, gy]);
}
